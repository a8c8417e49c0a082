"""d2l's ResNet in Keras 3: ``Residual``, ``Bottleneck``, their pre-activation twins,
``resnet_block``, ``ResNet``, ``resnet18``; and ``ConvNeXt`` (``convnext``).

PyTorch's function, not the d2l Keras code's: stride-2 convolutions and the stem max pool pad
symmetrically (:class:`PaddedConv2D`, :class:`PaddedMaxPooling2D`), and BatchNorm takes the
spec's eps and momentum. Data is NHWC inside Keras; ``_layout`` is the one NCHW edge.
"""

from .blocks import (
    BLOCKS,
    Bottleneck,
    FusedBatchNormalization,
    PaddedConv2D,
    PaddedMaxPooling2D,
    PreActBottleneck,
    PreActResidual,
    Residual,
    ResnetBlock,
    batch_norm,
    resnet_block,
)
from .convnext import ConvNeXt, ConvNeXtBlock, convnext_from_spec, convnext_tiny
from .model import (
    Head,
    ResNet,
    Stem,
    block_from_spec,
    bottleneck_from_spec,
    residual_from_spec,
    resnet18,
)

__all__ = ["BLOCKS", "Bottleneck", "ConvNeXt", "ConvNeXtBlock", "convnext_from_spec", "convnext_tiny",
           "FusedBatchNormalization", "Head", "PaddedConv2D",
           "PaddedMaxPooling2D", "PreActBottleneck", "PreActResidual", "ResNet", "Residual",
           "ResnetBlock", "Stem", "batch_norm", "block_from_spec", "bottleneck_from_spec",
           "residual_from_spec", "resnet18", "resnet_block"]
