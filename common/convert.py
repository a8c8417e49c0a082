"""Convert checkpoints between frameworks, verify the result, and inspect checkpoint files.

:func:`convert` reads SRC through its format (:mod:`common.formats`), checks it against the spec,
writes DST to a hidden temporary file beside it, reads that back through DST's framework, runs
SRC's and DST's models on one fixed input and compares every layer (:mod:`common.compare`), and
only then renames the temporary file into place. A failed, refused or interrupted conversion
therefore leaves no DST behind, and an existing DST is replaced only with ``force``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from .backend import BACKEND_NAMES, BackendUnavailable, get_backend
from .compare import EVAL_RTOL_CPU, Row, Section, compare
from .formats import TORCHVISION, Format, PathLike, detect
from .spec import (
    ResNetSpec,
    Unit,
    param_shapes,
    resnet18_spec,
    spec_from_json,
    torchvision_resnet18_spec,
)
from .state import State, publish

Log = Callable[[str], None]
ARCHES: dict[str, Callable[..., ResNetSpec]] = {
    "resnet18": resnet18_spec,
    "torchvision-resnet18": torchvision_resnet18_spec,
}


def _quiet(message: str) -> None:
    pass


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- reading a checkpoint ------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A checkpoint file (or Gluon symbol+params pair), its format and its raw tensors."""

    path: Path
    format: Format
    tensors: dict[str, np.ndarray]

    @property
    def files(self) -> list[Path]:
        return self.format.files(self.path)


def open_checkpoint(path: PathLike, family: Optional[str] = None) -> Checkpoint:
    """Detect the format of ``path`` (``family`` as ``--from`` gives it) and read its tensors.

    Raises ``ValueError`` naming the file for an unknown name, a missing, empty, truncated or
    corrupt file, and a PyTorch pickle that would run code (refused, never executed).
    """
    path = Path(path)
    fmt = detect(path, family)
    tensors = fmt.tensors(path)
    return Checkpoint(path, fmt.refine(tensors), tensors)


def load_spec_file(path: PathLike) -> Unit:
    """A spec from a JSON file (``ResNetSpec.to_json`` / :func:`common.spec.spec_from_json`)."""
    path = Path(path)
    try:
        return spec_from_json(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the spec file ({e.__class__.__name__}: {e})"
                         ) from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a valid spec: {e}") from None


def infer_io(tensors: Mapping[str, np.ndarray], spec: ResNetSpec
             ) -> tuple[dict[str, int], list[str]]:
    """``in_channels`` and ``num_classes`` read off the tensor shapes, where unambiguous.

    The stem conv is the one 4-D tensor with the spec's stem kernel and stem channels (in either
    ``(out, in, k, k)`` or Keras's ``(k, k, in, out)`` layout); the classifier is the one 2-D
    tensor with the last stage's channels on one side. Returns the values found and one line
    per field saying where each came from, or why it could not be inferred.
    """
    k, c0, c_last = spec.stem_kernel, spec.stem_channels, spec.stage_channels[-1]
    stems, fcs = [], []
    for name, a in tensors.items():
        s = tuple(a.shape)
        if len(s) == 4 and s[2:] == (k, k) and s[0] == c0:
            stems.append((name, s, s[1]))
        elif len(s) == 4 and s[:2] == (k, k) and s[3] == c0:
            stems.append((name, s, s[2]))
        elif len(s) == 2 and s[1] == c_last:
            fcs.append((name, s, s[0]))
        elif len(s) == 2 and s[0] == c_last:
            fcs.append((name, s, s[1]))
    found, notes = {}, []
    for field_name, candidates, what in (("in_channels", stems, f"{k}x{k} stem conv"),
                                         ("num_classes", fcs, "classifier weight")):
        if len(candidates) == 1:
            name, shape, value = candidates[0]
            found[field_name] = value
            notes.append(f"{field_name}={value} inferred from {name} {shape}")
        else:
            notes.append(f"{field_name} not inferred ({len(candidates)} tensors look like the "
                         f"{what}); the default {getattr(spec, field_name)} is used")
    return found, notes


def resolve_spec(ckpt: Checkpoint, spec_file: Optional[PathLike] = None,
                 arch: Optional[str] = None) -> tuple[ResNetSpec, str]:
    """The spec to read ``ckpt`` with, and a line saying where it came from.

    A file that stores its spec (canonical, ``.keras``) is read with it (a different ``--spec``
    is an error); otherwise ``spec_file`` is used as given, or ``arch`` with ``in_channels`` and
    ``num_classes`` inferred from the tensor shapes (:func:`infer_io`).
    """
    given = load_spec_file(spec_file) if spec_file is not None else None
    if arch is not None and arch not in ARCHES:
        raise ValueError(f"unknown --arch {arch!r}; choose from {', '.join(ARCHES)}")
    stored = ckpt.format.spec(ckpt.path) if ckpt.format.carries_spec else None
    if stored is not None:
        if given is not None and given != stored:
            raise ValueError(f"{ckpt.path}: stores spec {stored.name!r}, which differs from "
                             f"{spec_file} in: {', '.join(_differences(stored, given))}")
        spec, source = stored, f"stored in {ckpt.path.name}" + (
            f"; --arch {arch} ignored" if arch else "")
    elif given is not None:
        spec, source = given, f"from {spec_file}"
    elif arch is not None:
        base = ARCHES[arch]()
        found, notes = infer_io(ckpt.tensors, base)
        spec = dataclasses.replace(base, **found)
        source = f"--arch {arch}; " + "; ".join(notes)
    else:
        hint = " (its keys are torchvision's: try --arch torchvision-resnet18)" if (
            ckpt.format is TORCHVISION) else ""
        raise ValueError(f"{ckpt.path}: a {ckpt.format.description} stores no spec; pass "
                         f"--spec FILE or --arch {'|'.join(ARCHES)}{hint}")
    if not isinstance(spec, ResNetSpec):
        raise ValueError(f"{ckpt.path}: the spec is a {type(spec).__name__}; convert handles "
                         "whole ResNets (ResNetSpec)")
    return spec, source


def _differences(a: Unit, b: Unit) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{k} ({da.get(k)!r} vs {db.get(k)!r})" for k in sorted(set(da) | set(db))
            if da.get(k) != db.get(k)]


# -- writing, atomically -------------------------------------------------------------------------
class Staging:
    """Hidden temporary files beside DST, renamed into place by :meth:`commit`, removed otherwise.

    Refuses to stage over existing files unless ``force``; handles multi-file formats (the
    Gluon symbol+params pair) by staging and renaming every file.
    """

    def __init__(self, fmt: Format, dst: Path, force: bool) -> None:
        self.targets = fmt.files(dst, writing=True)
        check_targets(self.targets, force)
        fd, tmp = tempfile.mkstemp(prefix=".convert-", suffix=f"-{dst.name}", dir=dst.parent)
        os.close(fd)
        self.path = Path(tmp)
        self.temps = fmt.files(self.path, writing=True)
        self.committed = False

    def commit(self) -> list[Path]:
        # the data file first, the entry file (symbol) last: whoever sees it sees both
        for tmp, target in reversed(list(zip(self.temps, self.targets))):
            publish(tmp, target)
        self.committed = True
        return self.targets

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc: Any) -> None:
        for tmp in self.temps:
            if tmp.exists():
                tmp.unlink()


def check_targets(targets: Sequence[Path], force: bool) -> None:
    """Refuse a DST whose directory is missing, that is a directory, or that exists (unless
    ``force``), naming every such file."""
    for parent in dict.fromkeys(t.parent for t in targets):
        if not parent.is_dir():
            raise ValueError(f"{targets[0]}: no such directory {parent}")
    dirs = [str(t) for t in targets if t.is_dir()]
    if dirs:
        raise ValueError(f"{', '.join(dirs)}: is a directory, not a file name")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise ValueError(f"{', '.join(existing)}: already exist{'s' if len(existing) == 1 else ''}"
                         "; pass --force to overwrite")


# -- verification --------------------------------------------------------------------------------
@dataclass
class Verification:
    """DST read back through its framework and compared with SRC."""

    tensors: int                      # canonical tensors compared
    differing: list[str]              # tensors not bit-identical after the round trip
    section: Optional[Section]        # per-layer activations (None: weights not finite)
    runs: tuple[str, str]             # the frameworks that ran SRC and DST
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.differing and (self.section is None or self.section.ok)


def reference_framework() -> str:
    """The framework that runs a canonical file: PyTorch if installed, else the next one."""
    for name in BACKEND_NAMES:
        try:
            get_backend(name)
            return name
        except BackendUnavailable:
            continue
    raise BackendUnavailable("no framework is installed: pip install 'resnet-parity[all]'")


def activations(framework: str, spec: ResNetSpec, state: State, x: np.ndarray) -> dict:
    be = get_backend(framework)
    model = be.build(spec)
    be.load_state(model, state, allow_nonfinite=True)
    return be.activations(model, x)


def verify(state: State, spec: ResNetSpec, src: Format, dst: Format, dst_path: Path, *,
           size: int = 64, seed: int = 0, rtol: float = EVAL_RTOL_CPU,
           log: Log = _quiet) -> Verification:
    """Read ``dst_path`` back, compare its state with ``state`` bit for bit, and run SRC's and
    DST's frameworks on one fixed input, layer by layer (plus the file's own graph, if any)."""
    log(f"verifying: reading the written {dst.name} file back ...")
    back = dst.read(dst_path, spec, allow_nonfinite=True)
    differing = [k for k in state if not np.array_equal(state[k], back[k], equal_nan=True)]
    ref = None if src.framework and dst.framework else reference_framework()
    runs = (src.framework or ref, dst.framework or ref)
    if not all(np.isfinite(v).all() for v in state.values()):
        return Verification(len(state), differing, None, runs,
                            "weights hold NaN or inf: activations not compared")
    x = np.random.default_rng(seed).standard_normal(
        (1, spec.in_channels, size, size)).astype(np.float32)
    acts = []
    for framework, s in zip(runs, (state, back)):
        log(f"verifying: running {framework} on input {x.shape} ...")
        acts.append(activations(framework, spec, s, x))
    rows: list[Row] = compare(acts[1], acts[0], rtol)
    graph = dst.graph_forward(dst_path, x)
    if graph is not None:
        name = "head.fc (saved graph)"
        rows += compare({name: graph}, {name: acts[0]["head.fc"]}, rtol)
    labels = (f"{src.name}", f"{dst.name}" if dst.name != src.name else f"{dst.name} (DST)")
    section = Section(f"activations, eval mode, input {x.shape}", rtol, {labels: rows})
    return Verification(len(state), differing, section, runs)


# -- convert -------------------------------------------------------------------------------------
@dataclass
class Conversion:
    """What :func:`convert` did."""

    src: Checkpoint
    dst_format: Format
    dst: list[Path]                   # DST's files; written only if ``written``
    spec: ResNetSpec
    spec_source: str
    written: bool
    verification: Optional[Verification]
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.written and (self.verification is None or self.verification.ok)


def convert(src: PathLike, dst: PathLike, *, src_format: Optional[str] = None,
            dst_format: Optional[str] = None, spec_file: Optional[PathLike] = None,
            arch: Optional[str] = None, force: bool = False, verify_output: bool = True,
            allow_nonfinite: bool = False, size: int = 64, seed: int = 0,
            rtol: float = EVAL_RTOL_CPU, log: Log = _quiet) -> Conversion:
    """Convert the checkpoint ``src`` into ``dst`` (formats from the names, or ``src_format`` /
    ``dst_format``: canonical, torch, torchvision, tf, mxnet).

    Raises ``ValueError`` naming the file for unreadable input, a spec mismatch (every offending
    key with expected and actual shape), non-finite weights (unless ``allow_nonfinite``) and an
    existing DST (unless ``force``); ``BackendUnavailable`` when a framework is missing. When the
    verification fails, nothing is written and the result says why.
    """
    src, dst = Path(src), Path(dst)
    t0 = time.perf_counter()
    out_fmt = detect(dst, dst_format, writing=True)
    check_targets(out_fmt.files(dst, writing=True), force)  # before any slow work
    log(f"reading {src} ...")
    ckpt = open_checkpoint(src, src_format)
    spec, source = resolve_spec(ckpt, spec_file, arch)
    state = ckpt.format.read(ckpt.path, spec, allow_nonfinite=allow_nonfinite,
                             tensors=ckpt.tensors)
    notes = []
    cast = sorted({str(a.dtype) for a in ckpt.tensors.values()
                   if a.dtype.kind == "f" and a.dtype != np.float32})
    if cast:
        notes.append(f"{'/'.join(cast)} tensors were cast to float32 (the canonical dtype)")
    seconds = {"read": time.perf_counter() - t0}
    result = Conversion(ckpt, out_fmt, out_fmt.files(dst, writing=True), spec, source, False,
                        None, seconds, notes)
    with Staging(out_fmt, dst, force) as staging:
        t = time.perf_counter()
        log(f"writing {dst} ({out_fmt.description}) ...")
        out_fmt.write(staging.path, state, spec)
        seconds["write"] = time.perf_counter() - t
        if verify_output:
            t = time.perf_counter()
            result.verification = verify(state, spec, ckpt.format, out_fmt, staging.path,
                                         size=size, seed=seed, rtol=rtol, log=log)
            seconds["verify"] = time.perf_counter() - t
        if result.verification is None or result.verification.ok:
            staging.commit()
            result.written = True
    seconds["total"] = time.perf_counter() - t0
    return result


# -- inspect -------------------------------------------------------------------------------------
@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str
    min: float
    max: float
    mean: float
    nonfinite: int


@dataclass
class Inspection:
    """What a checkpoint file holds."""

    checkpoint: Checkpoint
    spec: Optional[Unit]
    spec_note: str
    tensors: list[TensorInfo]

    @property
    def nonfinite(self) -> list[TensorInfo]:
        return [t for t in self.tensors if t.nonfinite]


def tensor_info(name: str, a: np.ndarray) -> TensorInfo:
    nan = float("nan")
    if a.dtype.kind not in "biuf" or a.size == 0:
        return TensorInfo(name, tuple(a.shape), str(a.dtype), nan, nan, nan, 0)
    a64 = a.astype(np.float64)
    finite = np.isfinite(a64)
    good = a64[finite]
    stats = (float(good.min()), float(good.max()), float(good.mean())) if good.size else (nan,) * 3
    return TensorInfo(name, tuple(a.shape), str(a.dtype), *stats, int(a.size - finite.sum()))


def inspect_checkpoint(path: PathLike, family: Optional[str] = None) -> Inspection:
    """Format, spec (where the file stores one) and per-tensor statistics of ``path``."""
    ckpt = open_checkpoint(path, family)
    spec, note = None, ""
    if ckpt.format.carries_spec:
        try:
            spec = ckpt.format.spec(ckpt.path)
        except ValueError as e:
            note = str(e)
    else:
        note = "none stored in this format (convert takes --spec FILE or --arch)"
    return Inspection(ckpt, spec, note, [tensor_info(k, v) for k, v in ckpt.tensors.items()])


def format_inspection(ins: Inspection) -> str:
    ckpt = ins.checkpoint
    floats = [ckpt.tensors[t.name] for t in ins.tensors if t.dtype.startswith(("float", "bfloat"))]
    lines = [f"file: {', '.join(str(p) for p in ckpt.files)}",
             f"format: {ckpt.format.name} ({ckpt.format.description})"]
    if ins.spec is not None:
        lines.append(f"spec: {ins.spec.to_json()}")
        shapes = param_shapes(ins.spec)
        trainable = sum(int(np.prod(s)) for k, s in shapes.items()
                        if not k.endswith(("running_mean", "running_var")))
        lines.append(f"parameters: {trainable:,} trainable + "
                     f"{sum(int(np.prod(s)) for s in shapes.values()) - trainable:,} "
                     "BatchNorm running statistics (from the spec)")
    else:
        lines.append(f"spec: {ins.spec_note}")
    lines.append(f"tensors: {len(ins.tensors)} ({len(floats)} floating point); values: "
                 f"{sum(a.size for a in floats):,} floating point, "
                 f"{sum(ckpt.tensors[t.name].size for t in ins.tensors):,} in all")
    width = max([len(t.name) for t in ins.tensors] + [4])
    lines.append(f"{'name':<{width}}  {'shape':<18} {'dtype':<8} {'min':>10} {'max':>10} "
                 f"{'mean':>10}  non-finite")
    for t in ins.tensors:
        lines.append(f"{t.name:<{width}}  {str(t.shape):<18} {t.dtype:<8} {t.min:>10.3g} "
                     f"{t.max:>10.3g} {t.mean:>10.3g}  {t.nonfinite or '-'}")
    bad = ins.nonfinite
    lines.append("non-finite values: " + (
        "none" if not bad else f"{len(bad)} tensor(s): " + ", ".join(
            f"{t.name} ({t.nonfinite} of {int(np.prod(t.shape))})" for t in bad)))
    return "\n".join(lines)
