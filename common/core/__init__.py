"""The framework-neutral core: spec and layer table, the walk, canonical state, the Backend
contract, comparison and tolerances, training-step conventions, data.

Imports no framework and no framework package, not even inside a function: everything above
(the framework packages, then ``common.tools``) builds on it.
"""
