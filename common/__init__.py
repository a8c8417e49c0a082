"""Framework-neutral core of the ResNet parity suite; imports no framework at import time."""

from .backend import (
                      BACKEND_NAMES,
                      BackendUnavailable,
                      BaseBackend,
                      canonical_name,
                      get_backend,
                      install_hint,
)
from .compare import EVAL_RTOL_CPU, EVAL_RTOL_GPU, Row, compare, diff, format_rows, worst
from .spec import (
                      Layer,
                      ResidualSpec,
                      ResnetBlockSpec,
                      ResNetSpec,
                      Unit,
                      activation_names,
                      param_shapes,
                      resnet18_spec,
                      spec_from_dict,
                      spec_from_json,
                      torchvision_resnet18_spec,
)
from .state import State, load_state_file, random_state, save_state, validate_state, xavier_state

__all__ = [
    "BACKEND_NAMES", "BackendUnavailable", "BaseBackend", "EVAL_RTOL_CPU", "EVAL_RTOL_GPU", "Layer",
    "ResNetSpec", "ResidualSpec", "ResnetBlockSpec", "Row", "State", "Unit", "activation_names",
    "canonical_name", "compare", "diff", "format_rows", "get_backend", "install_hint",
    "load_state_file", "param_shapes", "random_state", "resnet18_spec", "save_state",
    "spec_from_dict", "spec_from_json", "torchvision_resnet18_spec", "validate_state", "worst",
    "xavier_state",
]
