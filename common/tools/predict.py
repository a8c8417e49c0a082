"""``resnet-parity predict``: what a model says about image files, in every framework side by side.

A model is anything ``convert`` reads (a canonical file, a framework's own checkpoint, a Hugging
Face directory or Hub id). It is read once (:func:`load_model`), built in each framework from
the same canonical state, and every image goes through the model's own preprocessing
(:mod:`common.core.preprocess`) once, so the frameworks see the same array. The output follows
the seeds' evaluation: the class scores in order (``score:0.5376 ship``), then a verdict, "could
not classify", when the top label is not the one expected or its score is under a minimum; and
a line saying whether the frameworks rank the classes the same, with their largest score
difference.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..core.backend import BaseBackend
from ..core.preprocess import (
    Preprocessing,
    default_preprocessing,
    image_files,
    open_image,
    preprocessing_file,
)
from ..core.spec import ARCHITECTURES, Network, num_inputs, num_outputs, unit_name
from ..core.state import State, write_text
from .command import EXIT_OK, CliError, framework_list, load_backends, one_line, positive
from .convert import open_checkpoint, resolve_spec
from .registry import BACKEND_NAMES, BackendUnavailable

# The seeds' wording: "could not classify" when the model misses.
MISSED = "could not classify"


# -- the model -----------------------------------------------------------------------------------
@dataclass
class Model:
    """A checkpoint read once: its spec, canonical state, class names and preprocessing."""

    source: str
    spec: Network
    state: State
    labels: tuple[str, ...]
    preprocessing: Preprocessing
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return unit_name(self.spec)

    def build(self, be: BaseBackend) -> Any:
        """The model in ``be``'s framework, eval-ready, with this state."""
        model = be.build(self.spec)
        be.load_state(model, self.state)
        return model


def load_model(source: str, *, arch: Optional[str] = None, labels: Optional[Sequence[str]] = None,
               preprocess: Optional[str] = None) -> Model:
    """Read ``source`` as ``convert`` does; the class names come from the model (``labels``
    names them where it names none), the preprocessing from ``preprocess`` (a
    ``preprocessor_config.json`` or the suite's JSON), else from the model, else the
    assumption :func:`default_preprocessing` states.

    Raises ``ValueError`` naming the file for anything unreadable, and for a model whose
    classes have no names.
    """
    ckpt = open_checkpoint(source)
    spec, spec_source = resolve_spec(ckpt, None, arch)
    if not hasattr(spec, "num_classes"):
        raise ValueError(f"{source}: holds a {type(spec).__name__}, not a whole network")
    state = ckpt.format.read(ckpt.path, spec, tensors=ckpt.tensors)
    notes = [f"spec {spec.name} ({spec_source})"]
    names = tuple(labels) if labels else tuple(spec.labels)
    if not names:
        raise ValueError(f"{source}: the model's {num_outputs(spec)} classes have no names (its "
                         "spec stores no labels); pass them with --labels a,b,...")
    if len(names) != num_outputs(spec):
        raise ValueError(f"{source}: --labels names {len(names)} classes, the model has "
                         f"{num_outputs(spec)}")
    if len(set(names)) != len(names):
        raise ValueError(f"--labels names a class twice: {', '.join(names)}")
    if preprocess is not None:
        pre = preprocessing_file(preprocess, num_inputs(spec))
    else:
        pre = ckpt.format.preprocessing(ckpt.path) or default_preprocessing(spec.name, num_inputs(spec))
    if pre.num_channels != num_inputs(spec):
        raise ValueError(f"{source}: the preprocessing ({pre.source}) gives {pre.num_channels} "
                         f"channel(s), the model takes {num_inputs(spec)}")
    notes.append(f"preprocessing {pre.describe()} ({pre.source})")
    return Model(str(source), spec, state, names, pre, notes)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities of each row, in float64 (the largest logit subtracted first)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def run_frameworks(model: Model, backends: dict[str, BaseBackend], x: np.ndarray,
                   built: Optional[dict[str, Any]] = None) -> dict[str, np.ndarray]:
    """Each framework's class probabilities for the NCHW batch ``x`` (eval mode)."""
    built = built if built is not None else {}
    out = {}
    for name, be in backends.items():
        if name not in built:
            built[name] = model.build(be)
        out[name] = softmax(be.forward(built[name], x))
    return out


def agreement(probs: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """Per row: whether every framework ranks the classes in the same order, and the largest
    score difference between any two frameworks over all rows."""
    ranks = np.stack([np.argsort(-p, axis=-1, kind="stable") for p in probs.values()])
    same = np.all(ranks == ranks[:1], axis=(0, 2))
    diff = max((float(np.abs(a - b).max()) for a, b in itertools.combinations(probs.values(), 2)),
               default=0.0)
    return same, diff


# -- one image -----------------------------------------------------------------------------------
@dataclass
class Prediction:
    """One image: each framework's sorted (label, score) list, the verdict, the agreement."""

    path: str
    scores: dict[str, list[tuple[str, float]]]
    verdicts: dict[str, str]
    agree: bool
    max_score_diff: float

    @property
    def verdict(self) -> str:
        """The frameworks' common verdict, or which says what where they differ."""
        values = set(self.verdicts.values())
        if len(values) == 1:
            return values.pop()
        return "frameworks disagree: " + "; ".join(f"{k} {v}" for k, v in self.verdicts.items())

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path,
                "frameworks": {fw: [{"label": label, "score": score} for label, score in s]
                               for fw, s in self.scores.items()},
                "verdicts": self.verdicts, "verdict": self.verdict, "agree": self.agree,
                "max_score_diff": self.max_score_diff}


def verdict(ranked: Sequence[tuple[str, float]], expect: Optional[str], min_score: Optional[float]
            ) -> str:
    """``classified: LABEL``, or the seeds' "could not classify" with the reason: the top
    label is not ``expect``, or its score is under ``min_score``."""
    top, score = ranked[0]
    if expect is not None and top != expect:
        return f"{MISSED} (top {top} {score:.4f}, expected {expect})"
    if min_score is not None and score < min_score:
        return f"{MISSED} (top {top} {score:.4f} < --min-score {min_score:g})"
    return f"classified: {top}"


def score_line(label: str, score: float) -> str:
    """The seeds' line: ``score:0.5376 ship`` (four decimals, as Python's round prints them)."""
    return f"score:{round(score, 4)} {label}"


def predict(model: Model, backends: dict[str, BaseBackend], paths: Sequence[Path],
            images: Optional[Sequence[Any]] = None, *, top_k: Optional[int] = None,
            expect: Optional[str] = None, min_score: Optional[float] = None) -> list[Prediction]:
    """Each image in ``paths`` (``images``: the same, already opened) through ``model`` in
    every framework of ``backends``."""
    if expect is not None and expect not in model.labels:
        raise ValueError(f"--expect {expect!r} is not one of the model's classes: "
                         f"{', '.join(model.labels)}")
    k = len(model.labels) if top_k is None else min(top_k, len(model.labels))
    built: dict[str, Any] = {}
    out = []
    for i, path in enumerate(paths):
        x = model.preprocessing(open_image(path) if images is None else images[i])
        probs = run_frameworks(model, backends, x, built)
        same, diff = agreement(probs)
        scores, verdicts = {}, {}
        for fw, p in probs.items():
            order = np.argsort(-p[0], kind="stable")
            ranked = [(model.labels[i], float(p[0, i])) for i in order]
            scores[fw] = ranked[:k]
            verdicts[fw] = verdict(ranked, expect, min_score)
        out.append(Prediction(str(path), scores, verdicts, bool(same[0]), diff))
    return out


def format_prediction(p: Prediction) -> str:
    lines = [str(p.path)]
    for fw, ranked in p.scores.items():
        lines.append(f"  {fw}:")
        lines += [f"    {score_line(label, score)}" for label, score in ranked]
        lines.append(f"    {p.verdicts[fw]}")
    if len(p.scores) > 1:
        lines.append(f"  agreement: {'same' if p.agree else 'DIFFERENT'} ranking in "
                     f"{', '.join(p.scores)}; largest score difference {p.max_score_diff:.2e}")
    return "\n".join(lines)


# -- the command ---------------------------------------------------------------------------------
def label_list(text: str) -> list[str]:
    """argparse type: comma-separated names."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty name in {text!r}")
    return names


def probability(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return v


def model_backends(frameworks: Sequence[str]) -> dict[str, BaseBackend]:
    """The installed backends among ``frameworks``; a note on stderr for each one skipped."""
    backends, skipped = load_backends(frameworks, "cpu")
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)
    if not backends:
        raise CliError("no framework to run: " + "; ".join(skipped.values()))
    return backends


def cmd_predict(args: argparse.Namespace) -> int:
    try:  # every image is read before any framework loads: a bad file fails fast
        paths = image_files(args.images)
        if not paths:
            raise ValueError(f"no image files in {', '.join(args.images)}")
        images = [open_image(p) for p in paths]
        model = load_model(args.model, arch=args.arch, labels=args.labels, preprocess=args.preprocess)
    except (ValueError, BackendUnavailable, OSError) as e:
        raise CliError(one_line(e)) from None
    backends = model_backends(args.frameworks)
    for note in model.notes:
        print(f"{args.model}: {note}", file=sys.stderr)
    try:
        results = predict(model, backends, paths, images, top_k=args.top_k, expect=args.expect,
                          min_score=args.min_score)
    except (ValueError, BackendUnavailable, OSError) as e:
        raise CliError(one_line(e)) from None
    print("\n".join(format_prediction(r) for r in results))
    if args.json:
        write_text(args.json, json.dumps({"model": args.model, "labels": list(model.labels),
                                          "preprocessing": model.preprocessing.to_dict(),
                                          "images": [r.to_json() for r in results]}, indent=1))
    return EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``predict``."""
    p = sub.add_parser(
        "predict", help="classify image files with a model in every framework, side by side",
        description="Run IMAGE files (PNG, JPEG, ...; grey, RGBA and 16-bit too; a directory "
                    "stands for the images in it) through the model M in each framework. Each "
                    "image goes through the model's own preprocessing (stored with it, or its "
                    "preprocessor_config.json; --preprocess overrides). Prints, per image and "
                    "framework, the class scores in order as the seeds do (score:0.5376 ship), "
                    f"then a verdict: '{MISSED}' when the top label is not --expect or its "
                    "score is under --min-score; then whether the frameworks rank the classes "
                    "the same, and their largest score difference.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or directories")
    p.add_argument("--model", required=True, metavar="M",
                   help="a checkpoint convert reads: canonical .safetensors, .pt/.pth, "
                        ".weights.h5, .keras, .params, a Hugging Face directory or Hub id")
    p.add_argument("--frameworks", type=framework_list, default=list(BACKEND_NAMES),
                   help="comma-separated: torch,tf,mxnet (default: all installed)")
    p.add_argument("--top-k", type=positive, default=None, metavar="K",
                   help="scores to print per framework (default: every class)")
    p.add_argument("--expect", metavar="LABEL", help="the label the image shows")
    p.add_argument("--min-score", type=probability, metavar="S",
                   help=f"'{MISSED}' when the top score is under S")
    p.add_argument("--labels", type=label_list, metavar="A,B,...",
                   help="class names, for a model that stores none")
    p.add_argument("--preprocess", metavar="FILE",
                   help="a preprocessor_config.json (or the suite's preprocessing JSON) to use "
                        "instead of the model's")
    p.add_argument("--arch", choices=list(ARCHITECTURES), metavar="NAME",
                   help="the network in M, where its keys and shapes do not say")
    p.add_argument("--json", metavar="FILE", help="also write the predictions as JSON")
    p.set_defaults(func=cmd_predict)
