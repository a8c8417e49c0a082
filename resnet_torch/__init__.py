"""d2l's ResNet in PyTorch: ``Residual``, ``Bottleneck``, their pre-activation twins,
``resnet_block``, ``ResNet``, ``resnet18``; and ``ConvNeXt`` (``convnext``)."""

from .blocks import BLOCKS, Bottleneck, PreActBottleneck, PreActResidual, Residual, batch_norm, resnet_block
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
           "Head", "PreActBottleneck", "PreActResidual", "ResNet", "Residual",
           "Stem", "batch_norm", "block_from_spec", "bottleneck_from_spec", "residual_from_spec",
           "resnet18", "resnet_block"]
