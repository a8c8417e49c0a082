"""The public API of the ResNet parity suite; importing it loads no framework.

The names below come from the framework-neutral core (``common.core``) and, for
``get_backend`` and its helpers, from the registry (``common.tools.registry``), which imports a
framework package only when one is asked for. ``docs/architecture.md`` describes the layers.
"""

from .core.backend import BaseBackend, Convention, SGDConfig
from .core.compare import EVAL_RTOL_CPU, EVAL_RTOL_GPU, Row, compare, diff, format_rows, worst
from .core.preprocess import Preprocessing
from .core.spec import (
    ARCHITECTURES,
    BottleneckSpec,
    ConvNeXtSpec,
    Layer,
    ResidualSpec,
    ResnetBlockSpec,
    ResNetSpec,
    Unit,
    architecture,
    num_inputs,
    num_outputs,
    param_shapes,
    resnet18_spec,
    spec_from_dict,
    spec_from_json,
    torchvision_resnet18_spec,
)
from .core.state import (
    State,
    load_state_file,
    random_state,
    read_preprocessing,
    save_state,
    validate_state,
    xavier_state,
)
from .core.trace import activation_names
from .tools.registry import (
    BACKEND_NAMES,
    BackendUnavailable,
    canonical_name,
    get_backend,
    install_hint,
)

__all__ = [
    "activation_names", "architecture", "ARCHITECTURES", "BACKEND_NAMES", "BackendUnavailable",
    "BaseBackend", "BottleneckSpec", "canonical_name", "ConvNeXtSpec", "compare", "Convention", "diff",
    "EVAL_RTOL_CPU", "EVAL_RTOL_GPU", "format_rows", "get_backend", "install_hint", "Layer",
    "load_state_file", "num_inputs", "num_outputs", "param_shapes", "Preprocessing", "random_state",
    "read_preprocessing",
    "ResidualSpec", "resnet18_spec", "ResnetBlockSpec", "ResNetSpec", "Row", "save_state",
    "SGDConfig", "spec_from_dict", "spec_from_json", "State", "torchvision_resnet18_spec", "Unit",
    "validate_state", "worst", "xavier_state",
]
