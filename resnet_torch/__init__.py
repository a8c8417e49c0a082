"""d2l's ResNet in PyTorch: ``Residual``, ``resnet_block``, ``ResNet``, ``resnet18``."""

from .blocks import Residual, resnet_block
from .model import ResNet, block_from_spec, residual_from_spec, resnet18

__all__ = ["ResNet", "Residual", "block_from_spec", "residual_from_spec", "resnet18",
           "resnet_block"]
