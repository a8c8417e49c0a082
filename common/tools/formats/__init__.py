"""Checkpoint file formats: detection, safe readers, writers, and torchvision's key names.

Every format reads to, and writes from, the canonical state (:mod:`common.core.state`). Layouts are
never converted here: a framework format is written by building the model with that framework's
backend, loading the canonical state and calling the framework's own save function, and read
the other way round (build, the framework's own load, ``export_state``). PyTorch's layouts are
the canonical ones, so a ``state_dict`` only has its keys renamed (:func:`torch_keys`). What this
module adds is the part frameworks do not do safely or completely:

* reading a file's raw tensors without running code from it (``torch.load(weights_only=True)``,
  safetensors, HDF5, a bounds-checked parser of MXNet's NDArray file format), so that
* every key and shape is checked against the spec *before* a framework loads the file, naming
  every missing, unexpected or mis-shaped key (file key, expected and actual shape) and every
  tensor with NaN or infinity (:func:`common.core.state.check_tensors`), and
* any failure is a ``ValueError`` that names the file.

Formats (``--from`` / ``--to`` name the family; :func:`detect` picks the format by file name):

* ``canonical``: ``.safetensors`` written by :func:`common.save_state`, spec in metadata;
* ``torch``: ``.pt`` / ``.pth``, the ``state_dict`` of resnet_torch's ``ResNet``;
* ``torchvision``: ``.pt`` / ``.pth`` with torchvision's key names (family ``torch`` detects it);
* ``keras-weights`` / ``keras`` (family ``tf``): ``.weights.h5`` from ``save_weights``, and
  ``.keras`` from ``model.save``, which also stores the spec;
* ``gluon-params`` / ``gluon-export`` (family ``mxnet``): ``.params`` from ``save_parameters``,
  and ``PREFIX-symbol.json`` + ``PREFIX-0000.params`` from ``HybridBlock.export``;
* ``hf``: a Hugging Face ``save_pretrained`` directory (``config.json`` + ``model.safetensors``
  or ``pytorch_model.bin``), the spec in its config; read also from a Hub id (``owner/name``);
* ``keras-applications-weights`` / ``keras-applications`` (family ``keras-applications``):
  keras.applications' ResNet50/101/152 as ``.weights.h5`` and ``.keras``; the Keras formats
  hand such a file over when they see its layout (:meth:`Format.refine`);
* ``d2l-torch``, ``d2l-tf``, ``d2l-mxnet``: the d2l chapter's own code saved natively (its
  ``nn.Sequential`` state_dict, Keras ``save_weights``, Gluon ``save_parameters``), also a
  ``Residual`` or ``resnet_block`` alone; recognised by their names and shapes.

Frameworks are imported inside the functions that need them, never at module import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import numpy as np

from .base import (
    RUNNING_STATS,
    TORCH_PARAM,
    Format,
    PathLike,
    Staging,
    attr_path,
    check_targets,
    looks_torchvision,
    read_ndarray_file,
    torch_bn_counters,
    torch_keys,
    torchvision_module,
)
from .d2l import D2L_FORMATS, D2L_MXNET, D2L_TF, D2L_TORCH, D2lFormat, d2l_for
from .huggingface import HuggingFace, hub_snapshot, is_hub_id, looks_hf_dir, looks_hf_weights
from .keras_applications import (
    KERAS_APPLICATIONS,
    KERAS_APPLICATIONS_WEIGHTS,
    KerasApplicationsModel,
    KerasApplicationsWeights,
    keras_applications_for,
)
from .native import (
    CANONICAL,
    GLUON_EXPORT,
    GLUON_PARAMS,
    KERAS,
    KERAS_WEIGHTS,
    TORCH,
    TORCHVISION,
    Canonical,
    GluonExport,
    GluonParams,
    KerasModel,
    KerasWeights,
    TorchStateDict,
    TorchvisionStateDict,
)

__all__ = [
    "CANONICAL", "D2L_FORMATS", "D2L_MXNET", "D2L_TF", "D2L_TORCH", "D2lFormat",
    "FAMILIES", "FAMILY_NAMES", "FORMATS", "GLUON_EXPORT", "GLUON_PARAMS", "HF", "KERAS",
    "KERAS_APPLICATIONS", "KERAS_APPLICATIONS_WEIGHTS", "KERAS_WEIGHTS", "RUNNING_STATS", "TORCH",
    "TORCHVISION", "TORCH_PARAM", "Canonical", "Format", "GluonExport", "GluonParams", "HuggingFace",
    "KerasApplicationsModel", "KerasApplicationsWeights", "KerasModel", "KerasWeights", "PathLike",
    "Staging", "TorchStateDict", "TorchvisionStateDict", "attr_path", "check_targets",
    "choices_text", "detect", "family_name", "locate", "looks_torchvision", "read_ndarray_file",
    "refine", "torch_bn_counters", "torch_keys", "torchvision_module",
]

HF = HuggingFace(state_dict_reader=TORCH)
# the formats that hold any spec (the suite's and the frameworks' own); a foreign format (hf)
# holds only the specs its library can build, and is reached through FAMILIES
FORMATS: dict[str, Format] = {f.name: f for f in (CANONICAL, TORCH, TORCHVISION, KERAS_WEIGHTS,
                                                  KERAS, GLUON_PARAMS, GLUON_EXPORT)}
# --from / --to names -> the formats they cover, the default first
FAMILIES: dict[str, tuple[Format, ...]] = {
    "canonical": (CANONICAL,),
    "torch": (TORCH, TORCHVISION),
    "torchvision": (TORCHVISION,),
    "tf": (KERAS_WEIGHTS, KERAS),
    "mxnet": (GLUON_PARAMS, GLUON_EXPORT),
    "hf": (HF,),
    "keras-applications": (KERAS_APPLICATIONS_WEIGHTS, KERAS_APPLICATIONS),
    "d2l-torch": (D2L_TORCH,),
    "d2l-tf": (D2L_TF,),
    "d2l-mxnet": (D2L_MXNET,),
}
_FAMILY_ALIASES = {"pytorch": "torch", "keras": "tf", "tensorflow": "tf", "gluon": "mxnet",
                   "mx": "mxnet", "safetensors": "canonical",
                   "huggingface": "hf", "transformers": "hf",
                   "keras-apps": "keras-applications", "d2l-pytorch": "d2l-torch",
                   "d2l-keras": "d2l-tf", "d2l-tensorflow": "d2l-tf", "d2l-gluon": "d2l-mxnet"}
FAMILY_NAMES = tuple(FAMILIES)


def family_name(name: str) -> str:
    """``torch``, ``torchvision``, ``tf``, ``mxnet``, ``hf`` or ``canonical`` (aliases accepted)."""
    key = _FAMILY_ALIASES.get(name.lower(), name.lower())
    if key not in FAMILIES:
        raise ValueError(f"unknown format {name!r}; choose from {', '.join(FAMILY_NAMES)}")
    return key


def choices_text() -> str:
    return ("canonical (.safetensors), torch (.pt/.pth), torchvision (.pt/.pth with torchvision's "
            "key names), tf (.weights.h5, .keras), mxnet (.params, PREFIX-symbol.json), hf (a Hugging "
            "Face directory: config.json + model.safetensors; a Hub id owner/name to read), "
            "keras-applications (.weights.h5, .keras of keras.applications' ResNet50/101/152), "
            "d2l-torch (.pt/.pth), d2l-tf (.weights.h5), d2l-mxnet (.params): the d2l chapter's "
            "own code saved natively")


def _by_name(path: Path, writing: bool) -> Optional[Format]:
    name = path.name.lower()
    if not writing and (looks_hf_dir(path) or path.is_file() and looks_hf_weights(path)):
        return HF
    if name.endswith(".params"):
        return GLUON_EXPORT if not writing and GluonExport.is_export_params(path) else GLUON_PARAMS
    for fmt in (CANONICAL, TORCH, KERAS_WEIGHTS, KERAS, GLUON_EXPORT):
        if name.endswith(fmt.suffixes):
            return fmt
    return None


def detect(path: PathLike, family: Optional[str] = None, *, writing: bool = False) -> Format:
    """The format of ``path`` from its name, checked against ``family`` (``--from``/``--to``).

    Raises ``ValueError`` naming the file and listing the choices when the name does not say
    and no family is given, or when the name contradicts the family.
    """
    path = Path(path)
    by_name = _by_name(path, writing)
    if family is None:
        if by_name is None and path.is_dir():
            raise ValueError(f"{path}: a directory, but not a Hugging Face checkpoint (no config.json)")
        if by_name is None:
            hint = " (legacy Keras .h5 is not supported: use .weights.h5)" if (
                path.name.lower().endswith(".h5")) else ""
            raise ValueError(f"{path}: cannot tell the format from the file name{hint}; pass "
                             f"--from/--to with one of: {choices_text()}")
        return by_name
    options = FAMILIES[family_name(family)]
    if by_name in options:
        return by_name
    if by_name is not None and family_name(family) == "torchvision" and by_name is TORCH:
        return TORCHVISION
    named = [f for f in options if by_name is not None and path.name.lower().endswith(f.suffixes)]
    if named:
        return named[0]  # keras-applications: the Keras suffixes, keras.applications' layout
    if by_name is None and options[0].family != "tf" or options[0].directory:
        return options[0]  # torch.load, safetensors and MXNet read any file name; hf any directory
    need = " or ".join(dict.fromkeys(s for f in options for s in f.suffixes))
    got = f"is named like {by_name.description}" if by_name else "has another name"
    raise ValueError(f"{path}: {family} needs a file name ending in {need}; this one {got}")



def locate(source: PathLike, family: Optional[str] = None) -> Path:
    """SRC as a local path: itself, or for a Hugging Face Hub id (``owner/name`` that is no local
    path) the snapshot huggingface_hub downloads (or finds in its cache)."""
    if (family is None or family_name(family) == "hf") and is_hub_id(source):
        return hub_snapshot(str(source))
    return Path(source)


def refine(fmt: Format, tensors: Mapping[str, np.ndarray]) -> Format:
    """The precise format of a file detected as ``fmt`` once its tensors are known: the d2l
    chapter's layout in a framework's file, torchvision keys in a torch file
    (:meth:`Format.refine`), keras.applications' flat layout in a Keras file (handed over here,
    so that the native formats need not know the others)."""
    chapter = d2l_for(fmt, tensors)
    if chapter is not None:
        return chapter
    if fmt.family == "tf":
        return keras_applications_for(fmt.suffixes, tensors) or fmt
    return fmt.refine(tensors)
