"""ConvNeXt (Liu et al. 2022) in PyTorch, built from a :class:`common.ConvNeXtSpec`.

The block is the one torchvision and Hugging Face ship: a depthwise 7x7 conv on NCHW, then,
channels-last, LayerNorm, Linear to 4x, exact GELU, Linear back and layer scale; stochastic
depth on the branch; the residual sum. ``resnet_tf.convnext`` and ``resnet_mxnet.convnext`` are
the same module in Keras and Gluon, name for name. Every eps and the GELU form are explicit.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from common.core.spec import ConvNeXtSpec, convnext_tiny_spec


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (torchvision's ``LayerNorm2d``): the stem's
    and the downsampling layers' norm. Parameters are ``nn.LayerNorm``'s ``weight`` and ``bias``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def layer_norm(num_channels: int, *, ln_eps: float = 1e-6, channels_first: bool = False
               ) -> nn.LayerNorm:
    """A LayerNorm over channels alone: of channels-last input (a block's), or, with
    ``channels_first``, of NCHW input (:class:`LayerNorm2d`). PyTorch's default eps is 1e-5;
    ConvNeXt's is 1e-6, so it is always passed."""
    return (LayerNorm2d if channels_first else nn.LayerNorm)(num_channels, eps=ln_eps)


def gelu_layer(form: str = "exact") -> nn.GELU:
    """GELU, ``"exact"`` (the error function; ConvNeXt's) or ``"tanh"`` (the approximation)."""
    return nn.GELU(approximate="tanh" if form == "tanh" else "none")


class LayerScale(nn.Module):
    """A learned per-channel scale ``gamma`` (channels-last input), set to ``init_value``."""

    def __init__(self, num_channels: int, init_value: float = 1e-6) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((num_channels,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016), per sample: in training, zero a sample's whole
    branch with probability ``rate`` and scale the kept ones by ``1 / (1 - rate)``; the
    identity in eval mode or at rate 0."""

    def __init__(self, rate: float = 0.0) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype,
                           device=x.device).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class ConvNeXtBlock(nn.Module):
    """One ConvNeXt block of width ``dim``: ``dwconv`` (depthwise, padding ``kernel_size // 2``),
    ``norm``, ``pwconv1`` (to ``mlp_ratio * dim``), ``act``, ``pwconv2``, ``layer_scale`` (None
    when ``layer_scale_init`` is 0), ``drop_path`` at rate ``drop_path``, plus the input."""

    def __init__(self, dim: int, drop_path: float = 0.0, *, kernel_size: int = 7,
                 mlp_ratio: int = 4, ln_eps: float = 1e-6, layer_scale_init: float = 1e-6,
                 gelu: str = "exact") -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = layer_norm(dim, ln_eps=ln_eps)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = gelu_layer(gelu)
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.layer_scale: Optional[LayerScale] = (
            LayerScale(dim, layer_scale_init) if layer_scale_init > 0 else None)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC: LayerNorm and Linear act on channels
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        if self.layer_scale is not None:
            y = self.layer_scale(y)
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class Downsample(nn.Module):
    """Between stages: ``norm`` (over channels) and ``conv``, 2x2 at stride 2."""

    def __init__(self, input_channels: int, num_channels: int, *, ln_eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = layer_norm(input_channels, ln_eps=ln_eps, channels_first=True)
        self.conv = nn.Conv2d(input_channels, num_channels, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x))


class ConvNeXtStage(nn.Module):
    """One stage: ``downsample`` (None for the first stage) and ``blocks``, one per rate in
    ``drop_path_rates``; ``stage.blocks[j]`` is the j-th block."""

    def __init__(self, input_channels: int, num_channels: int, drop_path_rates: Sequence[float],
                 *, downsample: bool = True, **block_options: Any) -> None:
        super().__init__()
        self.downsample: Optional[Downsample] = (
            Downsample(input_channels, num_channels, ln_eps=block_options.get("ln_eps", 1e-6))
            if downsample else None)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(num_channels, rate, **block_options)
                                      for rate in drop_path_rates))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x if self.downsample is None else self.downsample(x))


class PatchifyStem(nn.Module):
    """``conv``, ``patch_size`` x ``patch_size`` at stride ``patch_size``, and ``norm``."""

    def __init__(self, input_channels: int, num_channels: int, patch_size: int = 4, *,
                 ln_eps: float = 1e-6) -> None:
        super().__init__()
        self.conv = nn.Conv2d(input_channels, num_channels, patch_size, stride=patch_size)
        self.norm = layer_norm(num_channels, ln_eps=ln_eps, channels_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class ConvNeXtHead(nn.Module):
    """Global average ``pool`` (kept 4-D), ``flatten``, ``norm`` (eps ``head_ln_eps``), ``fc``."""

    def __init__(self, input_channels: int, num_classes: int, *, head_ln_eps: float = 1e-6) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.norm = layer_norm(input_channels, ln_eps=head_ln_eps)
        self.fc = nn.Linear(input_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.flatten(self.pool(x))))


class ConvNeXt(nn.Module):
    """ConvNeXt: ``stem``, ``stages`` (``stages[i].downsample``, ``stages[i].blocks[j]``),
    ``head``; attribute names are the canonical layer names (``stages.1.blocks.0.pwconv1``)."""

    def __init__(self, spec: ConvNeXtSpec) -> None:
        super().__init__()
        self.spec = spec
        w = spec.widths
        self.stem = PatchifyStem(spec.in_channels, w[0], spec.patch_size, ln_eps=spec.ln_eps)
        self.stages = nn.Sequential(*(
            ConvNeXtStage(w[max(i - 1, 0)], c, rates, downsample=i > 0, **spec.block_options())
            for i, (c, rates) in enumerate(zip(w, spec.drop_path_rates()))))
        self.head = ConvNeXtHead(w[-1], spec.num_classes, head_ln_eps=spec.head_ln_eps)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def convnext_from_spec(spec: ConvNeXtSpec) -> ConvNeXt:
    """The network for ``spec``."""
    return ConvNeXt(spec)


def convnext_tiny(**options: Any) -> ConvNeXt:
    """torchvision's ConvNeXt-T (3 input channels, 1000 classes by default)."""
    return ConvNeXt(convnext_tiny_spec(**options))
