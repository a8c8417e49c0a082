"""d2l's ResNet code as the chapter prints it (the pre-1.0 edition, section 7.6), for the traps
and for writing the chapter's Keras checkpoints.

Kept verbatim on purpose, including what the suite fixes: the Keras version pads stride-2
convolutions and the max pool with ``padding='same'`` (asymmetric) and leaves BatchNorm at
Keras's eps of 1e-3. The adapters give each net the suite's attribute paths so the backends can
load canonical weights into it; :func:`keras_chapter_model` assembles the chapter's Keras
classes for any spec they can hold, as a learner would change the chapter's ``net()``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np


def torch_net():
    """d2l's PyTorch ResNet-18 ``net``."""
    import torch  # noqa: F401
    from torch import nn
    from torch.nn import functional as F

    class Residual(nn.Module):  #@save
        """The Residual block of ResNet."""
        def __init__(self, input_channels, num_channels,
                     use_1x1conv=False, strides=1):
            super().__init__()
            self.conv1 = nn.Conv2d(input_channels, num_channels,
                                   kernel_size=3, padding=1, stride=strides)
            self.conv2 = nn.Conv2d(num_channels, num_channels,
                                   kernel_size=3, padding=1)
            if use_1x1conv:
                self.conv3 = nn.Conv2d(input_channels, num_channels,
                                       kernel_size=1, stride=strides)
            else:
                self.conv3 = None
            self.bn1 = nn.BatchNorm2d(num_channels)
            self.bn2 = nn.BatchNorm2d(num_channels)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, X):
            Y = F.relu(self.bn1(self.conv1(X)))
            Y = self.bn2(self.conv2(Y))
            if self.conv3:
                X = self.conv3(X)
            Y += X
            return F.relu(Y)

    b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
                       nn.BatchNorm2d(64), nn.ReLU(),
                       nn.MaxPool2d(kernel_size=3, stride=2, padding=1))

    def resnet_block(input_channels, num_channels, num_residuals,
                     first_block=False):
        blk = []
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.append(Residual(input_channels, num_channels,
                                    use_1x1conv=True, strides=2))
            else:
                blk.append(Residual(num_channels, num_channels))
        return blk

    b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
    b3 = nn.Sequential(*resnet_block(64, 128, 2))
    b4 = nn.Sequential(*resnet_block(128, 256, 2))
    b5 = nn.Sequential(*resnet_block(256, 512, 2))
    net = nn.Sequential(b1, b2, b3, b4, b5,
                        nn.AdaptiveAvgPool2d((1, 1)),
                        nn.Flatten(), nn.Linear(512, 10))
    return net


def keras_d2l() -> SimpleNamespace:
    """d2l's Keras ``Residual``, ``ResnetBlock`` and ``net``."""
    import tensorflow as tf

    class Residual(tf.keras.Model):  #@save
        """The Residual block of ResNet."""
        def __init__(self, num_channels, use_1x1conv=False, strides=1):
            super().__init__()
            self.conv1 = tf.keras.layers.Conv2D(
                num_channels, padding='same', kernel_size=3, strides=strides)
            self.conv2 = tf.keras.layers.Conv2D(
                num_channels, kernel_size=3, padding='same')
            self.conv3 = None
            if use_1x1conv:
                self.conv3 = tf.keras.layers.Conv2D(
                    num_channels, kernel_size=1, strides=strides)
            self.bn1 = tf.keras.layers.BatchNormalization()
            self.bn2 = tf.keras.layers.BatchNormalization()

        def call(self, X):
            Y = tf.keras.activations.relu(self.bn1(self.conv1(X)))
            Y = self.bn2(self.conv2(Y))
            if self.conv3 is not None:
                X = self.conv3(X)
            Y += X
            return tf.keras.activations.relu(Y)

    class ResnetBlock(tf.keras.layers.Layer):
        def __init__(self, num_channels, num_residuals, first_block=False,
                     **kwargs):
            super(ResnetBlock, self).__init__(**kwargs)
            self.residual_layers = []
            for i in range(num_residuals):
                if i == 0 and not first_block:
                    self.residual_layers.append(
                        Residual(num_channels, use_1x1conv=True, strides=2))
                else:
                    self.residual_layers.append(Residual(num_channels))

        def call(self, X):
            for layer in self.residual_layers:  # d2l: self.residual_layers.layers (Keras 2)
                X = layer(X)
            return X

    def net():
        return tf.keras.Sequential([
            # The following layers are the same as b1 that we created earlier
            tf.keras.layers.Conv2D(64, kernel_size=7, strides=2, padding='same'),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.Activation('relu'),
            tf.keras.layers.MaxPool2D(pool_size=3, strides=2, padding='same'),
            # The following layers are the same as b2, b3, b4, and b5 that we
            # created earlier
            ResnetBlock(64, 2, first_block=True),
            ResnetBlock(128, 2),
            ResnetBlock(256, 2),
            ResnetBlock(512, 2),
            tf.keras.layers.GlobalAvgPool2D(),
            tf.keras.layers.Dense(units=10)])

    return SimpleNamespace(Residual=Residual, ResnetBlock=ResnetBlock, net=net)


class Paths:
    """Attribute paths over another model's layers, for ``Backend.register``."""

    def __init__(self, **layers: Any) -> None:
        self.__dict__.update(layers)


def torch_adapter(net: Any) -> Paths:
    """The suite's attribute paths (stem.conv, stages[i][j], head.fc) over d2l's torch net:
    b1, the stages, then pool, flatten and the Linear."""
    return Paths(stem=Paths(conv=net[0][0], bn=net[0][1]),
                 stages=[net[i] for i in range(1, len(net) - 3)], head=Paths(fc=net[-1]))


def keras_adapter(net: Any) -> Paths:
    """The same over d2l's Keras Sequential (built first, so its weights exist): conv, norm,
    ReLU and pool, the ResnetBlocks, then pool and Dense."""
    layers = net.layers
    return Paths(stem=Paths(conv=layers[0], bn=layers[1]),
                 stages=[layers[i].residual_layers for i in range(4, len(layers) - 2)],
                 head=Paths(fc=layers[-1]))


def keras_chapter_model(unit: Any) -> tuple[Any, Any]:
    """``(model, paths)``: the chapter's Keras code built for ``unit`` (its ``net()`` with the
    unit's stem, stages and classes; a ``Residual``; a Sequential around one ``ResnetBlock``),
    called once so its weights exist, and the suite's attribute paths over it."""
    import tensorflow as tf

    from ..core.spec import ResidualSpec, ResnetBlockSpec, num_inputs
    d2l = keras_d2l()
    if isinstance(unit, ResidualSpec):
        model = paths = d2l.Residual(unit.num_channels, use_1x1conv=unit.use_1x1conv,
                                     strides=unit.strides)
    elif isinstance(unit, ResnetBlockSpec):
        model = tf.keras.Sequential([d2l.ResnetBlock(unit.num_channels, unit.num_residuals,
                                                     first_block=unit.first_block)])
        paths = model.layers[0].residual_layers
    else:
        first = not unit.downsample_in_first_stage
        model = tf.keras.Sequential([
            tf.keras.layers.Conv2D(unit.stem_channels, kernel_size=unit.stem_kernel,
                                   strides=unit.stem_stride, padding='same'),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.Activation('relu'),
            tf.keras.layers.MaxPool2D(pool_size=3, strides=2, padding='same'),
            *[d2l.ResnetBlock(c, n, first_block=first and i == 0)
              for i, (c, n) in enumerate(zip(unit.stage_channels, unit.stage_blocks))],
            tf.keras.layers.GlobalAvgPool2D(),
            tf.keras.layers.Dense(units=unit.num_classes)])
        paths = None
    model(np.zeros((1, 8, 8, num_inputs(unit)), np.float32))
    return model, keras_adapter(model) if paths is None else paths
