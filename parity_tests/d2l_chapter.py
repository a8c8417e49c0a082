"""The d2l ResNet chapter's code (pre-1.0 edition, section 7.6) in three frameworks, copied as
printed, for the checkpoint tests: a learner's model is built, trained and saved by exactly this
code, so a converted checkpoint is compared with what this code computes.

The product keeps its own copy (``common.tools.d2l_reference``, which writes the chapter's Keras
files); these tests build from this one on purpose, so a change there cannot hide here.
Adapted only where the frameworks of today need it, each place marked ``ADAPTED``:

* Keras 3 tracks a list attribute as a plain list, so ``ResnetBlock.call`` iterates
  ``self.residual_layers`` (the chapter: ``self.residual_layers.layers``, Keras 2's wrapper);
* the chapter's ``net`` (PyTorch, Gluon) and ``net()`` (Keras) are wrapped in functions so each
  test builds a fresh one; the Gluon code comes in both editions: the legacy ``mxnet.nd`` one
  and the ``mxnet.np``/``npx`` one the chapter prints, which runs under ``npx.set_np()``
  (:func:`numpy_mode`).
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Iterator


def torch_chapter() -> SimpleNamespace:
    """``Residual``, ``resnet_block`` and ``net()`` (ADAPTED: a function) in PyTorch."""
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

    def net():
        b1 = nn.Sequential(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3),
                           nn.BatchNorm2d(64), nn.ReLU(),
                           nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        b2 = nn.Sequential(*resnet_block(64, 64, 2, first_block=True))
        b3 = nn.Sequential(*resnet_block(64, 128, 2))
        b4 = nn.Sequential(*resnet_block(128, 256, 2))
        b5 = nn.Sequential(*resnet_block(256, 512, 2))
        return nn.Sequential(b1, b2, b3, b4, b5,
                             nn.AdaptiveAvgPool2d((1,1)),
                             nn.Flatten(), nn.Linear(512, 10))

    return SimpleNamespace(Residual=Residual, resnet_block=resnet_block, net=net)


def keras_chapter() -> SimpleNamespace:
    """``Residual``, ``ResnetBlock`` and ``net()`` in Keras."""
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
            for layer in self.residual_layers:  # ADAPTED: .layers is Keras 2's list wrapper
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


def gluon_chapter(edition: str) -> SimpleNamespace:
    """``Residual``, ``resnet_block`` and ``net()`` in Gluon: ``edition`` "np" is the chapter
    as printed (``npx.relu``; build and run it inside :func:`numpy_mode`), "nd" the legacy
    edition's ``nd.relu``. The rest of the two editions is the same code."""
    from resnet_mxnet._compat import mx  # MXNet, imported after its numpy shim
    nd, npx, nn = mx.nd, mx.npx, mx.gluon.nn
    relu = npx.relu if edition == "np" else nd.relu

    class Residual(nn.Block):  #@save
        """The Residual block of ResNet."""
        def __init__(self, num_channels, use_1x1conv=False, strides=1, **kwargs):
            super().__init__(**kwargs)
            self.conv1 = nn.Conv2D(num_channels, kernel_size=3, padding=1,
                                   strides=strides)
            self.conv2 = nn.Conv2D(num_channels, kernel_size=3, padding=1)
            if use_1x1conv:
                self.conv3 = nn.Conv2D(num_channels, kernel_size=1,
                                       strides=strides)
            else:
                self.conv3 = None
            self.bn1 = nn.BatchNorm()
            self.bn2 = nn.BatchNorm()

        def forward(self, X):
            Y = relu(self.bn1(self.conv1(X)))
            Y = self.bn2(self.conv2(Y))
            if self.conv3:
                X = self.conv3(X)
            return relu(Y + X)

    def resnet_block(num_channels, num_residuals, first_block=False):
        blk = nn.Sequential()
        for i in range(num_residuals):
            if i == 0 and not first_block:
                blk.add(Residual(num_channels, use_1x1conv=True, strides=2))
            else:
                blk.add(Residual(num_channels))
        return blk

    def net():
        net = nn.Sequential()
        net.add(nn.Conv2D(64, kernel_size=7, strides=2, padding=3),
                nn.BatchNorm(), nn.Activation('relu'),
                nn.MaxPool2D(pool_size=3, strides=2, padding=1))
        net.add(resnet_block(64, 2, first_block=True),
                resnet_block(128, 2),
                resnet_block(256, 2),
                resnet_block(512, 2))
        net.add(nn.GlobalAvgPool2D(), nn.Dense(10))
        return net

    return SimpleNamespace(Residual=Residual, resnet_block=resnet_block, net=net)


@contextlib.contextmanager
def numpy_mode(edition: str) -> Iterator[None]:
    """``npx.set_np()`` for the ``np`` edition, undone after (the suite's Gluon code is ``nd``)."""
    from resnet_mxnet._compat import mx
    if edition != "np":
        yield
        return
    mx.npx.set_np()
    try:
        yield
    finally:
        mx.npx.reset_np()
