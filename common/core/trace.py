"""The walk: one pass through a unit, layer by layer, shared by every backend.

A backend supplies :class:`TraceOps` (how to reach a layer, call it, add, ReLU, and read a tensor
back as NCHW numpy); the walk and the activation names live here, once. Each framework's own
``forward`` is written idiomatically in its package; the contract tests check that the walk's
last activation equals that ``forward``, and that every recorded activation is its layer's
definition applied to the activation before it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol, Union

import numpy as np

from .spec import BottleneckSpec, ConvNeXtSpec, ResidualSpec, ResnetBlockSpec, ResNetSpec, Unit


class TraceOps(Protocol):
    def from_numpy(self, x: np.ndarray) -> Any: ...
    def layer(self, attr: tuple) -> Any: ...
    def call(self, layer: Any, x: Any) -> Any: ...
    def relu(self, x: Any) -> Any: ...
    def add(self, a: Any, b: Any) -> Any: ...
    def to_numpy(self, x: Any) -> np.ndarray: ...
    # the framework's dtype name of a tensor ("float32", "bfloat16", ...)
    def dtype(self, x: Any) -> str: ...
    # ConvNeXt's blocks run their LayerNorm and Linears channels-last: how a framework whose
    # tensors are NCHW moves into that layout and back (identities where NHWC is native)
    def channels_last(self, x: Any) -> Any: ...
    def channels_first(self, x: Any) -> Any: ...


Record = Callable[[str, Any], None]


def resolve(model: Any, attr: tuple) -> Any:
    """Follow an attribute path (``("stages", 1, 0, "conv1")``) into a framework model."""
    obj = model
    for a in attr:
        obj = obj[a] if isinstance(a, int) else getattr(obj, a)
    return obj


class ModelOps:
    """What every backend's :class:`TraceOps` shares: reaching layers by path, calling, adding."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def layer(self, attr: tuple) -> Any:
        return resolve(self.model, attr)

    def call(self, layer: Any, x: Any) -> Any:
        return layer(x)

    def add(self, a: Any, b: Any) -> Any:
        return a + b


def _stepper(ops: TraceOps, prefix: str, attr: tuple, rec: Record) -> Callable[[str, str, Any], Any]:
    """``step(name, layer_attr, v)``: call the block's layer ``layer_attr`` on ``v`` and record
    the result as ``prefix.name``."""
    def step(name: str, layer_attr: str, v: Any) -> Any:
        v = ops.call(ops.layer(attr + (layer_attr,)), v)
        rec(f"{prefix}.{name}", v)
        return v
    return step


def _shortcut_sum(r: Any, ops: TraceOps, step: Callable, x: Any, y: Any, prefix: str,
                  rec: Record, conv: str, bn: str) -> Any:
    """The shortcut (the block's 1x1 conv ``conv`` and BatchNorm ``bn``, where it has them) added
    to the main path ``y``, then ReLU: the block's output."""
    if r.use_1x1conv:
        x = step("shortcut", conv, x)
        if r.shortcut_bn:
            x = step("shortcut_bn", bn, x)
    y = ops.relu(ops.add(y, x))
    rec(prefix, y)
    return y


def _walk_residual(r: ResidualSpec, ops: TraceOps, x: Any, prefix: str, attr: tuple,
                   rec: Record) -> Any:
    step = _stepper(ops, prefix, attr, rec)
    y = step("conv1", "conv1", x)
    y = step("bn1", "bn1", y)
    y = ops.relu(y)
    rec(f"{prefix}.relu1", y)
    y = step("conv2", "conv2", y)
    y = step("bn2", "bn2", y)
    return _shortcut_sum(r, ops, step, x, y, prefix, rec, conv="conv3", bn="bn3")


def _walk_bottleneck(r: BottleneckSpec, ops: TraceOps, x: Any, prefix: str, attr: tuple,
                     rec: Record) -> Any:
    step = _stepper(ops, prefix, attr, rec)
    y = x
    for k in (1, 2):
        y = step(f"bn{k}", f"bn{k}", step(f"conv{k}", f"conv{k}", y))
        y = ops.relu(y)
        rec(f"{prefix}.relu{k}", y)
    y = step("bn3", "bn3", step("conv3", "conv3", y))
    return _shortcut_sum(r, ops, step, x, y, prefix, rec, conv="conv4", bn="bn4")


def _walk_preact(r: Union[ResidualSpec, BottleneckSpec], ops: TraceOps, x: Any, prefix: str,
                 attr: tuple, rec: Record) -> Any:
    """A pre-activation block (v2): BatchNorm, ReLU, conv for each conv of the main path; the
    1x1 shortcut conv reads the first normalised input; no ReLU after the sum."""
    step = _stepper(ops, prefix, attr, rec)
    y = x
    convs = 3 if isinstance(r, BottleneckSpec) else 2
    for k in range(1, convs + 1):
        y = ops.relu(step(f"bn{k}", f"bn{k}", y))
        rec(f"{prefix}.relu{k}", y)
        if k == 1 and r.use_1x1conv:
            x = step("shortcut", "conv4" if convs == 3 else "conv3", y)
        y = step(f"conv{k}", f"conv{k}", y)
    y = ops.add(y, x)
    rec(prefix, y)
    return y


def _walk_unit(r: Any, ops: TraceOps, x: Any, prefix: str, attr: tuple, rec: Record) -> Any:
    if r.preact:
        return _walk_preact(r, ops, x, prefix, attr, rec)
    walk_block = _walk_bottleneck if isinstance(r, BottleneckSpec) else _walk_residual
    return walk_block(r, ops, x, prefix, attr, rec)


def _walk_block(b: ResnetBlockSpec, ops: TraceOps, x: Any, prefix: str, attr: tuple,
                rec: Record) -> Any:
    for i, r in enumerate(b.residuals()):
        x = _walk_unit(r, ops, x, f"{prefix}.{i}" if prefix else str(i), attr + (i,), rec)
    return x


def _walk_resnet(s: ResNetSpec, ops: TraceOps, x: Any, rec: Record) -> Any:
    def step(name: str, v: Any) -> Any:
        v = ops.call(ops.layer(tuple(name.split("."))), v)
        rec(name, v)
        return v

    x = step("stem.conv", x)
    x = step("stem.bn", x)
    x = ops.relu(x)
    rec("stem.relu", x)
    if s.stem_pool:
        x = step("stem.pool", x)
    for i, stage in enumerate(s.stages()):
        x = _walk_block(stage, ops, x, f"stages.{i}", ("stages", i), rec)
    if s.preact:
        x = ops.relu(step("head.bn", x))
        rec("head.relu", x)
    for name in ("head.pool", "head.flatten", "head.fc"):
        x = step(name, x)
    return x


def _walk_convnext_block(s: ConvNeXtSpec, ops: TraceOps, x: Any, prefix: str, attr: tuple,
                         rec: Record) -> Any:
    """dwconv (NCHW), then channels-last: norm, pwconv1, act, pwconv2, layer_scale; back to
    channels-first, drop_path, and the sum with the block's input. Activations inside the
    channels-last part are recorded channels-first, as every other."""
    def step(name: str, v: Any) -> Any:
        v = ops.call(ops.layer(attr + (name,)), v)
        rec(f"{prefix}.{name}", ops.channels_first(v))
        return v

    y = ops.call(ops.layer(attr + ("dwconv",)), x)
    rec(f"{prefix}.dwconv", y)
    y = ops.channels_last(y)
    for name in ("norm", "pwconv1", "act", "pwconv2") + (("layer_scale",) if s.layer_scale else ()):
        y = step(name, y)
    y = ops.call(ops.layer(attr + ("drop_path",)), ops.channels_first(y))
    y = ops.add(x, y)
    rec(prefix, y)
    return y


def _walk_convnext(s: ConvNeXtSpec, ops: TraceOps, x: Any, rec: Record) -> Any:
    def step(name: str, attr: tuple, v: Any) -> Any:
        v = ops.call(ops.layer(attr), v)
        rec(name, v)
        return v

    x = step("stem.conv", ("stem", "conv"), x)
    x = step("stem.norm", ("stem", "norm"), x)
    for i, depth in enumerate(s.depths):
        if i:
            for part in ("norm", "conv"):
                x = step(f"stages.{i}.downsample.{part}", ("stages", i, "downsample", part), x)
        for j in range(depth):
            x = _walk_convnext_block(s, ops, x, f"stages.{i}.blocks.{j}", ("stages", i, "blocks", j),
                                     rec)
    for part in ("pool", "flatten", "norm", "fc"):
        x = step(f"head.{part}", ("head", part), x)
    return x


def walk(unit: Unit, ops: TraceOps, x: Any, rec: Record) -> Any:
    """Run ``x`` through ``unit`` with ``ops``, calling ``rec(name, tensor)`` after each layer."""
    if isinstance(unit, ResNetSpec):
        return _walk_resnet(unit, ops, x, rec)
    if isinstance(unit, ConvNeXtSpec):
        return _walk_convnext(unit, ops, x, rec)
    if isinstance(unit, ResnetBlockSpec):
        return _walk_block(unit, ops, x, "", (), rec)
    if isinstance(unit, (ResidualSpec, BottleneckSpec)):
        return _walk_unit(unit, ops, x, "out", (), _rename_root(rec))
    raise TypeError(f"not a unit spec: {type(unit).__name__}")


def _rename_root(rec: Record) -> Record:
    # A lone block has no path of its own: its sub-layers are "conv1", ..., its output "out".
    return lambda name, v: rec(name[4:] if name.startswith("out.") else name, v)


def trace(unit: Unit, ops: TraceOps, x: Any, dtypes: Optional[dict[str, str]] = None
          ) -> dict[str, np.ndarray]:
    """Ordered ``{activation name: NCHW numpy array}`` for one input; ``dtypes``, where given,
    gets each activation's dtype as the framework computed it."""
    acts: dict[str, np.ndarray] = {}

    def record(name: str, v: Any) -> None:
        acts[name] = ops.to_numpy(v)
        if dtypes is not None:
            dtypes[name] = ops.dtype(v)
    walk(unit, ops, x, record)
    return acts


class _NameOnly:
    def from_numpy(self, x: np.ndarray) -> None:
        return None

    def layer(self, attr: tuple) -> None:
        return None

    def call(self, layer: Any, x: Any) -> None:
        return None

    def relu(self, x: Any) -> None:
        return None

    def add(self, a: Any, b: Any) -> None:
        return None

    def to_numpy(self, x: Any) -> Optional[np.ndarray]:
        return None

    def dtype(self, x: Any) -> str:
        return ""

    def channels_last(self, x: Any) -> None:
        return None

    def channels_first(self, x: Any) -> None:
        return None


def activation_names(unit: Unit) -> list[str]:
    """The names :func:`trace` records, in order (the same in every backend)."""
    names: list[str] = []
    walk(unit, _NameOnly(), None, lambda name, v: names.append(name))
    return names
