"""Canonical state: framework-neutral names, canonical layouts, float32, safetensors files.

Layouts: conv kernels ``(out, in, kh, kw)``, dense ``(out, in)``, BatchNorm ``gamma``, ``beta``,
``running_mean``, ``running_var``. Files are safetensors with the spec as JSON metadata, so a file
alone rebuilds the model in any framework, and loading never runs code from the file; the
preprocessing the model was trained with, where known, sits beside the spec
(:func:`read_preprocessing`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Collection, Iterator, Mapping, Optional, Union

import numpy as np

from .preprocess import Preprocessing
from .spec import Unit, param_shapes, spec_from_json

State = dict[str, np.ndarray]
FORMAT = "resnet-parity/1"


def validate_state(state: Mapping[str, np.ndarray], unit: Unit, *,
                   allow_nonfinite: bool = False, dtype: str = "float32") -> State:
    """Check names, shapes and values against ``unit``; return copies in ``dtype`` (float32,
    the canonical one, unless a float64 model asks), in layer order.

    Raises ``ValueError`` listing every missing key, every unexpected key, every shape mismatch
    (expected and actual) and every tensor holding NaN or infinity.
    """
    return check_tensors(state, param_shapes(unit), allow_nonfinite=allow_nonfinite, dtype=dtype)


def check_tensors(tensors: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], *,
                  allow_nonfinite: bool = False, dtype: str = "float32",
                  optional: Collection[str] = (), what: str = "state does not fit the spec"
                  ) -> State:
    """:func:`validate_state` for any naming: check ``tensors`` against ``expected`` shapes.

    Keys in ``optional`` may be absent. Returns copies in ``dtype``, in ``expected``'s order;
    raises ``ValueError`` starting with ``what`` and naming every problem.
    """
    problems = []
    missing = [k for k in expected if k not in tensors and k not in optional]
    unexpected = sorted(k for k in tensors if k not in expected)
    if missing:
        problems.append("missing key(s): " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected key(s): " + ", ".join(unexpected))
    out: State = {}
    for name, shape in expected.items():
        if name not in tensors:
            continue
        arr = np.asarray(tensors[name])
        if tuple(arr.shape) != tuple(shape):
            problems.append(f"shape mismatch for {name}: expected {tuple(shape)}, "
                            f"got {tuple(arr.shape)}")
            continue
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            problems.append(f"{name} has non-numeric dtype {arr.dtype}")
            continue
        arr = np.array(arr, dtype=dtype, copy=True)
        if not allow_nonfinite and not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            problems.append(f"non-finite values in {name}: {bad} of {arr.size} are NaN or inf")
        out[name] = arr
    if problems:
        raise ValueError(f"{what}: " + "; ".join(problems))
    return out


def random_state(unit: Unit, seed: int = 0) -> State:
    """Random weights *and* random BatchNorm statistics, scaled so activations stay O(1).

    Fresh BatchNorm statistics (mean 0, var 1) hide eps and running-statistic bugs, so every
    BN tensor here is drawn away from its default.
    """
    rng = np.random.default_rng(seed)
    out: State = {}
    for layer in unit.layers():
        for p, shape in layer.shapes.items():
            if layer.kind == "scale":  # layer scale: O(1), or the branch would vanish
                v = rng.uniform(0.2, 0.6, shape)
            elif layer.kind == "ln":
                v = rng.uniform(0.5, 1.5, shape) if p == "gamma" else rng.normal(0.0, 0.2, shape)
            elif layer.kind == "bn":
                if p == "gamma":
                    v = rng.uniform(0.5, 1.5, shape)
                elif p == "running_var":
                    v = rng.uniform(0.5, 2.0, shape)
                else:  # beta, running_mean
                    v = rng.normal(0.0, 0.2, shape)
            elif p == "weight":
                fan_in = int(np.prod(shape[1:]))
                v = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
            else:  # biases
                v = rng.normal(0.0, 0.1, shape)
            out[f"{layer.name}.{p}"] = v.astype(np.float32)
    return out


def xavier_state(unit: Unit, seed: int = 0) -> State:
    """d2l's initialisation (``init_cnn``): Xavier-uniform conv and dense weights; zero biases,
    BatchNorm and LayerNorm gamma 1, beta 0, fresh running statistics (0 and 1); layer scale
    at the spec's ``layer_scale_init``."""
    rng = np.random.default_rng(seed)
    fill = {"bias": 0.0, "gamma": 1.0, "beta": 0.0, "running_mean": 0.0, "running_var": 1.0}
    out: State = {}
    for layer in unit.layers():
        for p, shape in layer.shapes.items():
            if p == "weight":
                receptive = int(np.prod(shape[2:]))
                bound = np.sqrt(6.0 / ((shape[0] + shape[1]) * receptive))
                v = rng.uniform(-bound, bound, shape)
            elif layer.kind == "scale":
                v = np.full(shape, getattr(unit, "layer_scale_init"))
            else:
                v = np.full(shape, fill[p])
            out[f"{layer.name}.{p}"] = v.astype(np.float32)
    return out


def publish(tmp: Union[str, os.PathLike], target: Union[str, os.PathLike]) -> None:
    """Rename a finished temporary file into place with a new file's usual mode (mkstemp makes
    it private, 0600); the rename is atomic, so readers see the old file or the new one."""
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, target)


@contextlib.contextmanager
def atomic_write(path: Union[str, os.PathLike]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to: renamed onto ``path`` when the block ends
    normally, removed when it raises, so readers see the old file or the new one, never half
    of one (an interrupted write leaves no temporary behind either)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        publish(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path: Union[str, os.PathLike], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_state(path: Union[str, os.PathLike], state: Mapping[str, np.ndarray], spec: Unit,
               preprocessing: Optional[Preprocessing] = None) -> Path:
    """Write ``state`` as safetensors with ``spec`` (and ``preprocessing``, where given) in its
    metadata, atomically.

    The file is written beside ``path`` under a temporary name and renamed into place, so an
    interrupted save never leaves a half-written file.
    """
    from safetensors.numpy import save_file

    checked = validate_state(state, spec)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "spec": spec.to_json()}
    if preprocessing is not None:
        metadata["preprocessing"] = preprocessing.to_json()
    with atomic_write(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in checked.items()}, str(tmp),
                  metadata=metadata)
    return path


def read_preprocessing(path: Union[str, os.PathLike]) -> Optional[Preprocessing]:
    """The preprocessing stored in a :func:`save_state` file, or None where it stores none.

    Raises ``ValueError`` naming the file when the file, or the stored preprocessing, is
    unreadable.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            text = (f.metadata() or {}).get("preprocessing")
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if text is None:
        return None
    try:
        return Preprocessing.from_json(text, source=f"stored in {Path(path).name}")
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: stored preprocessing: {e}") from None


def load_state_file(path: Union[str, os.PathLike], *, allow_nonfinite: bool = False
                    ) -> tuple[State, Unit]:
    """Read a file written by :func:`save_state`: ``(state, spec)``, validated.

    Raises ``ValueError`` naming the file for anything unreadable: missing, empty, truncated,
    not safetensors, without a spec, or with tensors that do not fit the spec.
    """
    state, spec = read_state_file(path)
    try:
        return validate_state(state, spec, allow_nonfinite=allow_nonfinite), spec
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def read_state_file(path: Union[str, os.PathLike]) -> tuple[dict[str, np.ndarray], Unit]:
    """The tensors (as stored, not yet validated) and the spec of a :func:`save_state` file.

    Raises ``ValueError`` naming the file when it is missing, empty, not safetensors (truncated,
    corrupt) or has no readable spec in its metadata.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: file is empty")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    if "spec" not in meta:
        raise ValueError(f"{path}: safetensors file has no 'spec' metadata; "
                         "was it written by resnet-parity?")
    try:
        return tensors, spec_from_json(meta["spec"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from None
