"""Architecture specs: the single source of truth every framework builds from.

Five units can be built, exported and traced in every backend:

* :class:`ResNetSpec`       -- the whole network: d2l's ResNet-18 by default, and the family
  (ResNet-18 to 152, v1 and v1.5 bottlenecks, ResNeXt, wide) through :data:`ARCHITECTURES`;
* :class:`ResnetBlockSpec`  -- one stage, d2l's ``resnet_block``;
* :class:`ResidualSpec`     -- one d2l ``Residual`` block (two 3x3 convs);
* :class:`BottleneckSpec`   -- one bottleneck block (1x1, grouped 3x3, 1x1), He et al. 2016;
* :class:`ConvNeXtSpec`     -- a whole ConvNeXt (Liu et al. 2022), torchvision's and Hugging Face's.

Each unit lists its parametrised layers (:meth:`layers`): the layer table. A row holds the
canonical name, the attribute path that reaches the layer in *every* framework's model, the
layer kind and the canonical parameter shapes. The framework packages name their attributes
identically (``stem.conv``, ``stages[1][0].conv3``, ``head.fc``), so the table is written once,
here; ``docs/architecture.md`` explains it and lists every name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Union

# BatchNorm momentum is stated once, in PyTorch's convention: the weight of the *new* batch
# statistic in the running average (running = (1 - m) * running + m * batch). Keras and Gluon
# use the weight of the *old* value, 1 - m; each backend maps it.
TORCH_BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class Layer:
    """One parametrised layer: where it lives and what its canonical parameters look like."""

    name: str                      # canonical prefix, e.g. "stages.1.0.shortcut"
    attr: tuple[Union[str, int], ...]  # path through the framework model, e.g. ("stages", 1, 0, "conv3")
    kind: str                      # "conv" | "bn" | "dense"
    shapes: dict[str, tuple[int, ...]] = field(compare=False)  # canonical param name -> shape

    def param_names(self) -> list[str]:
        return [f"{self.name}.{p}" for p in self.shapes]


# The kinds of conv a ResNet has, for ``conv_bias``: the stem's, a block's 3x3s, a bottleneck's
# 1x1s (its first and last conv) and the 1x1 shortcut.
CONV_KINDS = ("stem", "3x3", "1x1", "shortcut")
ConvBias = Union[bool, tuple[str, ...]]

# How a strided conv or max pool pads: "symmetric" is PyTorch's and Gluon's fixed ``k // 2`` on
# every side; "same" is TensorFlow's padding='same', which d2l's Keras chapter uses: at an even
# size and stride 2 the total padding is one less, and the missing row and column are the top and
# left ones (pad_before = total // 2), so the kernel's sampling grid moves by one pixel. At odd
# sizes, and at stride 1, the two agree. A 1x1 conv has no padding in either.
PADDINGS = ("symmetric", "same")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's padding='same' along one axis of ``size``: ``(before, after)``. The output
    is ``ceil(size / stride)``; the total is what that needs, the odd one out goes after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def bias_by_kind(conv_bias: ConvBias) -> dict[str, bool]:
    """Whether each kind of conv (:data:`CONV_KINDS`) has a bias. ``conv_bias`` is True (every
    conv: d2l, keras.applications), False (none: torchvision, Hugging Face) or the kinds that
    have one (GluonCV's v1 bottleneck: ``("1x1",)``)."""
    if isinstance(conv_bias, bool):
        return dict.fromkeys(CONV_KINDS, conv_bias)
    unknown = sorted(set(conv_bias) - set(CONV_KINDS))
    if unknown:
        raise ValueError(f"conv_bias names unknown conv kind(s) {unknown}; choose from "
                         f"{list(CONV_KINDS)}, or pass True or False")
    return {k: k in conv_bias for k in CONV_KINDS}


def bottleneck_strides(stride_at: str, strides: int) -> tuple[int, int]:
    """The strides of a bottleneck's first 1x1 conv and of its 3x3 conv: the block's stride
    sits on the 1x1 (``"1x1"``, v1) or on the 3x3 (``"3x3"``, v1.5)."""
    return (strides, 1) if stride_at == "1x1" else (1, strides)


def _conv(name: str, attr: tuple, cin: int, cout: int, k: int, bias: bool,
          groups: int = 1) -> Layer:
    shapes = {"weight": (cout, cin // groups, k, k)}
    if bias:
        shapes["bias"] = (cout,)
    return Layer(name, attr, "conv", shapes)


def _bn(name: str, attr: tuple, c: int) -> Layer:
    return Layer(name, attr, "bn", {p: (c,) for p in ("gamma", "beta", "running_mean", "running_var")})


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Serial:
    """What every unit spec shares: JSON in the form :func:`spec_from_dict` reads back."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return {"unit": type(self).__name__, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


@dataclass(frozen=True, kw_only=True)
class _Options(_Serial):
    """Choices shared by every ResNet unit (d2l's values by default)."""

    conv_bias: ConvBias = True      # d2l keeps conv biases; torchvision drops them; or per kind
    shortcut_bn: bool = False       # d2l's 1x1 shortcut has no BatchNorm; torchvision's has
    bn_eps: float = 1e-5            # PyTorch's and Gluon's default; Keras defaults to 1e-3
    bn_momentum: float = TORCH_BN_MOMENTUM  # PyTorch convention, see above
    preact: bool = False            # v2: BatchNorm-ReLU-conv blocks (He et al., Identity Mappings)
    padding: str = "symmetric"      # strided convs and the max pool; "same": d2l's Keras code

    def _check_options(self) -> None:
        if not isinstance(self.conv_bias, bool):  # kinds (JSON gives a list): one spelling each
            if isinstance(self.conv_bias, str) or not isinstance(self.conv_bias, (list, tuple)):
                raise ValueError(f"conv_bias must be True, False or a list of conv kinds "
                                 f"{list(CONV_KINDS)}, got {self.conv_bias!r}")
            has = bias_by_kind(tuple(self.conv_bias))
            kinds = tuple(k for k in CONV_KINDS if has[k])
            object.__setattr__(self, "conv_bias", kinds if 0 < len(kinds) < len(CONV_KINDS)
                               else bool(kinds))
        if not 0.0 < self.bn_eps < 1.0:
            raise ValueError(f"bn_eps must be in (0, 1), got {self.bn_eps}")
        if not 0.0 <= self.bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1], got {self.bn_momentum}")
        if self.padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {self.padding!r}")
        if self.preact and self.shortcut_bn:
            raise ValueError("shortcut_bn is for post-activation blocks: a pre-activation "
                             "(preact=True) block's 1x1 shortcut is a bare conv on the "
                             "normalised input")

    def options(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(_Options)}

    def has_bias(self, kind: str) -> bool:
        """Whether convs of ``kind`` (:data:`CONV_KINDS`) have a bias."""
        return bias_by_kind(self.conv_bias)[kind]

    def layer_options(self) -> dict[str, Any]:
        """What a block's constructor takes of the options: all but ``preact`` (which picks
        the block's class), and ``shortcut_bn`` only for post-activation blocks."""
        out = self.options()
        del out["preact"]
        if self.preact:
            del out["shortcut_bn"]
        return out


@dataclass(frozen=True)
class ResidualSpec(_Options):
    """d2l's ``Residual``: two 3x3 convs with BatchNorm, an optional 1x1 conv shortcut.

    With ``preact`` it is the pre-activation block (v2, d2l's exercise): BatchNorm-ReLU-conv
    twice, ``bn1`` on the block's input, the shortcut conv on that normalised input, and no
    ReLU after the sum.
    """

    input_channels: int = 64
    num_channels: int = 64
    use_1x1conv: bool = False
    strides: int = 1

    def __post_init__(self) -> None:
        self._check_options()
        _positive(input_channels=self.input_channels, num_channels=self.num_channels,
                  strides=self.strides)
        if not self.use_1x1conv and (self.strides != 1 or self.input_channels != self.num_channels):
            raise ValueError(
                "a Residual without 1x1 conv must keep the shape: got "
                f"input_channels={self.input_channels}, num_channels={self.num_channels}, "
                f"strides={self.strides}; pass use_1x1conv=True")

    def layers(self, prefix: str = "", attr: tuple = ()) -> list[Layer]:
        b, cin, c = bias_by_kind(self.conv_bias), self.input_channels, self.num_channels
        convs = [_conv(_join(prefix, "conv1"), attr + ("conv1",), cin, c, 3, b["3x3"]),
                 _conv(_join(prefix, "conv2"), attr + ("conv2",), c, c, 3, b["3x3"])]
        # each BatchNorm normalises its conv's output, or (preact) its conv's input
        widths = (cin, c) if self.preact else (c, c)
        bns = [_bn(_join(prefix, f"bn{k}"), attr + (f"bn{k}",), w) for k, w in enumerate(widths, 1)]
        pairs = zip(bns, convs) if self.preact else zip(convs, bns)
        out = [layer for pair in pairs for layer in pair]
        if self.use_1x1conv:
            out.append(_conv(_join(prefix, "shortcut"), attr + ("conv3",), cin, c, 1, b["shortcut"]))
            if self.shortcut_bn:
                out.append(_bn(_join(prefix, "shortcut_bn"), attr + ("bn3",), c))
        return out

    def output_shape(self, shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        n, _, h, w = shape
        return (n, self.num_channels, _conv_out(h, 3, self.strides, 1), _conv_out(w, 3, self.strides, 1))


BLOCKS = ("basic", "bottleneck")
STRIDE_AT = ("1x1", "3x3")   # where a bottleneck's stride sits: v1 (first 1x1) or v1.5 (3x3)
EXPANSION = 4                 # a bottleneck's output channels over its stage's base width


@dataclass(frozen=True)
class BottleneckSpec(_Options):
    """A bottleneck block: 1x1 conv to ``bottleneck_channels``, 3x3 conv (in ``groups``:
    ResNeXt), 1x1 conv to ``num_channels``, each with BatchNorm; an optional 1x1 conv shortcut.

    ``stride_at`` says where the stride sits: ``"3x3"`` (v1.5: torchvision, Hugging Face) or
    ``"1x1"`` (v1: the paper, keras.applications, GluonCV v1). The attribute names number the
    convs as d2l's ``Residual`` does: ``conv1``..``conv3`` on the main path, ``conv4`` (and
    ``bn4``) on the shortcut, whose canonical names are ``shortcut`` and ``shortcut_bn``.
    With ``preact`` (v2) each BatchNorm comes before its conv (``bn1`` on the block's input).
    """

    input_channels: int = 256
    num_channels: int = 256
    bottleneck_channels: int = 64
    use_1x1conv: bool = False
    strides: int = 1
    groups: int = 1
    stride_at: str = "3x3"

    def __post_init__(self) -> None:
        self._check_options()
        _positive(input_channels=self.input_channels, num_channels=self.num_channels,
                  bottleneck_channels=self.bottleneck_channels, strides=self.strides,
                  groups=self.groups)
        if self.stride_at not in STRIDE_AT:
            raise ValueError(f"stride_at must be one of {STRIDE_AT}, got {self.stride_at!r}")
        if self.bottleneck_channels % self.groups:
            raise ValueError(f"bottleneck_channels ({self.bottleneck_channels}) must be divisible "
                             f"by groups ({self.groups})")
        if not self.use_1x1conv and (self.strides != 1 or self.input_channels != self.num_channels):
            raise ValueError(
                "a Bottleneck without 1x1 conv shortcut must keep the shape: got "
                f"input_channels={self.input_channels}, num_channels={self.num_channels}, "
                f"strides={self.strides}; pass use_1x1conv=True")

    def layers(self, prefix: str = "", attr: tuple = ()) -> list[Layer]:
        b = bias_by_kind(self.conv_bias)
        cin, mid, c = self.input_channels, self.bottleneck_channels, self.num_channels
        convs = [_conv(_join(prefix, "conv1"), attr + ("conv1",), cin, mid, 1, b["1x1"]),
                 _conv(_join(prefix, "conv2"), attr + ("conv2",), mid, mid, 3, b["3x3"], self.groups),
                 _conv(_join(prefix, "conv3"), attr + ("conv3",), mid, c, 1, b["1x1"])]
        # each BatchNorm normalises its conv's output, or (preact) its conv's input
        widths = (cin, mid, mid) if self.preact else (mid, mid, c)
        bns = [_bn(_join(prefix, f"bn{k}"), attr + (f"bn{k}",), w) for k, w in enumerate(widths, 1)]
        pairs = zip(bns, convs) if self.preact else zip(convs, bns)
        out = [layer for pair in pairs for layer in pair]
        if self.use_1x1conv:
            out.append(_conv(_join(prefix, "shortcut"), attr + ("conv4",), cin, c, 1, b["shortcut"]))
            if self.shortcut_bn:
                out.append(_bn(_join(prefix, "shortcut_bn"), attr + ("bn4",), c))
        return out

    def output_shape(self, shape: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        n, _, h, w = shape
        return (n, self.num_channels, _conv_out(h, 3, self.strides, 1), _conv_out(w, 3, self.strides, 1))


@dataclass(frozen=True)
class ResnetBlockSpec(_Options):
    """d2l's ``resnet_block``: ``num_residuals`` blocks; the first halves height and width
    unless ``first_block``, and gets a 1x1 conv shortcut where it changes the shape.

    ``block`` is ``"basic"`` (d2l's Residual) or ``"bottleneck"``; the bottleneck's width,
    groups and stride placement come with it.
    """

    input_channels: int = 64
    num_channels: int = 64
    num_residuals: int = 2
    first_block: bool = False
    block: str = "basic"
    bottleneck_channels: int = 0      # bottleneck blocks only
    groups: int = 1
    stride_at: str = "3x3"

    def __post_init__(self) -> None:
        self._check_options()
        _positive(input_channels=self.input_channels, num_channels=self.num_channels,
                  num_residuals=self.num_residuals, groups=self.groups)
        _check_block(self.block, self.groups, self.stride_at)
        if self.block == "bottleneck":
            _positive(bottleneck_channels=self.bottleneck_channels)
        elif self.bottleneck_channels:
            raise ValueError("bottleneck_channels is for bottleneck blocks; "
                             f"got {self.bottleneck_channels} with block='basic'")

    def block_options(self) -> dict[str, Any]:
        """What a bottleneck takes beside the shared options (nothing for a basic block)."""
        if self.block == "basic":
            return {}
        return {"bottleneck_channels": self.bottleneck_channels, "groups": self.groups,
                "stride_at": self.stride_at}

    def residuals(self) -> list[Union[ResidualSpec, BottleneckSpec]]:
        """The block specs in order, as d2l's ``resnet_block`` builds them: the first
        downsamples (stride 2) unless ``first_block``, and has a 1x1 conv shortcut where its
        shape changes; d2l's ResNet-18 gets exactly d2l's blocks."""
        make = ResidualSpec if self.block == "basic" else BottleneckSpec
        out = []
        for i in range(self.num_residuals):
            cin = self.input_channels if i == 0 else self.num_channels
            strides = 2 if i == 0 and not self.first_block else 1
            out.append(make(**self.options(), **self.block_options(), input_channels=cin,
                            num_channels=self.num_channels, strides=strides,
                            use_1x1conv=strides != 1 or cin != self.num_channels))
        return out

    def layers(self, prefix: str = "", attr: tuple = ()) -> list[Layer]:
        return [layer for i, r in enumerate(self.residuals())
                for layer in r.layers(_join(prefix, str(i)), attr + (i,))]


@dataclass(frozen=True)
class ResNetSpec(_Options):
    """A ResNet: stem (conv, BN, ReLU, max pool), stages of blocks, head (pool, flatten, fc).

    d2l's ResNet-18 by default. ``preact`` makes it v2 (pre-activation blocks, and a BatchNorm
    and ReLU, ``head.bn``, before the pool). ``block``, ``groups``, ``width_per_group`` and ``stride_at``
    make the family: bottleneck blocks whose 3x3 conv is ``stage_channels[i] // 4 *
    width_per_group // 64 * groups`` wide, as torchvision computes it (ResNeXt-50 32x4d: 128 in
    the first stage; Wide ResNet-50-2: ``width_per_group=128``). ``labels`` names the classes.
    """

    name: str = "resnet18"
    in_channels: int = 1
    num_classes: int = 10
    stem_channels: int = 64
    stem_kernel: int = 7
    stem_stride: int = 2
    stem_pool: bool = True          # 3x3 stride-2 max pool with padding 1
    stage_channels: tuple[int, ...] = (64, 128, 256, 512)
    stage_blocks: tuple[int, ...] = (2, 2, 2, 2)
    block: str = "basic"            # or "bottleneck"
    groups: int = 1                 # of each bottleneck's 3x3 conv (ResNeXt's cardinality)
    width_per_group: int = 64       # torchvision's base_width (ResNeXt 4 or 8; wide 128)
    stride_at: str = "3x3"          # a bottleneck's stride: "3x3" (v1.5) or "1x1" (v1)
    downsample_in_first_stage: bool = False  # Hugging Face's option: stage 0 at stride 2
    labels: tuple[str, ...] = ()    # class names, index i is class i (empty: unnamed)

    def __post_init__(self) -> None:
        # JSON gives lists; the spec is frozen and hashable, so store tuples.
        object.__setattr__(self, "stage_channels", tuple(int(c) for c in self.stage_channels))
        object.__setattr__(self, "stage_blocks", tuple(int(b) for b in self.stage_blocks))
        object.__setattr__(self, "labels", tuple(self.labels))
        self._check_options()
        _positive(in_channels=self.in_channels, num_classes=self.num_classes,
                  stem_channels=self.stem_channels, stem_kernel=self.stem_kernel,
                  stem_stride=self.stem_stride, groups=self.groups,
                  width_per_group=self.width_per_group)
        if self.stem_kernel % 2 == 0:
            raise ValueError(f"stem_kernel must be odd, got {self.stem_kernel}")
        if not self.stage_channels or len(self.stage_channels) != len(self.stage_blocks):
            raise ValueError("stage_channels and stage_blocks must be non-empty and of equal length, "
                             f"got {self.stage_channels} and {self.stage_blocks}")
        _positive(**{f"stage_channels[{i}]": c for i, c in enumerate(self.stage_channels)},
                  **{f"stage_blocks[{i}]": b for i, b in enumerate(self.stage_blocks)})
        _check_block(self.block, self.groups, self.stride_at, self.width_per_group)
        if self.block == "bottleneck":
            for i, c in enumerate(self.stage_channels):
                if c % EXPANSION or (c // EXPANSION * self.width_per_group) % 64:
                    raise ValueError(
                        f"stage_channels[{i}]={c} gives no whole bottleneck width: it must be "
                        f"divisible by {EXPANSION}, and stage_channels[{i}] // {EXPANSION} * "
                        f"width_per_group ({self.width_per_group}) by 64")
        _check_labels(self.labels, self.num_classes)

    @property
    def stem_padding(self) -> int:
        return self.stem_kernel // 2

    def bottleneck_channels(self, stage: int) -> int:
        """The width of stage ``stage``'s bottleneck 3x3 convs (0 for basic blocks)."""
        if self.block == "basic":
            return 0
        return self.stage_channels[stage] // EXPANSION * self.width_per_group // 64 * self.groups

    def stages(self) -> list[ResnetBlockSpec]:
        out, cin = [], self.stem_channels
        for i, (c, n) in enumerate(zip(self.stage_channels, self.stage_blocks)):
            out.append(ResnetBlockSpec(
                **self.options(), input_channels=cin, num_channels=c, num_residuals=n,
                first_block=(i == 0 and not self.downsample_in_first_stage), block=self.block,
                bottleneck_channels=self.bottleneck_channels(i), groups=self.groups,
                stride_at=self.stride_at))
            cin = c
        return out

    def layers(self, prefix: str = "", attr: tuple = ()) -> list[Layer]:
        out = [_conv(_join(prefix, "stem.conv"), attr + ("stem", "conv"), self.in_channels,
                     self.stem_channels, self.stem_kernel, self.has_bias("stem")),
               _bn(_join(prefix, "stem.bn"), attr + ("stem", "bn"), self.stem_channels)]
        for i, stage in enumerate(self.stages()):
            out += stage.layers(_join(prefix, f"stages.{i}"), attr + ("stages", i))
        c = self.stage_channels[-1]
        if self.preact:  # v2: the last block's sum is normalised before the pool
            out.append(_bn(_join(prefix, "head.bn"), attr + ("head", "bn"), c))
        out.append(Layer(_join(prefix, "head.fc"), attr + ("head", "fc"), "dense",
                         {"weight": (self.num_classes, c), "bias": (self.num_classes,)}))
        return out

    def top_level_names(self) -> list[str]:
        """Activation names of d2l's top-level layers (b1..b5, pool, flatten, dense)."""
        return (["stem.pool"]
                + [f"stages.{i}.{n - 1}" for i, n in enumerate(self.stage_blocks)]
                + ["head.pool", "head.flatten", "head.fc"])

    def output_shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        """The shape after each top-level layer, from the conv arithmetic alone."""
        h = _conv_out(height, self.stem_kernel, self.stem_stride, self.stem_padding)
        w = _conv_out(width, self.stem_kernel, self.stem_stride, self.stem_padding)
        if self.stem_pool:
            h, w = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
        names = self.top_level_names()
        shapes = {names[0]: (batch, self.stem_channels, h, w)}
        for i, (c, stage) in enumerate(zip(self.stage_channels, self.stages())):
            if not stage.first_block:
                h, w = _conv_out(h, 3, 2, 1), _conv_out(w, 3, 2, 1)
            shapes[names[1 + i]] = (batch, c, h, w)
        c = self.stage_channels[-1]
        shapes.update({"head.pool": (batch, c, 1, 1), "head.flatten": (batch, c),
                       "head.fc": (batch, self.num_classes)})
        return shapes


# GELU's two forms: "exact" is x * Phi(x) with the error function (PyTorch's nn.GELU(), Gluon's
# GELU, keras.activations.gelu's default, ConvNeXt's); "tanh" is the tanh approximation
# (keras.ops.gelu's default, Hugging Face's "gelu_new"/"gelu_pytorch_tanh").
GELUS = ("exact", "tanh")


@dataclass(frozen=True)
class ConvNeXtSpec(_Serial):
    """ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s"), as torchvision and Hugging Face
    build it.

    ``stem``: a ``patch_size`` x ``patch_size`` conv at stride ``patch_size`` and a LayerNorm over
    channels. Stage ``i`` (``depths[i]`` blocks of width ``widths[i]``) starts, except the first,
    with a ``downsample``: LayerNorm, then a 2x2/2 conv. A block: depthwise ``kernel_size`` conv
    (padding ``kernel_size // 2``), LayerNorm, Linear to ``mlp_ratio`` x width, GELU (``gelu``),
    Linear back, layer scale (a per-channel ``gamma``, absent when ``layer_scale_init`` is 0),
    stochastic depth, and the residual sum. ``head``: global average pool, LayerNorm, Linear.

    Every LayerNorm normalises over channels alone. Those inside the network use ``ln_eps``
    (1e-6 in torchvision and Hugging Face, hard-coded there); the head's uses ``head_ln_eps``
    (torchvision: 1e-6; Hugging Face: its config's ``layer_norm_eps``, 1e-12 by default and in
    seed 001's config). ``drop_path_rate`` is the last block's stochastic-depth rate; block
    ``k`` of ``n`` gets ``drop_path_rate * k / (n - 1)``, as both build it. It is the identity in
    eval mode.
    """

    name: str = "convnext_tiny"
    in_channels: int = 3
    num_classes: int = 1000
    depths: tuple[int, ...] = (3, 3, 9, 3)
    widths: tuple[int, ...] = (96, 192, 384, 768)
    patch_size: int = 4
    kernel_size: int = 7
    mlp_ratio: int = 4
    ln_eps: float = 1e-6
    head_ln_eps: float = 1e-6
    layer_scale_init: float = 1e-6
    drop_path_rate: float = 0.0
    gelu: str = "exact"
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", tuple(int(d) for d in self.depths))
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "labels", tuple(self.labels))
        _positive(in_channels=self.in_channels, num_classes=self.num_classes,
                  patch_size=self.patch_size, kernel_size=self.kernel_size,
                  mlp_ratio=self.mlp_ratio)
        if not self.depths or len(self.depths) != len(self.widths):
            raise ValueError("depths and widths must be non-empty and of equal length, got "
                             f"{self.depths} and {self.widths}")
        _positive(**{f"depths[{i}]": d for i, d in enumerate(self.depths)},
                  **{f"widths[{i}]": w for i, w in enumerate(self.widths)})
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (padding kernel_size // 2 keeps the size), "
                             f"got {self.kernel_size}")
        for f in ("ln_eps", "head_ln_eps"):
            if not 0.0 < getattr(self, f) < 1.0:
                raise ValueError(f"{f} must be in (0, 1), got {getattr(self, f)}")
        if not self.layer_scale_init >= 0.0:
            raise ValueError(f"layer_scale_init must be >= 0 (0: no layer scale), got "
                             f"{self.layer_scale_init}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.gelu not in GELUS:
            raise ValueError(f"gelu must be one of {GELUS}, got {self.gelu!r}")
        _check_labels(self.labels, self.num_classes)

    @property
    def layer_scale(self) -> bool:
        """Whether blocks scale their branch by a learned per-channel ``gamma``."""
        return self.layer_scale_init > 0

    def drop_path_rates(self) -> list[list[float]]:
        """Each block's stochastic-depth rate, per stage: linear from 0 to ``drop_path_rate``."""
        n = sum(self.depths)
        rates = [self.drop_path_rate * k / (n - 1) if n > 1 else 0.0 for k in range(n)]
        out, start = [], 0
        for d in self.depths:
            out.append(rates[start:start + d])
            start += d
        return out

    def block_options(self) -> dict[str, Any]:
        """What every block's constructor takes beside its width and rate."""
        return {"kernel_size": self.kernel_size, "mlp_ratio": self.mlp_ratio,
                "ln_eps": self.ln_eps, "layer_scale_init": self.layer_scale_init,
                "gelu": self.gelu}

    def layers(self, prefix: str = "", attr: tuple = ()) -> list[Layer]:
        def ln(name: str, path: tuple, c: int) -> Layer:
            return Layer(_join(prefix, name), attr + path, "ln", {"gamma": (c,), "beta": (c,)})

        w0, p = self.widths[0], self.patch_size
        out = [_conv(_join(prefix, "stem.conv"), attr + ("stem", "conv"), self.in_channels, w0, p,
                     True),
               ln("stem.norm", ("stem", "norm"), w0)]
        cin = w0
        for i, (c, d) in enumerate(zip(self.widths, self.depths)):
            at = ("stages", i)
            if i:
                out += [ln(f"stages.{i}.downsample.norm", at + ("downsample", "norm"), cin),
                        _conv(_join(prefix, f"stages.{i}.downsample.conv"),
                              attr + at + ("downsample", "conv"), cin, c, 2, True)]
            for j in range(d):
                b, path = f"stages.{i}.blocks.{j}", at + ("blocks", j)
                k, hidden = self.kernel_size, self.mlp_ratio * c
                out += [Layer(_join(prefix, f"{b}.dwconv"), attr + path + ("dwconv",), "dwconv",
                              {"weight": (c, 1, k, k), "bias": (c,)}),
                        ln(f"{b}.norm", path + ("norm",), c),
                        Layer(_join(prefix, f"{b}.pwconv1"), attr + path + ("pwconv1",), "dense",
                              {"weight": (hidden, c), "bias": (hidden,)}),
                        Layer(_join(prefix, f"{b}.pwconv2"), attr + path + ("pwconv2",), "dense",
                              {"weight": (c, hidden), "bias": (c,)})]
                if self.layer_scale:
                    out.append(Layer(_join(prefix, f"{b}.layer_scale"),
                                     attr + path + ("layer_scale",), "scale", {"gamma": (c,)}))
            cin = c
        out += [ln("head.norm", ("head", "norm"), cin),
                Layer(_join(prefix, "head.fc"), attr + ("head", "fc"), "dense",
                      {"weight": (self.num_classes, cin), "bias": (self.num_classes,)})]
        return out

    def top_level_names(self) -> list[str]:
        """Activation names of the stem's output, each stage's output and the head's layers."""
        return (["stem.norm"] + [f"stages.{i}.blocks.{d - 1}" for i, d in enumerate(self.depths)]
                + ["head.pool", "head.flatten", "head.norm", "head.fc"])

    def output_shapes(self, batch: int, height: int, width: int) -> dict[str, tuple[int, ...]]:
        """The shape after each top-level layer, from the conv arithmetic alone."""
        h, w = height // self.patch_size, width // self.patch_size
        names = self.top_level_names()
        shapes = {names[0]: (batch, self.widths[0], h, w)}
        for i, c in enumerate(self.widths):
            if i:
                h, w = h // 2, w // 2
            shapes[names[1 + i]] = (batch, c, h, w)
        c = self.widths[-1]
        shapes.update({"head.pool": (batch, c, 1, 1), "head.flatten": (batch, c),
                       "head.norm": (batch, c), "head.fc": (batch, self.num_classes)})
        return shapes

    def min_size(self) -> int:
        """The smallest input height and width every downsampling still has a pixel for."""
        return self.patch_size * 2 ** (len(self.depths) - 1)


Unit = Union[ResNetSpec, ResnetBlockSpec, ResidualSpec, BottleneckSpec, ConvNeXtSpec]
_UNITS = {cls.__name__: cls for cls in (ResNetSpec, ResnetBlockSpec, ResidualSpec, BottleneckSpec,
                                        ConvNeXtSpec)}


def spec_from_dict(d: dict[str, Any]) -> Unit:
    """Rebuild a unit spec from :meth:`to_dict` output, rejecting unknown fields by name."""
    if not isinstance(d, dict):
        raise ValueError(f"a spec must be a JSON object, got {type(d).__name__}")
    d = dict(d)
    kind = d.pop("unit", "ResNetSpec")
    cls = _UNITS.get(kind)
    if cls is None:
        raise ValueError(f"unknown spec unit {kind!r}; expected one of {sorted(_UNITS)}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown {kind} field(s): {', '.join(unknown)}")
    return cls(**d)


def spec_from_json(text: str) -> Unit:
    try:
        return spec_from_dict(json.loads(text))
    except json.JSONDecodeError as e:
        raise ValueError(f"spec is not valid JSON: {e}") from None


def resnet18_spec(in_channels: int = 1, num_classes: int = 10, **options: Any) -> ResNetSpec:
    """d2l's ResNet-18 (the chapter's ``net``): 7x7/2 stem with bias, max pool, 4 stages of 2 Residuals."""
    return ResNetSpec(name="resnet18", in_channels=in_channels, num_classes=num_classes, **options)


def torchvision_resnet18_spec(in_channels: int = 3, num_classes: int = 1000,
                              **options: Any) -> ResNetSpec:
    """torchvision's ``resnet18``: d2l's network without conv biases, with a BatchNorm after
    each 1x1 shortcut conv (torchvision's ``downsample``). Stem (7x7/2 conv, padding 3; 3x3/2
    max pool, padding 1), stages, BatchNorm eps 1e-5 and momentum 0.1 are the same as d2l's."""
    return ResNetSpec(name="torchvision-resnet18", in_channels=in_channels,
                      num_classes=num_classes, **{"conv_bias": False, "shortcut_bn": True,
                                                  **options})


def _torchvision(arch: str, block: str, blocks: tuple[int, ...], **options: Any) -> ResNetSpec:
    """A torchvision (and Hugging Face) ResNet: 3 input channels, 1000 classes, no conv bias,
    BatchNorm on the shortcut, a bottleneck's stride on its 3x3 conv (v1.5)."""
    widths = (64, 128, 256, 512) if block == "basic" else (256, 512, 1024, 2048)
    return ResNetSpec(**{"name": arch, "in_channels": 3, "num_classes": 1000, "conv_bias": False,
                         "shortcut_bn": True, "block": block, "stage_channels": widths,
                         "stage_blocks": blocks, **options})


def resnet34_spec(**options: Any) -> ResNetSpec:
    return _torchvision("resnet34", "basic", (3, 4, 6, 3), **options)


def resnet50_spec(**options: Any) -> ResNetSpec:
    return _torchvision("resnet50", "bottleneck", (3, 4, 6, 3), **options)


def resnet101_spec(**options: Any) -> ResNetSpec:
    return _torchvision("resnet101", "bottleneck", (3, 4, 23, 3), **options)


def resnet152_spec(**options: Any) -> ResNetSpec:
    return _torchvision("resnet152", "bottleneck", (3, 8, 36, 3), **options)


def resnext50_32x4d_spec(**options: Any) -> ResNetSpec:
    return _torchvision("resnext50_32x4d", "bottleneck", (3, 4, 6, 3), groups=32, width_per_group=4,
                        **options)


def resnext101_32x8d_spec(**options: Any) -> ResNetSpec:
    return _torchvision("resnext101_32x8d", "bottleneck", (3, 4, 23, 3), groups=32,
                        width_per_group=8, **options)


def resnext101_64x4d_spec(**options: Any) -> ResNetSpec:
    return _torchvision("resnext101_64x4d", "bottleneck", (3, 4, 23, 3), groups=64,
                        width_per_group=4, **options)


def wide_resnet50_2_spec(**options: Any) -> ResNetSpec:
    return _torchvision("wide_resnet50_2", "bottleneck", (3, 4, 6, 3), width_per_group=128,
                        **options)


def wide_resnet101_2_spec(**options: Any) -> ResNetSpec:
    return _torchvision("wide_resnet101_2", "bottleneck", (3, 4, 23, 3), width_per_group=128,
                        **options)


def resnet50_v1_spec(**options: Any) -> ResNetSpec:
    """ResNet-50 v1 as the paper and keras.applications have it: the stride on each stage's first
    1x1 conv, conv biases, BatchNorm eps 1.001e-5 (keras.applications' value)."""
    return resnet50_spec(**{"name": "resnet50_v1", "stride_at": "1x1", "conv_bias": True,
                            "bn_eps": 1.001e-5, **options})


def d2l_keras_resnet18_spec(in_channels: int = 1, num_classes: int = 10,
                            **options: Any) -> ResNetSpec:
    """The function d2l's Keras chapter code computes (its ``net()``): d2l's ResNet-18 with
    TensorFlow's ``padding='same'`` on the strided convs and the max pool (:data:`PADDINGS`),
    and Keras's BatchNorm defaults, eps 1e-3 and momentum 0.99 (0.01 in PyTorch's convention)."""
    return ResNetSpec(**{"name": "d2l-keras-resnet18", "in_channels": in_channels,
                         "num_classes": num_classes, "padding": "same", "bn_eps": 1e-3,
                         "bn_momentum": 0.01, **options})


def resnet18_v2_spec(in_channels: int = 1, num_classes: int = 10, **options: Any) -> ResNetSpec:
    """d2l's ResNet-18 with pre-activation blocks (the chapter's exercise; He et al. 2016,
    Identity Mappings): BatchNorm-ReLU-conv blocks and a BatchNorm-ReLU before the pool."""
    return ResNetSpec(**{"name": "resnet18_v2", "in_channels": in_channels,
                         "num_classes": num_classes, "preact": True, **options})


def resnet50_v2_spec(**options: Any) -> ResNetSpec:
    """The pre-activation ResNet-50 (He et al. 2016, Identity Mappings; fb.resnet.torch's
    preresnet): torchvision's widths and 3x3 stride, no conv bias, bare 1x1 conv shortcuts."""
    return resnet50_spec(**{"name": "resnet50_v2", "preact": True, "shortcut_bn": False,
                            **options})


def _keras_applications(arch: str, make: Callable[..., ResNetSpec], **options: Any) -> ResNetSpec:
    """keras.applications' ResNet (v1): the stride on each stage's first 1x1 conv, a bias on
    every conv, BatchNorm eps 1.001e-5 and Keras's momentum 0.99 (0.01 in PyTorch's convention)."""
    return make(**{"name": arch, "stride_at": "1x1", "conv_bias": True, "bn_eps": 1.001e-5,
                   "bn_momentum": 0.01, **options})


def keras_resnet50_spec(**options: Any) -> ResNetSpec:
    return _keras_applications("keras-resnet50", resnet50_spec, **options)


def keras_resnet101_spec(**options: Any) -> ResNetSpec:
    return _keras_applications("keras-resnet101", resnet101_spec, **options)


def keras_resnet152_spec(**options: Any) -> ResNetSpec:
    return _keras_applications("keras-resnet152", resnet152_spec, **options)


def _convnext(arch: str, depths: tuple[int, ...], widths: tuple[int, ...], drop_path_rate: float,
              **options: Any) -> ConvNeXtSpec:
    """A torchvision ConvNeXt: 3 input channels, 1000 classes, every LayerNorm's eps 1e-6,
    layer scale 1e-6, and torchvision's stochastic-depth rate for the member."""
    return ConvNeXtSpec(**{"name": arch, "depths": depths, "widths": widths,
                           "drop_path_rate": drop_path_rate, **options})


def convnext_tiny_spec(**options: Any) -> ConvNeXtSpec:
    return _convnext("convnext_tiny", (3, 3, 9, 3), (96, 192, 384, 768), 0.1, **options)


def convnext_small_spec(**options: Any) -> ConvNeXtSpec:
    return _convnext("convnext_small", (3, 3, 27, 3), (96, 192, 384, 768), 0.4, **options)


def convnext_base_spec(**options: Any) -> ConvNeXtSpec:
    return _convnext("convnext_base", (3, 3, 27, 3), (128, 256, 512, 1024), 0.5, **options)


def convnext_large_spec(**options: Any) -> ConvNeXtSpec:
    return _convnext("convnext_large", (3, 3, 27, 3), (192, 384, 768, 1536), 0.5, **options)


# The standard members by name (what --arch says). resnet18 is d2l's, the suite's default, and
# d2l-keras-resnet18 the function d2l's Keras code computes; the others are torchvision's and
# Hugging Face's layout (v1.5), except resnet50_v1 and the keras.applications members (v1) and
# the pre-activation members (v2); the ConvNeXt members are torchvision's.
ARCHITECTURES: dict[str, Callable[..., Union[ResNetSpec, ConvNeXtSpec]]] = {
    "resnet18": resnet18_spec,
    "d2l-keras-resnet18": d2l_keras_resnet18_spec,
    "torchvision-resnet18": torchvision_resnet18_spec,
    "resnet34": resnet34_spec,
    "resnet50": resnet50_spec,
    "resnet101": resnet101_spec,
    "resnet152": resnet152_spec,
    "resnext50_32x4d": resnext50_32x4d_spec,
    "resnext101_32x8d": resnext101_32x8d_spec,
    "resnext101_64x4d": resnext101_64x4d_spec,
    "wide_resnet50_2": wide_resnet50_2_spec,
    "wide_resnet101_2": wide_resnet101_2_spec,
    "resnet50_v1": resnet50_v1_spec,
    "resnet18_v2": resnet18_v2_spec,
    "resnet50_v2": resnet50_v2_spec,
    "keras-resnet50": keras_resnet50_spec,
    "keras-resnet101": keras_resnet101_spec,
    "keras-resnet152": keras_resnet152_spec,
    "convnext_tiny": convnext_tiny_spec,
    "convnext_small": convnext_small_spec,
    "convnext_base": convnext_base_spec,
    "convnext_large": convnext_large_spec,
}


def architecture(name: str, **options: Any) -> Union[ResNetSpec, ConvNeXtSpec]:
    """The standard member ``name`` (see :data:`ARCHITECTURES`), with ``options`` changed."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name](**options)


def param_shapes(unit: Unit) -> dict[str, tuple[int, ...]]:
    """Canonical parameter name -> shape, in layer order."""
    return {f"{layer.name}.{p}": s for layer in unit.layers() for p, s in layer.shapes.items()}


Network = Union[ResNetSpec, ConvNeXtSpec]
NETWORKS = (ResNetSpec, ConvNeXtSpec)  # the units that are whole networks, with classes


def num_inputs(unit: Unit) -> int:
    """Input channels of a unit: the network's ``in_channels``, a block's ``input_channels``."""
    return unit.in_channels if isinstance(unit, NETWORKS) else unit.input_channels


def unit_name(unit: Unit) -> str:
    """What messages call a unit: a network's ``name``, or d2l's name for a lone block."""
    names = {ResidualSpec: "Residual", ResnetBlockSpec: "resnet_block", BottleneckSpec: "Bottleneck"}
    return unit.name if isinstance(unit, NETWORKS) else names[type(unit)]


def num_outputs(unit: Unit) -> int:
    """Classes of the loss: the network's classes, or a lone block's output channels."""
    return unit.num_classes if isinstance(unit, NETWORKS) else unit.num_channels


def _check_block(block: str, groups: int, stride_at: str, width_per_group: int = 64) -> None:
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}")
    if stride_at not in STRIDE_AT:
        raise ValueError(f"stride_at must be one of {STRIDE_AT}, got {stride_at!r}")
    if block == "basic" and (groups != 1 or width_per_group != 64 or stride_at != "3x3"):
        raise ValueError("basic blocks take groups=1, width_per_group=64 and stride_at='3x3' (as "
                         f"torchvision's BasicBlock); got groups={groups}, width_per_group="
                         f"{width_per_group}, stride_at={stride_at!r}")


def _check_labels(labels: tuple[str, ...], num_classes: int) -> None:
    if labels:
        if len(labels) != num_classes:
            raise ValueError(f"labels names {len(labels)} classes, num_classes is {num_classes}")
        if not all(isinstance(label, str) and label for label in labels):
            raise ValueError("labels must be non-empty strings")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be distinct, got {list(labels)}")


def _conv_out(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


def _positive(**values: int) -> None:
    for k, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")
