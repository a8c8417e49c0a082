"""The framework-neutral core: spec and layer table, the walk, canonical state, the Backend
contract, comparison and tolerances, training-step conventions, data sets, how an image file
becomes a model's input (preprocess) and ImageNet-C's corruptions.

Imports no framework and no framework package, not even inside a function: everything above
(the framework packages, then ``common.tools``) builds on it.
"""
