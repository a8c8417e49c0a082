"""ConvNeXt (Liu et al. 2022) in MXNet Gluon, built from a :class:`common.ConvNeXtSpec`.

The twin of ``resnet_torch.convnext``, name for name. Gluon's ``LayerNorm`` takes the axis it
normalises, so the stem's and the downsampling layers' norm act on NCHW channels (``axis=1``)
with no permute; a block, like PyTorch's, moves to channels-last for its LayerNorm and its
``Dense(flatten=False)`` layers. Gluon's LayerNorm defaults to eps 1e-5; ConvNeXt's is 1e-6,
always passed. ``in_channels`` (keyword-only, as in ``resnet_mxnet.blocks``) lets
``initialize()`` allocate every parameter at once; the blocks use ``hybrid_forward(F, x)`` and
hybridize.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from common.core.spec import ConvNeXtSpec, convnext_tiny_spec

from ._compat import gluon, mx, nn

_TO_NHWC, _TO_NCHW = (0, 2, 3, 1), (0, 3, 1, 2)
_SQRT_HALF, _SQRT_2_OVER_PI = math.sqrt(0.5), math.sqrt(2.0 / math.pi)


def layer_norm(num_channels: int = 0, *, ln_eps: float = 1e-6, channels_first: bool = False
               ) -> nn.LayerNorm:
    """A LayerNorm over channels alone: the last axis (a block's, channels-last), or, with
    ``channels_first``, axis 1 of NCHW input. ``num_channels`` 0 defers the count to Gluon."""
    return nn.LayerNorm(axis=1 if channels_first else -1, epsilon=ln_eps,
                        in_channels=num_channels)


class GELU(gluon.HybridBlock):
    """GELU, exact (``x * Phi(x)`` with the error function; ConvNeXt's) or, ``approximate``,
    the tanh approximation (MXNet 1.9's own ``GELU`` is the exact form only). Written out with
    ``F.erf``: MXNet's fused GELU kernel is 6e-7 off the exact function in float64, while
    ``erf`` is exact; in float32 the two agree to rounding (README: GELU)."""

    def __init__(self, approximate: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.approximate = approximate

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        if self.approximate:
            return 0.5 * x * (1.0 + F.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))
        return 0.5 * x * (1.0 + F.erf(x * _SQRT_HALF))


def gelu_layer(form: str = "exact") -> GELU:
    """GELU, ``"exact"`` (ConvNeXt's) or ``"tanh"`` (the approximation)."""
    return GELU(approximate=form == "tanh")


class LayerScale(gluon.HybridBlock):
    """A learned per-channel scale ``gamma`` (channels-last input), set to ``init_value``."""

    def __init__(self, num_channels: int, init_value: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.gamma = self.params.get("gamma", shape=(num_channels,),
                                         init=mx.init.Constant(init_value))

    def hybrid_forward(self, F: Any, x: Any, gamma: Any) -> Any:
        return F.broadcast_mul(x, F.reshape(gamma, shape=(1, 1, 1, -1)))


class DropPath(gluon.HybridBlock):
    """Stochastic depth, per sample: Gluon's ``Dropout`` with its mask shared over every axis
    but the batch's (zero a sample's branch with probability ``rate``, scale the kept ones by
    ``1 / (1 - rate)``); the identity outside training, as ``Dropout`` is."""

    def __init__(self, rate: float = 0.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = rate

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return F.Dropout(x, p=self.rate, axes=(1, 2, 3)) if self.rate > 0 else x


class ConvNeXtBlock(gluon.HybridBlock):
    """One ConvNeXt block of width ``dim``: ``dwconv`` (depthwise, padding ``kernel_size // 2``),
    ``norm``, ``pwconv1`` (to ``mlp_ratio * dim``), ``act``, ``pwconv2``, ``layer_scale`` (None
    when ``layer_scale_init`` is 0), ``drop_path`` at rate ``drop_path``, plus the input."""

    def __init__(self, dim: int, drop_path: float = 0.0, *, kernel_size: int = 7,
                 mlp_ratio: int = 4, ln_eps: float = 1e-6, layer_scale_init: float = 1e-6,
                 gelu: str = "exact", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.dwconv = nn.Conv2D(dim, kernel_size, padding=kernel_size // 2, groups=dim,
                                    in_channels=dim)
            self.norm = layer_norm(dim, ln_eps=ln_eps)
            self.pwconv1 = nn.Dense(mlp_ratio * dim, flatten=False, in_units=dim)
            self.act = gelu_layer(gelu)
            self.pwconv2 = nn.Dense(dim, flatten=False, in_units=mlp_ratio * dim)
            self.layer_scale: Optional[LayerScale] = (
                LayerScale(dim, layer_scale_init) if layer_scale_init > 0 else None)
            self.drop_path = DropPath(drop_path)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        y = F.transpose(self.dwconv(x), axes=_TO_NHWC)  # LayerNorm and Dense act on channels
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        if self.layer_scale is not None:
            y = self.layer_scale(y)
        return x + self.drop_path(F.transpose(y, axes=_TO_NCHW))


class Downsample(gluon.HybridBlock):
    """Between stages: ``norm`` (over channels) and ``conv``, 2x2 at stride 2."""

    def __init__(self, num_channels: int, *, in_channels: int = 0, ln_eps: float = 1e-6,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.norm = layer_norm(in_channels, ln_eps=ln_eps, channels_first=True)
            self.conv = nn.Conv2D(num_channels, 2, strides=2, in_channels=in_channels)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.conv(self.norm(x))


class ConvNeXtStage(gluon.HybridBlock):
    """One stage: ``downsample`` (None for the first stage) and ``blocks``, one per rate in
    ``drop_path_rates``; ``stage.blocks[j]`` is the j-th block."""

    def __init__(self, num_channels: int, drop_path_rates: Sequence[float], *,
                 in_channels: int = 0, downsample: bool = True, **options: Any) -> None:
        block_options = {k: options.pop(k) for k in
                         ("kernel_size", "mlp_ratio", "ln_eps", "layer_scale_init", "gelu")
                         if k in options}
        super().__init__(**options)
        with self.name_scope():
            self.downsample: Optional[Downsample] = (
                Downsample(num_channels, in_channels=in_channels,
                           ln_eps=block_options.get("ln_eps", 1e-6)) if downsample else None)
            self.blocks = nn.HybridSequential()
            with self.blocks.name_scope():
                for rate in drop_path_rates:
                    self.blocks.add(ConvNeXtBlock(num_channels, rate, **block_options))

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.blocks(x if self.downsample is None else self.downsample(x))


class PatchifyStem(gluon.HybridBlock):
    """``conv``, ``patch_size`` x ``patch_size`` at stride ``patch_size``, and ``norm``."""

    def __init__(self, num_channels: int, patch_size: int = 4, *, in_channels: int = 0,
                 ln_eps: float = 1e-6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.conv = nn.Conv2D(num_channels, patch_size, strides=patch_size,
                                  in_channels=in_channels)
            self.norm = layer_norm(num_channels, ln_eps=ln_eps, channels_first=True)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.norm(self.conv(x))


class ConvNeXtHead(gluon.HybridBlock):
    """Global average ``pool``, ``flatten``, ``norm`` (eps ``head_ln_eps``), ``fc``."""

    def __init__(self, num_classes: int, *, in_channels: int = 0, head_ln_eps: float = 1e-6,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with self.name_scope():
            self.pool = nn.GlobalAvgPool2D()
            self.flatten = nn.Flatten()
            self.norm = layer_norm(in_channels, ln_eps=head_ln_eps)
            self.fc = nn.Dense(num_classes, in_units=in_channels)

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.fc(self.norm(self.flatten(self.pool(x))))


class ConvNeXt(gluon.HybridBlock):
    """ConvNeXt: ``stem``, ``stages`` (``stages[i].downsample``, ``stages[i].blocks[j]``),
    ``head``, named as the PyTorch twin; every input size is given, so ``initialize()``
    allocates all parameters at once and the model hybridizes as it is."""

    def __init__(self, spec: ConvNeXtSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        w = spec.widths
        with self.name_scope():
            self.stem = PatchifyStem(w[0], spec.patch_size, in_channels=spec.in_channels,
                                     ln_eps=spec.ln_eps)
            self.stages = nn.HybridSequential()
            with self.stages.name_scope():
                for i, (c, rates) in enumerate(zip(w, spec.drop_path_rates())):
                    self.stages.add(ConvNeXtStage(c, rates, in_channels=w[max(i - 1, 0)],
                                                  downsample=i > 0, **spec.block_options()))
            self.head = ConvNeXtHead(spec.num_classes, in_channels=w[-1],
                                     head_ln_eps=spec.head_ln_eps)

    def forward_features(self, x: Any) -> Any:
        return self.stages(self.stem(x))

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.head(self.forward_features(x))


def convnext_from_spec(spec: ConvNeXtSpec) -> ConvNeXt:
    """The network for ``spec``; call ``initialize()`` next."""
    return ConvNeXt(spec)


def convnext_tiny(**options: Any) -> ConvNeXt:
    """torchvision's ConvNeXt-T (3 input channels, 1000 classes by default); call
    ``initialize()`` next."""
    return ConvNeXt(convnext_tiny_spec(**options))
