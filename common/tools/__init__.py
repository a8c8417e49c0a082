"""The tools that drive the framework packages: the registry (``get_backend``), checkpoint
formats and conversion, side-by-side training, the benchmark, the trap measurements, d2l's code
as printed, and the ``resnet-parity`` command.

They sit above ``resnet_torch``, ``resnet_tf`` and ``resnet_mxnet`` and import a framework only
inside the function that needs it, so importing a tool loads no framework.
"""
