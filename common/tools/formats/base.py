"""What every checkpoint format shares: the :class:`Format` contract, torchvision's key names,
safe raw readers (HDF5, MXNet's NDArray file parsed without MXNet), the checks that name the
file, and atomic writing (:class:`Staging`). The formats themselves live beside this module;
:mod:`common.tools.formats` lists them and picks one for a file.
"""


from __future__ import annotations

import importlib
import os
import re
import shutil
import struct
import tempfile
import zipfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from ...core.preprocess import Preprocessing
from ...core.spec import ConvNeXtSpec, Layer, Unit, unit_name
from ...core.state import State, check_tensors, publish, validate_state
from ..registry import BackendUnavailable, install_hint

PathLike = Union[str, os.PathLike]
RUNNING_STATS = ("running_mean", "running_var")


# -- key names ---------------------------------------------------------------------------------
# PyTorch calls BatchNorm's gamma and beta "weight" and "bias"; running statistics keep their names.
TORCH_PARAM = {"gamma": "weight", "beta": "bias"}
_TV_BLOCK = re.compile(r"stages\.(\d+)\.(\d+)\.(conv[123]|bn[123]|shortcut|shortcut_bn)$")
_TV_LAYER = {"stem.conv": "conv1", "stem.bn": "bn1", "head.fc": "fc"}
_TV_SUB = {"shortcut": "downsample.0", "shortcut_bn": "downsample.1"}


def torchvision_module(layer: str) -> str:
    """torchvision's module path for a canonical layer name.

    ``stem.conv`` -> ``conv1``, ``stem.bn`` -> ``bn1``, ``stages.1.0.conv1`` -> ``layer2.0.conv1``,
    ``stages.1.0.shortcut`` -> ``layer2.0.downsample.0``, ``stages.1.0.shortcut_bn`` ->
    ``layer2.0.downsample.1``, ``head.fc`` -> ``fc``.
    """
    if layer in _TV_LAYER:
        return _TV_LAYER[layer]
    m = _TV_BLOCK.match(layer)
    if m is None:
        raise ValueError(f"{layer!r} has no torchvision counterpart")
    stage, block, sub = m.groups()
    return f"layer{int(stage) + 1}.{block}.{_TV_SUB.get(sub, sub)}"


# torchvision's ConvNeXt: ``features`` alternates stems/downsamplings (even indices, a Sequential
# of norm and conv, the stem's conv first) and stages (odd indices, CNBlocks whose ``block`` is
# Sequential(dwconv, Permute, norm, Linear, GELU, Linear, Permute) beside ``layer_scale``);
# ``classifier`` is Sequential(LayerNorm2d, Flatten, Linear).
_TV_CONVNEXT_LAYER = {"stem.conv": "features.0.0", "stem.norm": "features.0.1",
                      "head.norm": "classifier.0", "head.fc": "classifier.2"}
_TV_CONVNEXT_DOWN = re.compile(r"stages\.(\d+)\.downsample\.(norm|conv)$")
_TV_CONVNEXT_BLOCK = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(dwconv|norm|pwconv1|pwconv2|layer_scale)$")
_TV_CONVNEXT_SUB = {"dwconv": "block.0", "norm": "block.2", "pwconv1": "block.3",
                    "pwconv2": "block.5", "layer_scale": "layer_scale"}


def torchvision_convnext_module(layer: str) -> str:
    """torchvision's module path for a canonical ConvNeXt layer name: ``stem.conv`` ->
    ``features.0.0``, ``stages.1.downsample.conv`` -> ``features.2.1``,
    ``stages.1.blocks.0.pwconv1`` -> ``features.3.0.block.3``, ``stages.1.blocks.0.layer_scale``
    -> ``features.3.0.layer_scale`` (a parameter itself), ``head.fc`` -> ``classifier.2``."""
    if layer in _TV_CONVNEXT_LAYER:
        return _TV_CONVNEXT_LAYER[layer]
    m = _TV_CONVNEXT_DOWN.match(layer)
    if m:
        return f"features.{2 * int(m.group(1))}.{0 if m.group(2) == 'norm' else 1}"
    m = _TV_CONVNEXT_BLOCK.match(layer)
    if m is None:
        raise ValueError(f"{layer!r} has no torchvision ConvNeXt counterpart")
    stage, block, sub = m.groups()
    return f"features.{2 * int(stage) + 1}.{block}.{_TV_CONVNEXT_SUB[sub]}"


def torch_param(layer: Layer, p: str) -> str:
    """PyTorch's name of canonical parameter ``p``: LayerNorm's and BatchNorm's gamma and beta are
    ``weight`` and ``bias``; the rest keep their names."""
    return TORCH_PARAM.get(p, p) if layer.kind in ("bn", "ln") else p


def torchvision_shape(layer: Layer, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A parameter's shape in torchvision: ConvNeXt's layer scale is ``(C, 1, 1)`` there (it
    scales NCHW), ``(C,)`` canonically (and in Hugging Face)."""
    return shape + (1, 1) if layer.kind == "scale" else shape


def attr_path(layer: Layer) -> str:
    """A layer's attribute path (``stages.1.0.conv3``): its module name in resnet_torch's
    ``state_dict`` and in Gluon's ``save_parameters`` files."""
    return ".".join(str(a) for a in layer.attr)


def torch_keys(spec: Unit, torchvision: bool = False) -> dict[str, str]:
    """Canonical parameter name -> state_dict key, in the spec's (and torchvision's) order."""
    tv_module = torchvision_convnext_module if isinstance(spec, ConvNeXtSpec) else torchvision_module
    out = {}
    for layer in spec.layers():
        module = tv_module(layer.name) if torchvision else attr_path(layer)
        for p in layer.shapes:
            tv_scale = torchvision and layer.kind == "scale"  # the parameter is the module path
            out[f"{layer.name}.{p}"] = module if tv_scale else f"{module}.{torch_param(layer, p)}"
    return out


def torch_bn_counters(spec: Unit, torchvision: bool = False) -> list[str]:
    """The ``num_batches_tracked`` keys PyTorch adds for every BatchNorm (not canonical state)."""
    return [f"{torchvision_module(layer.name) if torchvision else attr_path(layer)}"
            ".num_batches_tracked" for layer in spec.layers() if layer.kind == "bn"]


def looks_torchvision(keys: Iterable[str]) -> bool:
    """Whether state_dict keys use torchvision's names (``conv1.weight``, ``layer1.0...``; a
    ConvNeXt's ``features.0.0.weight``, ``classifier.2.weight``)."""
    keys = list(keys)
    resnet = any(k.startswith(("conv1.", "bn1.", "layer1.", "fc.")) for k in keys)
    convnext = any(k.startswith("features.0.0.") for k in keys) and any(
        k.startswith("classifier.") for k in keys)
    return (resnet or convnext) and not any(k.startswith("stem.") for k in keys)


# -- errors and small helpers ------------------------------------------------------------------
def _first_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).strip().splitlines()[:1]) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _unreadable(path: Path, what: str, e: BaseException) -> ValueError:
    return ValueError(f"{path}: not a readable {what} ({type(e).__name__}: {_first_line(e)})")


def _existing_file(path: Path) -> Path:
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: file is empty")
    return path


def _require(module: str, framework: str) -> Any:
    """Import ``module`` (a framework or its file library) or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BackendUnavailable(install_hint(framework)) from e


def _fits(path: Path, raw: Mapping[str, np.ndarray], expected: Mapping[str, tuple],
          spec: Unit, what: str, allow_nonfinite: bool, optional: Iterable[str] = ()) -> State:
    """:func:`check_tensors` with a message naming the file, its format and the spec."""
    return check_tensors(raw, expected, allow_nonfinite=allow_nonfinite, optional=set(optional),
                         what=f"{path}: {what} does not fit spec {unit_name(spec)!r}")


def _canonical(path: Path, state: Mapping[str, np.ndarray], spec: Unit,
               allow_nonfinite: bool) -> State:
    try:
        return validate_state(state, spec, allow_nonfinite=allow_nonfinite)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


# -- the formats -------------------------------------------------------------------------------
class Format(ABC):
    """One checkpoint file format; see the module docstring for the list."""

    name: str = ""            # canonical, torch, torchvision, keras-weights, keras, gluon-...
    family: str = ""          # what --from / --to say: canonical, torch, torchvision, tf, mxnet
    framework: Optional[str] = None  # the backend that reads and writes it (None: no framework)
    suffixes: tuple[str, ...] = ()
    description: str = ""
    carries_spec: bool = False
    spec_origin: str = "the stored spec"  # where spec() finds it, for inspect's wording
    spec_inferred: bool = False  # spec() reads it off names and shapes: --spec/--arch override
    directory: bool = False   # a checkpoint is a directory of files (Hugging Face), not a file
    carries_preprocessing: bool = False  # stores how images become input; write() takes it

    def __repr__(self) -> str:
        return f"<format {self.name}>"

    def files(self, path: Path, writing: bool = False) -> list[Path]:
        """Every file the checkpoint at ``path`` consists of (one, or a symbol+params pair)."""
        return [path]

    def spec(self, path: Path) -> Optional[Unit]:
        """The spec stored in the file, where the format stores one."""
        return None

    def preprocessing(self, path: Path) -> Optional[Preprocessing]:
        """How images become the model's input, where the format stores it (a canonical file's
        metadata, a Hugging Face ``preprocessor_config.json``); formats that store it set
        ``carries_preprocessing`` and take ``preprocessing=`` in :meth:`write`."""
        return None

    def takes_preprocessing(self, preprocessing: Preprocessing) -> bool:
        """Whether :meth:`write` can store ``preprocessing``."""
        return self.carries_preprocessing

    @abstractmethod
    def tensors(self, path: Path) -> dict[str, np.ndarray]:
        """The raw tensors under the file's own names and layouts; never runs code from it."""

    def refine(self, tensors: Mapping[str, np.ndarray]) -> "Format":
        """The precise format once the tensors are known (a torch file with torchvision keys)."""
        return self

    @abstractmethod
    def read(self, path: Path, spec: Unit, *, allow_nonfinite: bool = False,
             tensors: Optional[Mapping[str, np.ndarray]] = None) -> State:
        """The canonical state, after checking every key and shape against ``spec``."""

    @abstractmethod
    def write(self, path: Path, state: State, spec: Unit) -> None:
        """Write ``state`` at ``path`` (and its siblings, see :meth:`files`); not atomic."""

    def graph_forward(self, path: Path, x: np.ndarray) -> Optional[np.ndarray]:
        """Run the computation the file itself stores (a whole-model format) on NCHW ``x``."""
        return None

    def fits(self, tensors: Mapping[str, np.ndarray], spec: Unit) -> Optional[bool]:
        """Whether ``tensors`` hold exactly ``spec``'s keys and shapes in this format; None where
        only a framework could tell (the check then happens when the file is read)."""
        return None

    def target(self, spec: Unit) -> Unit:
        """The spec whose function a file of this format computes when ``spec``'s state is
        written into it: ``spec`` itself, except for code with a fixed function (d2l's chapter
        code). ``ValueError`` where the format cannot hold ``spec`` at all."""
        return spec

    def replaceable(self, path: Path) -> bool:
        """Whether ``--force`` may replace the existing directory ``path`` (directory formats:
        only one that holds a checkpoint of this format, never an arbitrary directory)."""
        return False




def keras_archive_member(path: Path, name: str) -> bytes:
    """One member of a Keras ``.keras`` zip archive (``config.json``, ``model.weights.h5``),
    with a one-line error naming the file for a missing member or a damaged archive."""
    _existing_file(path)
    try:
        with zipfile.ZipFile(path) as z:
            return z.read(name)
    except KeyError:
        raise ValueError(f"{path}: not a Keras .keras archive (no {name} inside)") from None
    except Exception as e:  # BadZipFile, truncated members, CRC errors
        raise _unreadable(path, "Keras .keras archive", e) from None


def _h5_tensors(source: Any, path: Path, what: str) -> dict[str, np.ndarray]:
    h5py = _require("h5py", "tf")
    out: dict[str, np.ndarray] = {}
    try:
        with h5py.File(source, "r") as f:
            def visit(name: str, obj: Any) -> None:
                if isinstance(obj, h5py.Dataset):
                    out[name] = np.asarray(obj[()])
            f.visititems(visit)
    except Exception as e:  # OSError for a bad signature, others for damaged structures
        raise _unreadable(path, what, e) from None
    return out



# -- writing, atomically -------------------------------------------------------------------------
class Staging:
    """Hidden temporary files beside DST, renamed into place by :meth:`commit`, removed otherwise.

    Refuses to stage over existing files unless ``force``; handles multi-file formats (the
    Gluon symbol+params pair) by staging and renaming every file, and directory formats (Hugging
    Face) by staging a hidden directory.
    """

    def __init__(self, fmt: Format, dst: Path, force: bool) -> None:
        self.targets = fmt.files(dst, writing=True)
        check_targets(self.targets, force, fmt)
        if fmt.directory:
            self.path = Path(tempfile.mkdtemp(prefix=".convert-", suffix=f"-{dst.name}",
                                              dir=dst.parent))
        else:
            fd, tmp = tempfile.mkstemp(prefix=".convert-", suffix=f"-{dst.name}", dir=dst.parent)
            os.close(fd)
            self.path = Path(tmp)
        self.temps = fmt.files(self.path, writing=True)
        self.committed = False

    def commit(self) -> list[Path]:
        # the data file first, the entry file (symbol) last: whoever sees it sees both
        for tmp, target in reversed(list(zip(self.temps, self.targets))):
            if tmp.is_dir():
                _publish_dir(tmp, target)
            else:
                publish(tmp, target)
        self.committed = True
        return self.targets

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc: Any) -> None:
        for tmp in self.temps:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()


def _publish_dir(tmp: Path, target: Path) -> None:
    """Rename the finished directory ``tmp`` onto ``target``. A directory cannot replace
    another in one rename, so an existing ``target`` is first renamed aside, then removed; if
    the second rename fails, it is put back."""
    mask = os.umask(0o022)
    os.umask(mask)
    os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it private, 0700
    for file in tmp.iterdir():    # and some writers (safetensors) make their files 0600
        if file.is_file():
            os.chmod(file, 0o666 & ~mask)
    if not target.exists():
        os.replace(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=".convert-old-", dir=target.parent))
    os.replace(target, old / target.name)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old / target.name, target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def check_targets(targets: Sequence[Path], force: bool, fmt: Optional[Format] = None) -> None:
    """Refuse a DST whose directory is missing, that is a directory (for a directory format
    ``fmt``: a file, or a directory ``fmt`` may not replace), or that exists (unless ``force``),
    naming every such file."""
    for parent in dict.fromkeys(t.parent for t in targets):
        if not parent.is_dir():
            raise ValueError(f"{targets[0]}: no such directory {parent}")
    directory = fmt is not None and fmt.directory
    wrong = [str(t) for t in targets if (t.is_file() if directory else t.is_dir())]
    if wrong:
        raise ValueError(f"{', '.join(wrong)}: is a {'file' if directory else 'directory'}, "
                         f"not a {'directory' if directory else 'file'} name")
    existing = [str(t) for t in targets if t.exists()]
    if existing and not force:
        raise ValueError(f"{', '.join(existing)}: already exist{'s' if len(existing) == 1 else ''}"
                         "; pass --force to overwrite")
    foreign = [str(t) for t in targets if directory and t.is_dir() and not fmt.replaceable(t)]
    if foreign:
        raise ValueError(f"{', '.join(foreign)}: a directory that holds other things than a "
                         f"{fmt.description}; refusing to replace it, even with --force")


# -- MXNet's NDArray file, parsed without MXNet --------------------------------------------------
_LIST_MAGIC = 0x112
_NDARRAY_MAGIC = {0xF993FAC9: "v2", 0xF993FACA: "v3"}
_MX_DTYPES = {0: np.float32, 1: np.float64, 2: np.float16, 3: np.uint8, 4: np.int32, 5: np.int8,
              6: np.int64, 7: np.bool_}


class _Reader:
    """Bounds-checked little-endian reads: a damaged length can never allocate past the file."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"truncated: needs {n} bytes at offset {self.pos}, "
                             f"{len(self.data) - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> Any:
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))
        return values[0] if len(values) == 1 else values


def read_ndarray_file(path: PathLike) -> dict[str, np.ndarray]:
    """The named arrays of an MXNet ``.params`` file (``mx.nd.save``, ``save_parameters``,
    ``export``), parsed in Python with every length checked against the file's size.

    Dense arrays (format v2 and v3) only, which is what Gluon writes. Raises ``ValueError``
    naming the file for anything else.
    """
    path = _existing_file(Path(path))
    r = _Reader(path.read_bytes())
    try:
        magic, _reserved = r.unpack("QQ")
        if magic != _LIST_MAGIC:
            raise ValueError(f"bad magic number {magic:#x}, expected {_LIST_MAGIC:#x}")
        count = r.unpack("Q")
        if count > len(r.data) // 24:
            raise ValueError(f"claims {count} arrays, more than the file can hold")
        arrays = [_read_ndarray(r, i) for i in range(count)]
        n_names = r.unpack("Q")
        if n_names != count:
            raise ValueError(f"{count} arrays but {n_names} names")
        names = []
        for _ in range(n_names):
            length = r.unpack("Q")
            names.append(r.take(length).decode("utf-8"))
        if r.pos != len(r.data):
            raise ValueError(f"{len(r.data) - r.pos} unexpected bytes after the names")
        if len(set(names)) != len(names):
            raise ValueError("duplicate array names")
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable MXNet parameters file ({_first_line(e)})"
                         ) from None
    return dict(zip(names, arrays))


def _read_ndarray(r: _Reader, i: int) -> np.ndarray:
    magic = r.unpack("I")
    if magic not in _NDARRAY_MAGIC:
        raise ValueError(f"array {i}: unsupported NDArray magic {magic:#x} (legacy format?)")
    stype = r.unpack("i")
    if stype != 0:
        raise ValueError(f"array {i}: sparse storage (type {stype}) is not supported")
    ndim = r.unpack("i")
    if not 0 < ndim <= 32:
        raise ValueError(f"array {i}: bad number of dimensions {ndim}")
    shape = r.unpack(f"{ndim}q") if ndim > 1 else (r.unpack("q"),)
    if any(d < 0 for d in shape):
        raise ValueError(f"array {i}: bad shape {shape}")
    _dev_type, _dev_id, flag = r.unpack("iii")
    dtype = _MX_DTYPES.get(flag)
    if dtype is None:
        raise ValueError(f"array {i}: unsupported dtype flag {flag}")
    size = int(np.prod(shape, dtype=object))
    data = r.take(size * np.dtype(dtype).itemsize)
    return np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).copy()
