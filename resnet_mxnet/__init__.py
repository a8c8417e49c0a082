"""d2l's ResNet in MXNet Gluon: ``Residual``, ``Bottleneck``, their pre-activation twins,
``resnet_block``, ``ResNet``, ``resnet18``.

Importing this package makes ``import mxnet`` work under numpy >= 1.24 (see ``_compat``).
"""

from .blocks import BLOCKS, Bottleneck, PreActBottleneck, PreActResidual, Residual, batch_norm, resnet_block
from .model import (
    Head,
    ResNet,
    Stem,
    block_from_spec,
    bottleneck_from_spec,
    residual_from_spec,
    resnet18,
)

__all__ = ["BLOCKS", "Bottleneck", "Head", "PreActBottleneck", "PreActResidual", "ResNet", "Residual",
           "Stem", "batch_norm", "block_from_spec", "bottleneck_from_spec", "residual_from_spec",
           "resnet18", "resnet_block"]
