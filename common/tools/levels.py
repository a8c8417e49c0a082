"""``resnet-parity levels``: how hard an image can the model take, in every framework.

The seeds show a model a car at three difficulty levels (fog, night, a white car on black) and
ask where it stops seeing the car. This command asks it of a whole test set: every image is
corrupted at increasing severity (:mod:`common.core.corruptions`, ImageNet-C's definitions)
and each model is evaluated in each framework on the same corrupted arrays. It reports the
accuracy per model, framework, corruption and severity; how often the frameworks give the same
top-1 and their largest score difference; and, per model, the easiest level at which it fails.

Corruptions act where ImageNet-C applies them: on the uint8 image at the model's input size
(after its resize and crop, before rescale and normalisation). Severity 0 is the clean image.
A run interrupted with Ctrl-C keeps, prints and writes every level it finished.
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..core.backend import BaseBackend
from ..core.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from ..core.data import DataError, Dataset, load
from ..core.state import atomic_write, write_text
from .command import EXIT_OK, CliError, framework_list, one_line, positive
from .predict import Model, label_list, load_model, model_backends, probability, run_frameworks
from .registry import BACKEND_NAMES, BackendUnavailable

CLEAN = "clean"
DEFAULT_CORRUPTIONS = ("fog", "dark", "gaussian_noise", "defocus_blur", "contrast")


@dataclass
class Cell:
    """One model at one level: each framework's correct count over ``n`` images, the share of
    images whose top-1 all frameworks agree on, and their largest score difference."""

    corruption: str
    severity: int
    n: int
    correct: dict[str, int]
    agree_top1: float
    max_score_diff: float

    def accuracy(self, framework: str) -> float:
        return self.correct[framework] / self.n

    def to_json(self) -> dict[str, Any]:
        return {"corruption": self.corruption, "severity": self.severity, "n": self.n,
                "accuracy": {fw: self.accuracy(fw) for fw in self.correct},
                "correct": dict(self.correct), "agree_top1": self.agree_top1,
                "max_score_diff": self.max_score_diff}


@dataclass
class ModelLevels:
    """Every level one model was evaluated at."""

    model: Model
    label: str
    cells: list[Cell] = field(default_factory=list)

    def cell(self, corruption: str, severity: int) -> Optional[Cell]:
        for c in self.cells:
            if (c.corruption, c.severity) == (corruption, severity):
                return c
        return None

    def first_failure(self, framework: str, corruption: str, fail_below: float) -> Optional[int]:
        """The lowest severity at which ``framework``'s accuracy under ``corruption`` falls below
        ``fail_below`` (0: already on clean images), None where it never does."""
        clean = self.cell(CLEAN, 0)
        if clean is not None and clean.accuracy(framework) < fail_below:
            return 0
        for c in sorted((c for c in self.cells if c.corruption == corruption),
                        key=lambda c: c.severity):
            if c.accuracy(framework) < fail_below:
                return c.severity
        return None

    def to_json(self, frameworks: Sequence[str], corruptions: Sequence[str],
                fail_below: float) -> dict[str, Any]:
        return {"source": self.model.source, "name": self.label,
                "labels": list(self.model.labels),
                "preprocessing": self.model.preprocessing.to_dict(),
                "cells": [c.to_json() for c in self.cells],
                "first_failure": {fw: {c: self.first_failure(fw, c, fail_below)
                                       for c in corruptions} for fw in frameworks}}


@dataclass
class Levels:
    """A whole run: the data, what was asked, and each model's levels."""

    data: str
    classes: tuple[str, ...]
    n: int
    frameworks: list[str]
    corruptions: list[str]
    severities: list[int]
    fail_below: float
    seed: int
    models: list[ModelLevels]
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"data": self.data, "classes": list(self.classes), "images": self.n,
                "frameworks": self.frameworks, "corruptions": self.corruptions,
                "severities": self.severities, "fail_below": self.fail_below, "seed": self.seed,
                "interrupted": self.interrupted,
                "models": [m.to_json(self.frameworks, self.corruptions, self.fail_below)
                           for m in self.models]}


def corruption_seed(seed: int, image: int, corruption: str, severity: int) -> tuple[int, ...]:
    """The random stream of one image at one level: the same for every model and framework,
    and independent of which other corruptions run."""
    return (seed, image, zlib.crc32(corruption.encode()), severity)


def class_map(model: Model, classes: Sequence[str]) -> np.ndarray:
    """For each data class, the index of the model's label of that name."""
    missing = [c for c in classes if c not in model.labels]
    if missing:
        raise ValueError(f"{model.source}: the model has no class {', '.join(map(repr, missing))} "
                         f"(its classes: {', '.join(model.labels)}); --classes selects the data's")
    return np.array([model.labels.index(c) for c in classes], np.int64)


def conditions(corruptions: Sequence[str], severities: Sequence[int]) -> list[tuple[str, int]]:
    """The clean images first, then each corruption at each severity above 0."""
    return [(CLEAN, 0)] + [(c, s) for c in corruptions for s in severities if s > 0]


def evaluate_levels(models: Sequence[Model], backends: dict[str, BaseBackend], data: Dataset, *,
                    corruptions: Sequence[str], severities: Sequence[int],
                    indices: Optional[Sequence[int]] = None, seed: int = 0, batch_size: int = 64,
                    fail_below: float = 0.5, on_cell: Optional[Callable[[Levels], None]] = None,
                    progress: Optional[Callable[[int], None]] = None) -> Levels:
    """Evaluate every model in every framework on ``data``'s test images (``indices`` of them)
    at every level. ``on_cell(levels)`` runs after each finished level (to save what is done);
    ``progress(n)`` as batches finish. On KeyboardInterrupt the finished levels are kept and
    ``interrupted`` is set."""
    split = data.test
    idx = np.arange(len(split)) if indices is None else np.asarray(indices, np.int64)
    names = [m.name for m in models]
    labels = [m.name if names.count(m.name) == 1 else f"{m.name} ({m.source})" for m in models]
    result = Levels(data.name, tuple(data.classes), len(idx), list(backends), list(corruptions),
                    sorted(set(severities) - {0}), fail_below, seed,
                    [ModelLevels(m, label) for m, label in zip(models, labels)])
    maps = [class_map(m, data.classes) for m in models]  # refuse before any slow work
    try:
        for m, mapping, levels in zip(models, maps, result.models):
            truth = mapping[np.asarray(split.labels)[idx]]
            pixels = [m.preprocessing.pixels(split.image(int(i))) for i in idx]
            built: dict[str, Any] = {}
            for corruption, severity in conditions(corruptions, severities):
                correct = {fw: 0 for fw in backends}
                agree, diff = 0, 0.0
                for start in range(0, len(idx), batch_size):
                    batch = range(start, min(start + batch_size, len(idx)))
                    images = [pixels[j] if corruption == CLEAN else
                              corrupt(pixels[j], corruption, severity,
                                      corruption_seed(seed, int(idx[j]), corruption, severity))
                              for j in batch]
                    probs = run_frameworks(m, backends, m.preprocessing.normalize(np.stack(images)),
                                           built)
                    top1 = np.stack([p.argmax(axis=1) for p in probs.values()])
                    for fw, t in zip(probs, top1):
                        correct[fw] += int((t == truth[batch.start:batch.stop]).sum())
                    agree += int(np.all(top1 == top1[:1], axis=0).sum())
                    ps = list(probs.values())
                    diff = max([diff] + [float(np.abs(a - b).max()) for a in ps for b in ps])
                    if progress:
                        progress(len(batch))
                levels.cells.append(Cell(corruption, severity, len(idx), correct, agree / len(idx),
                                         diff))
                if on_cell:
                    on_cell(result)
    except KeyboardInterrupt:
        result.interrupted = True
    return result


# -- reporting -----------------------------------------------------------------------------------
def format_levels(r: Levels) -> str:
    """The table per model, then each model's first failures."""
    fws = r.frameworks
    lines = [f"levels: {r.data}, test split, {r.n} images of {len(r.classes)} classes "
             f"({', '.join(r.classes)}); frameworks {', '.join(fws)}; seed {r.seed}"]
    for m in r.models:
        lines.append("")
        lines.append(f"model {m.label} ({m.model.source}): {m.model.preprocessing.describe()}")
        head = f"  {'corruption':<16}{'severity':>9}" + "".join(f"{fw:>8}" for fw in fws)
        if len(fws) > 1:
            head += f"{'top-1 agree':>13}{'max score diff':>16}"
        lines.append(head)
        for c in m.cells:
            row = f"  {c.corruption:<16}{c.severity:>9}" + "".join(
                f"{c.accuracy(fw):>8.3f}" for fw in fws)
            if len(fws) > 1:
                row += f"{c.agree_top1:>13.3f}{c.max_score_diff:>16.2e}"
            lines.append(row)
        if not m.cells:
            lines.append("  no level finished")
            continue
        lines.append(f"  first failure (accuracy < {r.fail_below:g}), the easiest level it fails at:")
        for fw in fws:
            fails = {c: m.first_failure(fw, c, r.fail_below) for c in r.corruptions}
            hit = {c: s for c, s in fails.items() if s is not None}
            if any(s == 0 for s in hit.values()):
                summary = f"already on clean images ({m.cell(CLEAN, 0).accuracy(fw):.3f})"
            elif hit:
                easiest = min(hit.values())
                summary = (f"{', '.join(c for c, s in hit.items() if s == easiest)} severity "
                           f"{easiest}; " + ", ".join(
                               f"{c} {'-' if s is None else s}" for c, s in fails.items()))
            else:
                done = max((c.severity for c in m.cells), default=0)
                summary = f"never, up to severity {done} of every corruption"
            lines.append(f"    {fw:>5}: {summary}")
    if r.interrupted:
        lines.append("")
        lines.append("interrupted: the levels above are the ones that finished")
    return "\n".join(lines)


def plot_levels(r: Levels, path: Path) -> Path:
    """Accuracy against severity, one panel per corruption, a line per model and framework."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(r.corruptions)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    styles = {"torch": ("-", "o"), "tf": ("--", "s"), "mxnet": (":", "^")}
    for ax, corruption in zip(axes.flat, r.corruptions):
        for k, m in enumerate(r.models):
            cells = [m.cell(CLEAN, 0)] + sorted(
                (c for c in m.cells if c.corruption == corruption), key=lambda c: c.severity)
            cells = [c for c in cells if c is not None]
            for fw in r.frameworks:
                ls, marker = styles.get(fw, ("-", "o"))
                ax.plot([c.severity for c in cells], [c.accuracy(fw) for c in cells], ls=ls,
                        marker=marker, color=f"C{k}", label=f"{m.label} {fw}", alpha=0.85)
        ax.axhline(r.fail_below, color="grey", lw=0.8, ls="-.")
        ax.set_title(corruption)
        ax.set_xlabel("severity (0: clean)")
        ax.set_ylabel("accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"{r.data}: accuracy against corruption severity ({r.n} images)")
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return path


def grid_levels(r: Levels, data: Dataset, path: Path, image: int = 0) -> Path:
    """One PNG: test image ``image`` as the first model sees it, a row per corruption, a column
    per severity (0: clean)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pre = r.models[0].model.preprocessing
    base = pre.pixels(data.test.image(image))
    sevs = [0] + r.severities
    fig, axes = plt.subplots(len(r.corruptions), len(sevs), squeeze=False,
                             figsize=(1.6 * len(sevs), 1.7 * len(r.corruptions)))
    for i, corruption in enumerate(r.corruptions):
        for j, s in enumerate(sevs):
            img = base if s == 0 else corrupt(base, corruption, s,
                                               corruption_seed(r.seed, image, corruption, s))
            ax = axes[i, j]
            shown = img[..., ::-1] if pre.channels == "BGR" else img
            ax.imshow(shown, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("clean" if s == 0 else f"severity {s}", fontsize=8)
            if j == 0:
                ax.set_ylabel(corruption, fontsize=8)
    fig.suptitle(f"test image {image} ({data.classes[int(data.test.labels[image])]}), "
                 f"{pre.size[0]}x{pre.size[1]}", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return path


def save_png(fig: Any, path: Path) -> None:
    """Write a matplotlib figure to ``path`` atomically."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


# -- the command ---------------------------------------------------------------------------------
def corruption_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown corruption {', '.join(unknown) or text!r}; "
                                         f"choose from {', '.join(CORRUPTIONS)}")
    return list(dict.fromkeys(names))


def severity_list(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"severities are integers, got {text!r}") from None
    bad = [v for v in values if v != 0 and v not in SEVERITIES]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"severities are 0 (clean) and {SEVERITIES}, got {text!r}")
    return values


def cmd_levels(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    try:
        data = load(args.data, classes=args.classes)
        models = [load_model(m, labels=args.labels) for m in args.model]
        for m in models:
            class_map(m, data.classes)
    except (DataError, ValueError, BackendUnavailable, OSError) as e:
        raise CliError(one_line(e)) from None
    backends = model_backends(args.frameworks)
    for m in models:
        for note in m.notes:
            print(f"{m.source}: {note}", file=sys.stderr)
    n = len(data.test)
    indices = (np.sort(np.random.default_rng(args.seed).permutation(n)[:args.limit])
               if args.limit and args.limit < n else None)
    count = len(indices) if indices is not None else n
    total = len(models) * len(conditions(args.corruptions, args.severities)) * count

    def save(r: Levels) -> None:
        if args.json:
            write_text(args.json, json.dumps(r.to_json(), indent=1))
    with tqdm(total=total, unit="img", desc="levels", file=sys.stderr,
              disable=True if args.quiet else None) as bar:
        try:
            result = evaluate_levels(models, backends, data, corruptions=args.corruptions,
                                     severities=args.severities, indices=indices, seed=args.seed,
                                     batch_size=args.batch_size, fail_below=args.fail_below,
                                     on_cell=save, progress=bar.update)
        except (ValueError, BackendUnavailable, OSError) as e:
            raise CliError(one_line(e)) from None
    print(format_levels(result))
    save(result)
    if args.plot and result.models and result.models[0].cells:
        print(f"plot: {plot_levels(result, Path(args.plot))}")
    if args.grid:
        first = int(indices[0]) if indices is not None else 0
        print(f"grid: {grid_levels(result, data, Path(args.grid), first)}")
    if args.json:
        print(f"json: {args.json}")
    return 130 if result.interrupted else EXIT_OK


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``levels``."""
    p = sub.add_parser(
        "levels", help="accuracy under corruptions of increasing severity, per model and framework",
        description="Corrupt every test image of --data at increasing severity (ImageNet-C's "
                    "corruptions, applied at each model's input size; severity 0 is the clean "
                    "image) and evaluate each --model in each framework on the same arrays. "
                    "Prints accuracy per model, framework, corruption and severity; the share "
                    "of images whose top-1 all frameworks agree on and their largest score "
                    "difference; and, per model and framework, the easiest level at which "
                    "accuracy falls below --fail-below. Ctrl-C keeps, prints and writes the "
                    "levels that finished (exit status 130).")
    p.add_argument("--model", action="append", required=True, metavar="M",
                   help="a checkpoint convert reads; repeat to compare models")
    p.add_argument("--data", default="builtin", metavar="D",
                   help="builtin (scikit-learn's digits), a Fashion-MNIST or CIFAR-10 directory, "
                        "or a folder of class subfolders (as for train)")
    p.add_argument("--classes", metavar="A,B,...",
                   help="a subset of the data's classes, e.g. airplane,automobile,ship,truck")
    p.add_argument("--corruptions", type=corruption_list, default=list(DEFAULT_CORRUPTIONS),
                   metavar="C,...", help=f"which ({','.join(DEFAULT_CORRUPTIONS)}); all: "
                                         f"{', '.join(CORRUPTIONS)}")
    p.add_argument("--severities", type=severity_list, default=list(SEVERITIES), metavar="S,...",
                   help="severities (1,2,3,4,5); the clean images always run")
    p.add_argument("--frameworks", type=framework_list, default=list(BACKEND_NAMES),
                   help="comma-separated: torch,tf,mxnet (default: all installed)")
    p.add_argument("--fail-below", type=probability, default=0.5, metavar="A",
                   help="a level fails when accuracy is under A (0.5)")
    p.add_argument("--limit", type=positive, metavar="N",
                   help="evaluate N test images (a seeded sample) instead of all")
    p.add_argument("--batch-size", type=positive, default=64, help="images per forward pass (64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions and --limit (0)")
    p.add_argument("--labels", type=label_list, metavar="A,B,...",
                   help="class names, for a model that stores none")
    p.add_argument("--json", metavar="FILE", help="write the results as JSON (after every level)")
    p.add_argument("--plot", metavar="FILE.png", help="accuracy against severity")
    p.add_argument("--grid", metavar="FILE.png", help="one test image at every level")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_levels)
