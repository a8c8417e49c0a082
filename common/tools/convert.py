"""``resnet-parity convert`` and ``inspect``: checkpoints between frameworks, verified.

:func:`convert` reads SRC through its format (:mod:`common.tools.formats`), checks it against the spec,
writes DST to a hidden temporary file beside it, reads that back through DST's framework, runs
SRC's and DST's models on one fixed input and compares every layer (:mod:`common.core.compare`), and
only then renames the temporary file into place. A failed, refused or interrupted conversion
therefore leaves no DST behind, and an existing DST is replaced only with ``force``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np

from ..core.compare import EVAL_RTOL_CPU, Row, Section, compare, format_section
from ..core.preprocess import preprocessing_file
from ..core.spec import (
    ARCHITECTURES,
    NETWORKS,
    ConvNeXtSpec,
    Network,
    Unit,
    num_inputs,
    param_shapes,
    resnet18_spec,
    spec_from_json,
    unit_name,
)
from ..core.state import State
from .command import EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, CliError, Log, one_line, positive, progress_log
from .formats import (
    FAMILY_NAMES,
    Format,
    PathLike,
    Staging,
    check_targets,
    detect,
    family_name,
    locate,
    refine,
)
from .registry import BACKEND_NAMES, BackendUnavailable, get_backend

ARCHES: dict[str, Callable[..., Network]] = ARCHITECTURES  # what --arch names


def _quiet(message: str) -> None:
    pass


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
    """Detect the format of ``path`` (``family`` as ``--from`` gives it) and read its tensors;
    a Hugging Face Hub id (``owner/name``) is downloaded first.

    Raises ``ValueError`` naming the file for an unknown name, a missing, empty, truncated or
    corrupt file, and a PyTorch pickle that would run code (refused, never executed).
    """
    path = locate(path, family)
    fmt = detect(path, family)
    tensors = fmt.tensors(path)
    return Checkpoint(path, refine(fmt, tensors), tensors)


def load_spec_file(path: PathLike) -> Unit:
    """A spec from a JSON file (``ResNetSpec.to_json`` / :func:`common.spec_from_json`)."""
    path = Path(path)
    try:
        return spec_from_json(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read the spec file ({e.__class__.__name__}: {e})"
                         ) from None
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a valid spec: {e}") from None


def infer_io(tensors: Mapping[str, np.ndarray], spec: Network
             ) -> tuple[dict[str, int], list[str]]:
    """``in_channels`` and ``num_classes`` read off the tensor shapes, where unambiguous.

    The stem conv is the one 4-D tensor with the spec's stem kernel (a ConvNeXt's patch size)
    and stem channels (in either ``(out, in, k, k)`` or Keras's ``(k, k, in, out)`` layout); the
    classifier is the one 2-D tensor with the last stage's channels on one side (a ConvNeXt's
    MLP layers, whose other side is ``mlp_ratio`` times that, are not candidates). Returns the
    values found and one line per field saying where each came from, or why it could not be
    inferred.
    """
    if isinstance(spec, ConvNeXtSpec):
        k, c0, c_last = spec.patch_size, spec.widths[0], spec.widths[-1]
        mlps = {(spec.mlp_ratio * c, c) for c in spec.widths}
        mlps |= {(b, a) for a, b in mlps}  # either layout
    else:
        k, c0, c_last = spec.stem_kernel, spec.stem_channels, spec.stage_channels[-1]
        mlps = set()
    stems, fcs = [], []
    for name, a in tensors.items():
        s = tuple(a.shape)
        if len(s) == 4 and s[2:] == (k, k) and s[0] == c0:
            stems.append((name, s, s[1]))
        elif len(s) == 4 and s[:2] == (k, k) and s[3] == c0:
            stems.append((name, s, s[2]))
        elif len(s) == 2 and s in mlps:
            continue
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
                 arch: Optional[str] = None) -> tuple[Unit, str]:
    """The spec to read ``ckpt`` with, and a line saying where it came from.

    A file that stores its spec (canonical, ``.keras``) is read with it (a different ``--spec``
    is an error); a spec read off the file's layout (the d2l chapter's files) gives way to a
    given one. Otherwise ``spec_file`` is used as given, or ``arch`` with ``in_channels`` and
    ``num_classes`` inferred from the tensor shapes (:func:`infer_io`); without either, the
    one named architecture whose keys and shapes the file holds (:func:`fitting_architectures`).
    A whole network or, from a file that holds one alone, a Residual or resnet_block.
    """
    given = load_spec_file(spec_file) if spec_file is not None else None
    if arch is not None and arch not in ARCHES:
        raise ValueError(f"unknown --arch {arch!r}; choose from {', '.join(ARCHES)}")
    overridden = ckpt.format.spec_inferred and (given is not None or arch is not None)
    stored = (ckpt.format.spec(ckpt.path) if ckpt.format.carries_spec and not overridden
              else None)
    if stored is not None and ckpt.format.spec_inferred:
        spec, source = stored, f"{ckpt.format.spec_origin} of {ckpt.files[0].name}"
    elif stored is not None:
        if given is not None and given != stored:
            raise ValueError(f"{ckpt.path}: stores spec {stored.name!r}, which differs from "
                             f"{spec_file} in: {', '.join(_differences(stored, given))}")
        spec, source = stored, f"stored in {ckpt.files[0].name}" + (
            f"; --arch {arch} ignored" if arch else "")
    elif given is not None:
        spec, source = given, f"from {spec_file}"
    elif arch is not None:
        base = ARCHES[arch]()
        found, notes = infer_io(ckpt.tensors, base)
        spec = dataclasses.replace(base, **found)
        source = f"--arch {arch}; " + "; ".join(notes)
    else:
        fitting = fitting_architectures(ckpt)
        if len(fitting) == 1:
            name, spec, notes = fitting[0]
            source = f"recognised as {name} from its keys and shapes; " + "; ".join(notes)
        elif fitting:
            raise ValueError(f"{ckpt.path}: its keys and shapes fit several architectures ("
                             f"{', '.join(n for n, _, _ in fitting)}); name one with --arch")
        elif ckpt.format.fits(ckpt.tensors, resnet18_spec()) is None:
            raise ValueError(f"{ckpt.path}: a {ckpt.format.description} stores no spec; pass "
                             f"--spec FILE or --arch NAME ({', '.join(ARCHES)})")
        else:
            raise ValueError(f"{ckpt.path}: no known architecture fits its keys and shapes "
                             f"({', '.join(ARCHES)}); pass --spec FILE with its spec")
    return spec, source


def fitting_architectures(ckpt: Checkpoint) -> list[tuple[str, Network, list[str]]]:
    """Every named architecture whose keys and shapes ``ckpt`` holds exactly (in_channels and
    num_classes read off the shapes), as ``(name, spec, notes)``; empty where the format cannot
    tell without a framework (``Format.fits`` is None) or nothing fits."""
    out = []
    for name, make in ARCHES.items():
        base = make()
        found, notes = infer_io(ckpt.tensors, base)
        spec = dataclasses.replace(base, **found)
        if ckpt.format.fits(ckpt.tensors, spec):
            out.append((name, spec, notes))
    return out


def _differences(a: Unit, b: Unit) -> list[str]:
    da, db = a.to_dict(), b.to_dict()
    return [f"{k} ({da.get(k)!r} vs {db.get(k)!r})" for k in sorted(set(da) | set(db))
            if da.get(k) != db.get(k)]


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


def activations(framework: str, spec: Network, state: State, x: np.ndarray) -> dict:
    be = get_backend(framework)
    model = be.build(spec)
    be.load_state(model, state, allow_nonfinite=True)
    return be.activations(model, x)


def verify(state: State, spec: Network, src: Format, dst: Format, dst_path: Path, *,
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
    x = _probe(spec, size, seed)
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


def _probe(spec: Unit, size: int, seed: int, batch: int = 1) -> np.ndarray:
    """The fixed verification input: ``(batch, input channels, size, size)``, standard normal."""
    return np.random.default_rng(seed).standard_normal(
        (batch, num_inputs(spec), size, size)).astype(np.float32)


@dataclass
class FunctionChange:
    """What writing for code with a fixed function (d2l's chapter code) would change: the
    same state under SRC's spec and under the spec DST's code computes, layer by layer."""

    target: Unit
    section: Section
    fields: list[str]                 # the spec fields that differ (padding, bn_eps, ...)

    @property
    def changes_output(self) -> bool:
        """Whether the function differs (not only the training momentum)."""
        return any(f != "bn_momentum" for f in self.fields)


def function_change(state: State, spec: Unit, target: Unit, framework: str, *, size: int,
                    seed: int, rtol: float, log: Log = _quiet) -> FunctionChange:
    """Run ``state`` under ``spec`` and under ``target`` in ``framework`` on the verification
    input (batch 2) and compare every layer: how far DST would be from SRC."""
    fields = [f for f, v in target.to_dict().items() if spec.to_dict().get(f) != v]
    x = _probe(spec, size, seed, batch=2)
    log(f"measuring the function change ({', '.join(fields)}) in {framework} on {x.shape} ...")
    rows = compare(activations(framework, target, state, x), activations(framework, spec, state, x),
                   rtol)
    section = Section(f"function change, eval mode, input {x.shape}", rtol,
                      {("DST's code", "SRC's function"): rows})
    return FunctionChange(target, section, fields)


# -- convert -------------------------------------------------------------------------------------
@dataclass
class Conversion:
    """What :func:`convert` did."""

    src: Checkpoint
    dst_format: Format
    dst: list[Path]                   # DST's files; written only if ``written``
    spec: Unit
    spec_source: str
    written: bool
    verification: Optional[Verification]
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    change: Optional[FunctionChange] = None  # DST's code computes another function
    refused: bool = False             # ... and that was not allowed: nothing written

    @property
    def ok(self) -> bool:
        return self.written and (self.verification is None or self.verification.ok)


def convert(src: PathLike, dst: PathLike, *, src_format: Optional[str] = None,
            dst_format: Optional[str] = None, spec_file: Optional[PathLike] = None,
            arch: Optional[str] = None, force: bool = False, verify_output: bool = True,
            allow_nonfinite: bool = False, allow_function_change: bool = False,
            preprocess_file: Optional[PathLike] = None,
            size: int = 64, seed: int = 0, rtol: float = EVAL_RTOL_CPU,
            log: Log = _quiet) -> Conversion:
    """Convert the checkpoint ``src`` into ``dst`` (formats from the names, or ``src_format`` /
    ``dst_format``: canonical, torch, torchvision, tf, mxnet, hf, d2l-torch ...).

    Raises ``ValueError`` naming the file for unreadable input, a spec mismatch (every offending
    key with expected and actual shape), non-finite weights (unless ``allow_nonfinite``), a spec
    DST's format cannot hold, and an existing DST (unless ``force``); ``BackendUnavailable``
    when a framework is missing. When the verification fails, or DST's code would compute
    another function (d2l's Keras chapter code from a PyTorch model, say) and
    ``allow_function_change`` is not given, nothing is written and the result says why.

    The preprocessing SRC stores (a canonical file's, a Hugging Face ``preprocessor_config.json``),
    or the one in ``preprocess_file``, travels into a DST format that stores it; where DST's
    cannot, a note says so.
    """
    src, dst = Path(src), Path(dst)
    t0 = time.perf_counter()
    out_fmt = detect(dst, dst_format, writing=True)
    check_targets(out_fmt.files(dst, writing=True), force, out_fmt)  # before any slow work
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
    pre = (preprocessing_file(preprocess_file, num_inputs(spec)) if preprocess_file is not None
           else ckpt.format.preprocessing(ckpt.path))
    if pre is not None and not out_fmt.takes_preprocessing(pre):
        notes.append(f"the preprocessing ({pre.describe()}) is not stored: "
                     f"{out_fmt.description} has no place for it")
        pre = None
    seconds = {"read": time.perf_counter() - t0}
    result = Conversion(ckpt, out_fmt, out_fmt.files(dst, writing=True), spec, source, False,
                        None, seconds, notes)
    target = out_fmt.target(spec)
    if target != spec:
        t = time.perf_counter()
        result.change = change = function_change(
            state, spec, target, ckpt.format.framework or reference_framework(), size=size,
            seed=seed, rtol=rtol, log=log)
        seconds["function change"] = time.perf_counter() - t
        if change.changes_output and not allow_function_change:
            result.refused = True
            seconds["total"] = time.perf_counter() - t0
            return result
    with Staging(out_fmt, dst, force) as staging:
        t = time.perf_counter()
        log(f"writing {dst} ({out_fmt.description}) ...")
        out_fmt.write(staging.path, state, target,
                      **({"preprocessing": pre} if pre is not None else {}))
        seconds["write"] = time.perf_counter() - t
        if verify_output:
            t = time.perf_counter()
            result.verification = verify(state, target, ckpt.format, out_fmt, staging.path,
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
    architecture: str = ""        # the named architecture the file holds, or why none

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
    return Inspection(ckpt, spec, note, [tensor_info(k, v) for k, v in ckpt.tensors.items()],
                      recognise(ckpt, spec))


def recognise(ckpt: Checkpoint, spec: Optional[Unit]) -> str:
    """Which named architecture ``ckpt`` holds, in words: the stored spec's, or the ones its
    keys and shapes fit (:func:`fitting_architectures`), or why there is none."""
    if spec is not None:
        named = [n for n, make in ARCHES.items() if isinstance(spec, NETWORKS)
                 and dataclasses.replace(make(), in_channels=spec.in_channels,
                                         num_classes=spec.num_classes,
                                         labels=spec.labels) == spec]
        origin = ckpt.format.spec_origin
        if named:
            return f"{named[0]} ({origin})"
        if isinstance(spec, NETWORKS):
            return f"{spec.name} ({origin}; not one of the named architectures)"
        return f"a {unit_name(spec)} alone ({origin})"
    fitting = fitting_architectures(ckpt)
    if fitting:
        name, found, _ = fitting[0]
        more = f"; also fits {', '.join(n for n, _, _ in fitting[1:])}" if fitting[1:] else ""
        return (f"{name}, from its keys and shapes (in_channels={found.in_channels}, "
                f"num_classes={found.num_classes}){more}")
    if ckpt.format.fits(ckpt.tensors, resnet18_spec()) is None:
        return "not recognisable without loading it into its framework (convert takes --arch)"
    return "none of the named architectures fits its keys and shapes"


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
                     "BatchNorm running statistics (from the spec)" if trainable < sum(
                         int(np.prod(s)) for s in shapes.values()) else
                     f"parameters: {trainable:,} trainable (from the spec)")
    else:
        lines.append(f"spec: {ins.spec_note}")
    if ins.architecture:
        lines.append(f"architecture: {ins.architecture}")
    if getattr(ins.spec, "labels", ()):
        lines.append(f"labels: {', '.join(ins.spec.labels)}")
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


# -- the convert and inspect commands --------------------------------------------------------
FORMATS_HELP = """\
formats (inferred from the file name; --from/--to when the name does not say):
  canonical    .safetensors         common.save_state: tensors + the spec as metadata
  torch        .pt, .pth            PyTorch state_dict of resnet_torch's ResNet (read with
                                    torch.load(weights_only=True): a pickle that would run
                                    code is refused, never executed)
  torchvision  .pt, .pth            a state_dict with torchvision's resnet key names (conv1,
                                    bn1, layer2.0.downsample.0/1, fc); detected when reading
  tf           .weights.h5          Keras model.save_weights
               .keras               Keras model.save (whole model; stores the spec)
  mxnet        .params              Gluon save_parameters
               PREFIX-symbol.json   Gluon HybridBlock.export: the graph + PREFIX-0000.params
  hf           DIRECTORY            Hugging Face transformers' ResNetForImageClassification
                                    or ConvNextForImageClassification
                                    (save_pretrained: config.json + model.safetensors or
                                    pytorch_model.bin; stores the spec and labels); to read,
                                    also DIRECTORY/model.safetensors or a Hub id (owner/name,
                                    downloaded with huggingface_hub); --to hf writes a directory
  d2l-torch    .pt, .pth            the d2l chapter's PyTorch code: torch.save(net.state_dict())
                                    of its nn.Sequential (0.0.weight, 1.0.conv1.weight, 7.weight)
  d2l-tf       .weights.h5          the d2l chapter's Keras code: net.save_weights (its
                                    Sequential with Residual and ResnetBlock)
  d2l-mxnet    .params              the d2l chapter's Gluon code: net.save_parameters (either
                                    edition: mxnet.nd or mxnet.np/npx)
               The chapter's files are recognised when reading, also a Residual or a
               resnet_block saved alone; the spec is read off their names and shapes (a
               Residual with a 1x1 conv is taken at stride 2). d2l's Keras code computes another
               function than its PyTorch and Gluon code ('same' padding, BatchNorm eps 1e-3:
               --arch d2l-keras-resnet18); writing for a chapter's code that would compute
               another function than SRC is measured and refused without --allow-function-change.
"""

SPEC_HELP = """\
spec: .safetensors, .keras and Hugging Face directories store theirs, and the d2l chapter's
files show theirs. For the others give --spec FILE (a JSON spec, e.g. ResNetSpec.to_json())
or --arch NAME: resnet18 (d2l's), d2l-keras-resnet18 (what d2l's Keras code computes),
torchvision-resnet18, resnet34/50/101/152, resnext50_32x4d, resnext101_32x8d,
resnext101_64x4d, wide_resnet50_2, wide_resnet101_2 (torchvision's layout), resnet50_v1,
resnet18_v2, resnet50_v2, keras-resnet50/101/152, convnext_tiny/small/base/large
(torchvision's); with --arch, in_channels and num_classes are read off the tensor shapes where
unambiguous.
"""


def _family(text: str) -> str:  # argparse type
    try:
        return family_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register ``convert`` and ``inspect`` on ``resnet-parity``'s subcommand parsers."""
    formats = ", ".join(FAMILY_NAMES)
    c = subparsers.add_parser(
        "convert", help="convert a checkpoint between PyTorch, Keras, Gluon and safetensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Convert the checkpoint SRC into DST, then verify: DST is read back "
                    "through its framework, its state must equal SRC's bit for bit, and SRC's "
                    "and DST's models run on one fixed input with every layer compared. DST is "
                    "written to a temporary file beside it and renamed into place only when "
                    "all of that passed, so a failed or interrupted conversion leaves no DST. "
                    f"Exit status: {EXIT_OK} converted and verified, {EXIT_MISMATCH} DST would "
                    f"not compute what SRC computes (nothing written), {EXIT_USAGE} bad usage or "
                    "bad input (one line on stderr naming the file).",
        epilog=FORMATS_HELP + "\n" + SPEC_HELP)
    c.add_argument("src", metavar="SRC", help="the checkpoint to read")
    c.add_argument("dst", metavar="DST", help="the file to write (for a Gluon export: "
                                              "PREFIX-symbol.json, with PREFIX-0000.params; "
                                              "with --to hf, a directory)")
    c.add_argument("--from", dest="src_format", type=_family, metavar="FORMAT",
                   help=f"SRC's format when its name does not say: {formats}")
    c.add_argument("--to", dest="dst_format", type=_family, metavar="FORMAT",
                   help=f"DST's format when its name does not say: {formats}")
    spec = c.add_mutually_exclusive_group()
    spec.add_argument("--spec", metavar="FILE", help="JSON spec of the network in SRC")
    spec.add_argument("--arch", choices=list(ARCHES), metavar="NAME",
                      help="a known network (listed below); in_channels and num_classes come "
                           "from SRC's shapes")
    c.add_argument("--force", action="store_true", help="overwrite an existing DST")
    c.add_argument("--no-verify", dest="verify", action="store_false",
                   help="write DST without reading it back and comparing the models")
    c.add_argument("--allow-nonfinite", action="store_true",
                   help="convert weights holding NaN or inf (refused by default); the "
                        "activations are then not compared, the state still is")
    c.add_argument("--allow-function-change", action="store_true",
                   help="write DST even where its code computes another function than SRC's "
                        "(d2l's Keras chapter code pads 'same' and uses BatchNorm eps 1e-3; its "
                        "PyTorch and Gluon code pad symmetrically with eps 1e-5): the change is "
                        "measured and printed either way, and refused without this flag")
    c.add_argument("--preprocess", metavar="FILE",
                   help="how images become the model's input, stored with DST where its format "
                        "has a place for it (canonical, hf): a transformers "
                        "preprocessor_config.json; by default SRC's own, if it stores one")
    c.add_argument("--size", type=positive, default=64,
                   help="height and width of the verification input (64)")
    c.add_argument("--seed", type=int, default=0, help="seed of the verification input (0)")
    c.add_argument("--rtol", type=float, default=EVAL_RTOL_CPU,
                   help=f"relative bound per layer, max|a-b|/max|b| ({EVAL_RTOL_CPU:g})")
    c.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    c.set_defaults(func=cmd_convert)

    i = subparsers.add_parser(
        "inspect", help="show a checkpoint's format, spec and tensors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print FILE's format, its spec (where the format stores one), the number "
                    "of parameters, and each tensor's name, shape, dtype, min, max, mean and "
                    "count of NaN/inf values. Nothing in FILE is executed. Exit status: "
                    f"{EXIT_OK} readable, {EXIT_MISMATCH} readable but holding NaN or inf, "
                    f"{EXIT_USAGE} unreadable (one line on stderr naming the file).",
        epilog=FORMATS_HELP)
    i.add_argument("file", metavar="FILE", help="the checkpoint (a Gluon export: either file; a "
                                                "Hugging Face directory or Hub id)")
    i.add_argument("--from", dest="src_format", type=_family, metavar="FORMAT",
                   help=f"FILE's format when its name does not say: {formats}")
    i.set_defaults(func=cmd_inspect)


def cmd_convert(args: argparse.Namespace) -> int:
    log = progress_log(args.quiet)
    try:
        result = convert(args.src, args.dst, src_format=args.src_format,
                         dst_format=args.dst_format, spec_file=args.spec, arch=args.arch,
                         force=args.force, verify_output=args.verify,
                         allow_nonfinite=args.allow_nonfinite,
                         allow_function_change=args.allow_function_change,
                         preprocess_file=args.preprocess, size=args.size,
                         seed=args.seed, rtol=args.rtol, log=log)
    except (ValueError, BackendUnavailable, OSError) as e:
        raise CliError(one_line(e)) from None
    print(format_conversion(result))
    return EXIT_OK if result.ok else EXIT_MISMATCH


def format_conversion(r: Conversion) -> str:
    """What ``convert`` prints: source, spec, destination, verification, verdict and timings."""
    src = r.src
    lines = [f"SRC {src.path}: {src.format.name} ({src.format.description}), "
             f"{len(src.tensors)} tensors",
             f"spec {unit_name(r.spec)} ({r.spec_source}): {r.spec.to_json()}",
             f"DST {', '.join(str(p) for p in r.dst)}: {r.dst_format.name} "
             f"({r.dst_format.description})"]
    lines += [f"note: {n}" for n in r.notes]
    c = r.change
    if c is not None:
        lines.append(f"function: DST's code computes spec {c.target.to_json()}, which differs "
                     f"from SRC's in {', '.join(c.fields)}")
        if c.changes_output:
            lines.append(f"{c.section.title}; bound max|a-b|/max|b| <= {c.section.bound:g}")
            lines.append(format_section(c.section))
            out = next(iter(c.section.pairs.values()))[-1]
            lines.append(f"function change at {out.layer}: max|a-b| {out.max_abs:.3g}, "
                         f"max|a-b|/max|b| {out.max_rel:.3g}")
        else:
            lines.append("function: eval outputs unchanged; training would use DST's BatchNorm "
                         f"momentum {c.target.bn_momentum:g} instead of {r.spec.bn_momentum:g}")
    if r.refused:
        times = ", ".join(f"{k} {t:.2f} s" for k, t in r.seconds.items())
        lines.append(f"REFUSED: DST's code would compute another function than SRC's "
                     f"({', '.join(c.fields)} differ); nothing written ({times}); "
                     "--allow-function-change writes it anyway")
        return "\n".join(lines)
    v = r.verification
    if v is not None:
        lines.append(f"state: {v.tensors} tensors read back from DST, " + (
            "all bit-identical to SRC's" if not v.differing else
            f"{len(v.differing)} differ: {', '.join(v.differing)}"))
        if v.section is not None:
            lines.append(f"{v.section.title}; SRC run in {v.runs[0]}, DST in {v.runs[1]}; "
                         f"bound max|a-b|/max|b| <= {v.section.bound:g}")
            lines.append(format_section(v.section))
        if v.note:
            lines.append(f"note: {v.note}")
    times = ", ".join(f"{k} {s:.2f} s" for k, s in r.seconds.items())
    if not r.written:
        lines.append(f"FAIL: DST would not compute what SRC computes; nothing written ({times}); "
                     "--no-verify writes it anyway")
    elif v is None:
        lines.append(f"wrote {', '.join(str(p) for p in r.dst)} without verifying ({times})")
    else:
        lines.append(f"PASS: wrote {', '.join(str(p) for p in r.dst)} ({times})")
    return "\n".join(lines)


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        ins = inspect_checkpoint(args.file, args.src_format)
    except (ValueError, BackendUnavailable, OSError) as e:
        raise CliError(one_line(e)) from None
    print(format_inspection(ins))
    return EXIT_MISMATCH if ins.nonfinite else EXIT_OK
