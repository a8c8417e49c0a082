"""d2l's ResNet in MXNet Gluon: ``Residual``, ``resnet_block``, ``ResNet``, ``resnet18``.

Importing this package makes ``import mxnet`` work under numpy >= 1.24 (see ``_compat``).
"""

from .blocks import Residual, resnet_block
from .model import ResNet, block_from_spec, residual_from_spec, resnet18

__all__ = ["ResNet", "Residual", "block_from_spec", "residual_from_spec", "resnet18",
           "resnet_block"]
