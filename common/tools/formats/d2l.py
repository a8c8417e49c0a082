"""The d2l ResNet chapter's own checkpoints, read and written in each framework's layout.

A learner trains the chapter's code as printed and saves it the way the framework saves:

* PyTorch, ``torch.save(net.state_dict())`` of the chapter's ``nn.Sequential``: ``0.0`` is the
  stem conv, ``0.1`` its BatchNorm, ``{s+1}.{b}.conv1`` the ``b``-th Residual of stage ``s`` (b2
  is stage 0), ``{S+3}`` the Linear after the pool and the flatten (``7`` for four stages);
* Gluon, ``net.save_parameters`` of the chapter's ``nn.Sequential`` (both the legacy ``nd`` and
  the ``np``/``npx`` editions: the same names, NDArray format v2 and v3): ``0`` conv, ``1``
  BatchNorm, ``{s+4}.{b}.conv1``, ``{S+5}`` the Dense;
* Keras, ``net.save_weights`` of the chapter's Sequential with its ``Residual`` and
  ``ResnetBlock`` classes. Keras 3 names weights by object structure: ``layers/conv2d/vars/0``,
  ``layers/resnet_block_1/residual_layers/residual/conv3/vars/1``, ``layers/dense/vars/0``,
  each class numbered ``_N`` within its container from the second one on.

A Residual saved alone has the bare names ``conv1``, ``bn1`` ... (Keras: ``conv1/vars/0``), and a
``resnet_block`` saved alone (PyTorch ``nn.Sequential(*blk)``, Gluon's ``blk``, Keras a
Sequential around one ``ResnetBlock``) numbers its Residuals.

The spec is read off the file: the stem conv gives ``in_channels``, the classifier
``num_classes``, each stage its width and number of Residuals. A Residual with a 1x1 conv is
taken at stride 2, as the chapter's ``resnet_block`` builds it (no weights file stores a stride;
``--spec`` says otherwise). What the file cannot say, the framework's chapter code fixes: its
Keras code computes another function than its PyTorch and Gluon code (``padding='same'`` and
Keras's BatchNorm defaults, the spec's ``d2l-keras-resnet18``), so a Keras chapter checkpoint
reads as that function, and writing a checkpoint for another framework's chapter code changes the
function (:meth:`D2lFormat.target`; ``convert`` measures it and refuses unless told).

PyTorch and Gluon layouts are the canonical ones, so those files are only renamed; the Keras file
is written by the chapter's own Keras classes (:mod:`common.tools.d2l_reference`) through
``save_weights``, and read by name with the kernels transposed.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from ...core.spec import (
    ResidualSpec,
    ResnetBlockSpec,
    ResNetSpec,
    Unit,
    d2l_keras_resnet18_spec,
    resnet18_spec,
    unit_name,
)
from ...core.state import State, check_tensors, validate_state
from .base import TORCH_PARAM, Format, _canonical, _fits
from .native import GluonParams, KerasWeights, TorchStateDict

_SUBS = "conv1|conv2|conv3|bn1|bn2"  # a Residual's layers, as the chapter names them
Address = tuple[Union[str, int], ...]  # a canonical layer's attribute path (Layer.attr)


class D2lFormat(Format):
    """What the three chapter formats share: names from attribute paths, the spec read off the
    names and shapes, and the chapter's function (:meth:`target`)."""

    carries_spec = spec_inferred = True
    spec_origin = "read off the chapter's layout"
    base: ResNetSpec = resnet18_spec()   # the function this framework's chapter code computes

    def refine(self, tensors: Mapping[str, np.ndarray]) -> Format:
        return self

    # -- names: each framework says three things ----------------------------------------------
    def module(self, attr: Address, stages: int) -> str:
        """The file's name for the layer at ``attr`` (``Layer.attr``) of a unit with ``stages``
        stages (0 for a lone block)."""
        raise NotImplementedError

    def param(self, kind: str, p: str) -> str:
        """The file's name for canonical parameter ``p`` of a layer of ``kind``."""
        return p

    def parse(self, key: str) -> Optional[tuple[Address, str]]:
        """``(attr, canonical parameter)`` of a file key in the chapter's layout, else None.
        ``attr`` is ``("stem", "conv")``, ``("head", "fc")``, ``("stages", s, b, sub)`` (a lone
        ``resnet_block`` is stage 0 of a net without stem) or ``(sub,)`` (a lone Residual)."""
        raise NotImplementedError

    def skip(self, key: str) -> bool:
        """Whether ``key`` is no weight (PyTorch's BatchNorm counters, a Keras optimizer)."""
        return False

    def join(self, module: str, param: str) -> str:
        return f"{module}.{param}" if module else param

    def file_shape(self, p: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape

    def canonical(self, p: str, a: np.ndarray) -> np.ndarray:
        return a

    def extras(self, unit: Unit) -> dict[str, tuple[int, ...]]:
        """Keys the framework adds that are no canonical state (PyTorch's BatchNorm counters)."""
        return {}

    # -- the layout of a unit -----------------------------------------------------------------
    def layout(self, unit: Unit) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Canonical parameter name -> (file key, shape in the file), in the chapter's order."""
        stages = len(unit.stage_blocks) if isinstance(unit, ResNetSpec) else 0
        out = {}
        for layer in _chapter_order(unit):
            for p, shape in layer.shapes.items():
                key = self.join(self.module(layer.attr, stages), self.param(layer.kind, p))
                out[f"{layer.name}.{p}"] = (key, self.file_shape(p, shape))
        return out

    def expected(self, spec: Unit) -> dict[str, tuple[int, ...]]:
        """File key -> shape of every weight ``spec`` has in this layout."""
        self.check_expressible(spec)
        return dict(self.layout(spec).values())

    def fits(self, tensors: Mapping[str, np.ndarray], spec: Unit) -> bool:
        try:
            expected = self.expected(spec)
        except ValueError:
            return False
        return {k: tuple(v.shape) for k, v in tensors.items() if not self.skip(k)} == expected

    # -- the spec, read off names and shapes --------------------------------------------------
    def spec(self, path: Path) -> Unit:
        tensors = self.tensors(path)
        unit = self.infer(tensors)
        if unit is None:
            raise ValueError(f"{path}: not in the layout of d2l's {self.family[4:]} ResNet code "
                             f"({self.why_not(tensors)})")
        return unit

    def why_not(self, tensors: Mapping[str, np.ndarray]) -> str:
        """Why :meth:`infer` found no unit: the keys no chapter layout has, or the keys and
        shapes missing or wrong for the unit the weights make."""
        keys = [k for k in tensors if not self.skip(k)]
        foreign = [k for k in keys if self.parse(k) is None]
        if foreign:
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            return f"names no chapter code gives: {', '.join(foreign[:5])}{more}"
        weights = {attr: tuple(self.canonical(p, tensors[k]).shape) for k in keys
                   for attr, p in [self.parse(k)] if p == "weight"}
        try:
            unit = self._unit(weights)
            if unit is None:
                return "its Residuals make no stages numbered from the first"
            check_tensors({k: tensors[k] for k in keys}, self.expected(unit),
                          allow_nonfinite=True, what=f"as the chapter's {unit_name(unit)}")
        except (KeyError, IndexError):
            return "it lacks a stem conv, a classifier or a Residual's conv1"
        except ValueError as e:
            return str(e)
        return "its layout is the chapter's"  # not reached: infer() would have found it

    def infer(self, tensors: Mapping[str, np.ndarray]) -> Optional[Unit]:
        """The unit whose chapter layout ``tensors`` hold exactly, or None."""
        shapes: dict[Address, tuple[int, ...]] = {}   # the weight of each conv and dense
        for key, a in tensors.items():
            if self.skip(key):
                continue
            parsed = self.parse(key)
            if parsed is None:
                return None
            attr, p = parsed
            if p == "weight":
                shapes[attr] = tuple(self.canonical(p, a).shape)
        try:
            unit = self._unit(shapes)
        except (KeyError, ValueError, IndexError):
            return None
        return unit if unit is not None and self.fits(tensors, unit) else None

    def _unit(self, w: Mapping[Address, tuple[int, ...]]) -> Optional[Unit]:
        """The unit these conv and dense weights (canonical shapes) make in the chapter's code."""
        options = {k: getattr(self.base, k) for k in ("padding", "bn_eps", "bn_momentum")}
        if list(w) == [a for a in w if len(a) == 1]:  # a Residual alone
            shortcut = ("conv3",) in w
            return ResidualSpec(**options, input_channels=w["conv1",][1],
                                num_channels=w["conv1",][0], use_1x1conv=shortcut,
                                strides=2 if shortcut else 1)
        blocks: dict[int, int] = {}
        for a in w:
            if a[0] == "stages":
                blocks[a[1]] = max(blocks.get(a[1], 0), a[2] + 1)
        stages = sorted(blocks)
        if stages != list(range(len(stages))) or not stages:
            return None
        if ("stem", "conv") not in w and ("head", "fc") not in w:  # a resnet_block alone
            if stages != [0]:
                return None
            first = w["stages", 0, 0, "conv1"]
            return ResnetBlockSpec(**options, input_channels=first[1], num_channels=first[0],
                                   num_residuals=blocks[0],
                                   first_block=("stages", 0, 0, "conv3") not in w)
        stem, fc = w["stem", "conv"], w["head", "fc"]
        spec = dataclasses.replace(
            self.base, in_channels=stem[1], num_classes=fc[0], stem_channels=stem[0],
            stem_kernel=stem[2], stage_blocks=tuple(blocks[s] for s in stages),
            stage_channels=tuple(w["stages", s, 0, "conv1"][0] for s in stages),
            downsample_in_first_stage=("stages", 0, 0, "conv3") in w)
        named = dataclasses.replace(self.base, in_channels=stem[1], num_classes=fc[0])
        return spec if spec == named else dataclasses.replace(spec, name=f"{self.base.name}-like")

    # -- the function -------------------------------------------------------------------------
    def check_expressible(self, spec: Unit) -> None:
        """``ValueError`` naming what the chapter's code cannot build: it has Residuals only,
        a bias on every conv, bare 1x1 shortcuts, a pooled conv/2 stem."""
        wrong = []
        if not isinstance(spec, (ResNetSpec, ResnetBlockSpec, ResidualSpec)):
            wrong.append(f"a {type(spec).__name__} (the chapter has Residuals)")
        elif getattr(spec, "block", "basic") != "basic":
            wrong.append(f"block={spec.block!r} (the chapter has Residuals)")
        if spec.conv_bias is not True:
            wrong.append(f"conv_bias={spec.conv_bias!r} (every conv of the chapter has a bias)")
        if getattr(spec, "shortcut_bn", False):
            wrong.append("shortcut_bn=True (the chapter's 1x1 shortcut has no BatchNorm)")
        if spec.preact:
            wrong.append("preact=True (the chapter's Residual is post-activation)")
        if isinstance(spec, ResNetSpec) and (spec.stem_stride, spec.stem_pool) != (2, True):
            wrong.append(f"stem_stride={spec.stem_stride}, stem_pool={spec.stem_pool} (the "
                         "chapter's stem is a stride-2 conv and a max pool)")
        if wrong:
            raise ValueError(f"d2l's {self.family[4:]} chapter code cannot hold spec "
                             f"{unit_name(spec)!r}: " + "; ".join(wrong))

    def target(self, spec: Unit) -> Unit:
        """``spec`` as this framework's chapter code computes it: its padding, BatchNorm eps
        and momentum. Equal to ``spec`` when writing changes no function."""
        self.check_expressible(spec)
        return dataclasses.replace(spec, padding=self.base.padding, bn_eps=self.base.bn_eps,
                                   bn_momentum=self.base.bn_momentum)

    # -- reading ------------------------------------------------------------------------------
    def read(self, path: Path, spec: Unit, *, allow_nonfinite: bool = False,
             tensors: Optional[Mapping[str, np.ndarray]] = None) -> State:
        raw = self.tensors(path) if tensors is None else tensors
        try:
            self.check_expressible(spec)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        layout, extras = self.layout(spec), self.extras(spec)
        checked = _fits(path, {k: v for k, v in raw.items() if k in extras or not self.skip(k)},
                        dict(layout.values()) | extras, spec, self.description,
                        allow_nonfinite, optional=extras)
        state = {name: self.canonical(name.rsplit(".", 1)[1], checked[key])
                 for name, (key, _) in layout.items()}
        return _canonical(path, state, spec, allow_nonfinite)


def _chapter_order(unit: Unit) -> list[Any]:
    """The unit's layers in the order the chapter registers them: a Residual makes conv1,
    conv2, conv3, then bn1 and bn2 (the suite's table pairs each conv with its BatchNorm)."""
    rank = {"conv1": 0, "conv2": 1, "shortcut": 2, "bn1": 3, "bn2": 4}
    groups: dict[str, list[Any]] = {}
    for layer in unit.layers():
        head, _, sub = layer.name.rpartition(".")
        groups.setdefault(head if sub in rank else layer.name, []).append(layer)
    return [layer for group in groups.values()
            for layer in sorted(group, key=lambda la: rank.get(la.name.rpartition(".")[2], -1))]


class _Sequential(D2lFormat):
    """The chapter's PyTorch and Gluon nets: one ``nn.Sequential`` whose numbered children hold
    the stem's layers (``STEM``), the stages from child ``FIRST_STAGE`` on, and the classifier
    as child ``stages + AFTER_STAGES`` (the pooling and flattening children come between)."""

    STEM: dict[str, str] = {}
    FIRST_STAGE = AFTER_STAGES = 0
    PARAMS = ""      # the file's parameter names, a regex alternation

    def module(self, attr: Address, stages: int) -> str:
        if attr[0] == "stem":
            return self.STEM[attr[1]]
        if attr[0] == "head":
            return str(stages + self.AFTER_STAGES)
        if attr[0] == "stages":
            return ".".join(map(str, (attr[1] + self.FIRST_STAGE, *attr[2:])))
        return ".".join(map(str, attr))

    def canonical_param(self, kind: str, p: str) -> str:
        """The canonical name of the file's parameter ``p`` of a layer of ``kind``."""
        return p

    def parse(self, key: str) -> Optional[tuple[Address, str]]:
        module, _, p = key.rpartition(".")
        if not re.fullmatch(self.PARAMS, p):
            return None
        m = re.fullmatch(rf"(?:(?:(?P<stage>\d+)\.)?(?P<block>\d+)\.)?(?P<sub>{_SUBS})", module)
        if m:
            p = self.canonical_param("bn" if m["sub"].startswith("bn") else "conv", p)
            if m["block"] is None:
                return (m["sub"],), p
            stage = 0 if m["stage"] is None else int(m["stage"]) - self.FIRST_STAGE
            return ("stages", stage, int(m["block"]), m["sub"]), p
        for kind, path in self.STEM.items():
            if module == path:
                return ("stem", kind), self.canonical_param(kind, p)
        if module.isdigit() and p in ("weight", "bias"):
            return ("head", "fc"), p
        return None


class D2lTorch(_Sequential, TorchStateDict):
    """``torch.save(net.state_dict())`` of the chapter's PyTorch ``nn.Sequential``."""

    name = family = "d2l-torch"
    description = "the d2l chapter's PyTorch state_dict (nn.Sequential: 0.0.weight, 1.0.conv1.weight ...)"
    STEM, FIRST_STAGE, AFTER_STAGES = {"conv": "0.0", "bn": "0.1"}, 1, 3   # b1 is a Sequential
    PARAMS = "weight|bias|running_mean|running_var"

    def param(self, kind: str, p: str) -> str:
        return TORCH_PARAM.get(p, p) if kind == "bn" else p

    def canonical_param(self, kind: str, p: str) -> str:
        return {"weight": "gamma", "bias": "beta"}.get(p, p) if kind == "bn" else p

    def skip(self, key: str) -> bool:
        return key.endswith(".num_batches_tracked")

    def extras(self, unit: Unit) -> dict[str, tuple[int, ...]]:
        stages = len(unit.stage_blocks) if isinstance(unit, ResNetSpec) else 0
        return {f"{self.module(layer.attr, stages)}.num_batches_tracked": ()
                for layer in unit.layers() if layer.kind == "bn"}

    def write(self, path: Path, state: State, spec: Unit) -> None:
        """The chapter's keys in its order; ``num_batches_tracked`` is not canonical state, so
        it is written as 0, as in a freshly built chapter model."""
        import torch
        checked = validate_state(state, spec, allow_nonfinite=True)
        out: dict[str, Any] = {}
        stages = len(spec.stage_blocks) if isinstance(spec, ResNetSpec) else 0
        for layer in _chapter_order(spec):
            module = self.module(layer.attr, stages)
            for p in layer.shapes:
                out[f"{module}.{self.param(layer.kind, p)}"] = torch.from_numpy(
                    checked[f"{layer.name}.{p}"])
            if layer.kind == "bn":
                out[f"{module}.num_batches_tracked"] = torch.tensor(0)
        torch.save(out, path)


class D2lGluon(_Sequential, GluonParams):
    """``net.save_parameters`` of the chapter's Gluon ``nn.Sequential``, either edition."""

    name = family = "d2l-mxnet"
    description = "the d2l chapter's Gluon parameters (nn.Sequential: 0.weight, 4.0.conv1.weight ...)"
    STEM, FIRST_STAGE, AFTER_STAGES = {"conv": "0", "bn": "1"}, 4, 5  # conv, bn, relu, pool
    PARAMS = "weight|bias|gamma|beta|running_mean|running_var"

    def write(self, path: Path, state: State, spec: Unit) -> None:
        """``mx.nd.save`` of the chapter's names in its order, NDArray format v2: what the
        legacy edition's ``save_parameters`` writes, and what both editions load (the ``np``
        edition reads v2; the legacy one refuses the ``np`` edition's v3)."""
        from .native import _mxnet
        mx = _mxnet()
        checked = validate_state(state, spec, allow_nonfinite=True)
        mx.nd.save(str(path), {key: mx.nd.array(checked[name], dtype="float32")
                               for name, (key, _) in self.layout(spec).items()})


class D2lKeras(D2lFormat, KerasWeights):
    """``net.save_weights`` of the chapter's Keras Sequential (``Residual``, ``ResnetBlock``)."""

    name = family = "d2l-tf"
    description = "the d2l chapter's Keras weights (save_weights: layers/resnet_block/...)"
    base = d2l_keras_resnet18_spec()
    _VARS = {"conv": ("weight", "bias"), "dense": ("weight", "bias"),
             "bn": ("gamma", "beta", "running_mean", "running_var")}
    _BLOCK = re.compile(rf"^(?:layers/resnet_block(?:_(?P<stage>\d+))?/residual_layers/"
                        rf"residual(?:_(?P<block>\d+))?/)?(?P<sub>{_SUBS})/vars/(?P<i>\d+)$")
    _TOP = re.compile(r"^layers/(?P<cls>conv2d|batch_normalization|dense)/vars/(?P<i>\d+)$")
    _TOP_ATTR = {"conv2d": (("stem", "conv"), "conv"), "batch_normalization": (("stem", "bn"), "bn"),
                 "dense": (("head", "fc"), "dense")}

    def module(self, attr: Address, stages: int) -> str:
        if attr[0] in ("stem", "head"):
            return next(f"layers/{cls}" for cls, (a, _) in self._TOP_ATTR.items() if a == attr)
        if attr[0] == "stages":
            s, b, sub = attr[1:]
            return f"layers/resnet_block{_n(s)}/residual_layers/residual{_n(b)}/{sub}"
        if len(attr) == 2:  # a lone resnet_block: a Sequential around one ResnetBlock
            return f"layers/resnet_block/residual_layers/residual{_n(attr[0])}/{attr[1]}"
        return str(attr[0])

    def param(self, kind: str, p: str) -> str:
        return f"vars/{self._VARS[kind].index(p)}"

    def join(self, module: str, param: str) -> str:
        return f"{module}/{param}"

    def skip(self, key: str) -> bool:
        return key.startswith("optimizer/")

    def file_shape(self, p: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        if p != "weight":
            return shape
        return (*shape[2:], shape[1], shape[0]) if len(shape) == 4 else shape[::-1]

    def canonical(self, p: str, a: np.ndarray) -> np.ndarray:
        """Keras's (kh, kw, in, out) kernels and (in, out) dense weights, canonical."""
        if p != "weight":
            return a
        return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T

    def parse(self, key: str) -> Optional[tuple[Address, str]]:
        m = self._BLOCK.match(key)
        if m:
            names = self._VARS["bn" if m["sub"].startswith("bn") else "conv"]
            if int(m["i"]) >= len(names):
                return None
            p = names[int(m["i"])]
            if not key.startswith("layers/"):
                return (m["sub"],), p
            return ("stages", int(m["stage"] or 0), int(m["block"] or 0), m["sub"]), p
        m = self._TOP.match(key)
        if m is None:
            return None
        attr, kind = self._TOP_ATTR[m["cls"]]
        return (attr, self._VARS[kind][int(m["i"])]) if int(m["i"]) < len(self._VARS[kind]) else None

    def write(self, path: Path, state: State, spec: Unit) -> None:
        """The chapter's own Keras classes, built for ``spec``, loaded, ``save_weights``."""
        from ..d2l_reference import keras_chapter_model
        from ..registry import get_backend
        be = get_backend("tf")
        model, paths = keras_chapter_model(spec)
        be.load_state(be.register(paths, spec), state, allow_nonfinite=True)
        model.save_weights(str(path))


def _n(i: int) -> str:
    """Keras's numbering of a class's objects within a container: none, then ``_1``, ``_2``."""
    return f"_{i}" if i else ""


D2L_TORCH = D2lTorch()
D2L_MXNET = D2lGluon()
D2L_TF = D2lKeras()
D2L_FORMATS = (D2L_TORCH, D2L_TF, D2L_MXNET)


# the framework format a chapter checkpoint is first detected as (by its file name)
_BY_NATIVE = {"torch": D2L_TORCH, "torchvision": D2L_TORCH, "keras-weights": D2L_TF,
              "gluon-params": D2L_MXNET}


def d2l_for(fmt: Format, tensors: Mapping[str, np.ndarray]) -> Optional[Format]:
    """The chapter format of a file detected as the framework format ``fmt``, if its names
    and shapes are exactly a chapter layout."""
    d2l = _BY_NATIVE.get(fmt.name)
    return d2l if d2l is not None and d2l.infer(tensors) is not None else None


__all__ = ["D2L_FORMATS", "D2L_MXNET", "D2L_TF", "D2L_TORCH", "D2lFormat", "d2l_for"]
