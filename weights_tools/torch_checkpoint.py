"""PyTorch checkpoints (`pytorch_model.bin`), read from scratch and safely, without importing torch.

What this module adds: `open_torch_checkpoint(path)` reads the state dict of a `torch.save` file into a
`TorchCheckpoint`, a read-only mapping name -> NumPy array with the interface of weights_tools.safetensors'
SafetensorsFile (`info(name)` gives the safetensors dtype name, "F32", "BF16", ..., the shape and the bytes), so every
reader of a safetensors checkpoint reads a .bin alike (weights_tools/checkpoint.py picks the file of a directory).
Every malformed or hostile file raises `TorchCheckpointError`, whose message names the file and the problem, when it
is opened: once open, every tensor is known to lie inside its storage and every storage inside the file.

The format (torch/serialization.py, `_save`, torch >= 1.6): a zip archive whose members all sit under one folder,

    archive/data.pkl        the pickled state dict; each tensor's storage is a *persistent id*
                              ('storage', torch.FloatStorage, '0', 'cpu', 4096) = (kind, type, key, location, numel)
    archive/data/0, ...     the raw bytes of storage '0', ... (C-order elements, little-endian), stored uncompressed
    archive/byteorder       "little" (absent in files older than torch 1.9: little-endian then too)
    archive/version         the format version

and each tensor in data.pkl is `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`: a strided view
of a storage, so tied weights (GPT-2's lm_head.weight and transformer.wte.weight) share one storage and are stored
once; here both names read the same bytes.

Why not `pickle.load`: unpickling calls whatever callable the pickle names (REDUCE), so a pickle can run
`os.system(...)`. Here `find_class` resolves only the few globals a tensor checkpoint needs, each to a small stand-in
of our own, and refuses every other global by name before anything is called, as PyTorch's `weights_only` loader does
(torch/_weights_only_unpickler.py). The stand-ins check their arguments: a view must lie inside its storage, and a
storage inside the file.

Storages are memory-mapped: torch.save stores every member uncompressed (ZIP_STORED), so a storage is a slice of the
file at the member's data offset, which the member's local file header gives. Opening reads the pickle only; a
tensor's bytes are read when it is indexed, as for a safetensors file. A compressed member is refused: torch
never writes one, and refusing it means no declared size is ever inflated (no zip bomb).

bfloat16: NumPy has no bf16 type; a bf16 value is the top 16 bits of a float32, so indexing a BF16 tensor shifts the
bits up into a new float32 array, exactly, as weights_tools.safetensors does.
"""
from __future__ import annotations

import collections
import io
import math
import os
import pickle
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np

from nanollm.files import open_regular

from . import safetensors  # the module, not its names: see weights_tools/__init__.py

SINGLE_FILE_NAME = "pytorch_model.bin"  # transformers' WEIGHTS_NAME and WEIGHTS_INDEX_NAME
INDEX_FILE_NAME = "pytorch_model.bin.index.json"
MAX_PICKLE_BYTES = 100_000_000  # as safetensors' MAX_HEADER_BYTES: a state dict's pickle is ~100 bytes a tensor
_LOCAL_HEADER_BYTES = 30  # the fixed part of a zip local file header (APPNOTE.TXT 4.3.7)
_LOCAL_HEADER_SIGNATURE = b"PK\x03\x04"

# The legacy storage types torch.save names in each persistent id (torch/storage.py, `_pickle_storage_type`) -> the
# safetensors name of the dtype (what info() reports) and the NumPy dtype of the stored elements.
_STORAGE_DTYPES: dict[str, tuple[str, np.dtype]] = {
    "DoubleStorage": ("F64", np.dtype("<f8")),
    "FloatStorage": ("F32", np.dtype("<f4")),
    "HalfStorage": ("F16", np.dtype("<f2")),
    "BFloat16Storage": ("BF16", np.dtype("<u2")),  # raw 16-bit patterns, widened to float32 when indexed
    "LongStorage": ("I64", np.dtype("<i8")),
    "IntStorage": ("I32", np.dtype("<i4")),
    "ShortStorage": ("I16", np.dtype("<i2")),
    "CharStorage": ("I8", np.dtype("i1")),
    "ByteStorage": ("U8", np.dtype("u1")),
    "BoolStorage": ("BOOL", np.dtype(np.bool_)),
}


class TorchCheckpointError(ValueError):
    """A PyTorch checkpoint is malformed or asks for something unsafe; the message names the file."""


def _error(path: str | os.PathLike, problem: str) -> TorchCheckpointError:
    return TorchCheckpointError(f"{os.fspath(path)}: {problem}")


class _StorageType(NamedTuple):
    """Stand-in for torch.FloatStorage and friends: only its name and element type matter."""

    name: str  # "FloatStorage"
    dtype: str  # the safetensors name, "F32"
    elements: np.dtype  # how the stored elements read: float32; uint16 bit patterns for BF16


class _Storage(NamedTuple):
    """One storage: its elements as a flat array, e.g. (4096,) float32 viewing the mapped file."""

    key: str
    elements: np.ndarray  # (numel,); uint16 bit patterns for BF16
    dtype: str  # the safetensors name, "F32", "BF16", ...


class _View(NamedTuple):
    """One tensor as data.pkl describes it: the strided view storage[offset + sum(i_k * stride_k)] of `size`,
    checked to lie inside its storage; its elements are read only when the tensor is indexed."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


# ----------------------------------------------------------------------------------------------------------------
# The archive


def open_torch_checkpoint(path: str | os.PathLike) -> TorchCheckpoint:
    """A torch.save file of a state dict -> TorchCheckpoint. Unpickles and checks every tensor now; tensor data stays
    on disk until a tensor is indexed."""
    path = Path(path)
    with open_regular(path) as f:  # a FIFO or /dev/zero is refused here, before a byte is read
        file_size = os.fstat(f.fileno()).st_size
        magic = f.read(4)
        if magic != _LOCAL_HEADER_SIGNATURE:
            raise _error(path, _not_zip(magic))
        try:
            with zipfile.ZipFile(f) as z:  # reads the central directory only; closing it leaves `f` open
                members = {info.filename: info for info in z.infolist()}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:  # truncated, or a corrupt directory
            raise _error(path, f"not a readable zip archive ({e}); truncated?") from None
        # the map keeps its own handle on the file; a valid zip is never empty
        data = np.memmap(f, dtype=np.uint8, mode="r", shape=(file_size,))
    archive = _Archive(path, data, members)
    state = _Unpickler(archive).load_state()
    return TorchCheckpoint(path, _check_state_dict(path, state))


def _not_zip(magic: bytes) -> str:
    if magic[:1] == b"\x80":  # a pickle's PROTO opcode: torch.save before 1.6 wrote pickles one after another
        return "an old-format torch.save file: re-save it with torch >= 1.6 or convert it"
    return f"not a torch.save zip archive (it starts with {magic!r}, not {_LOCAL_HEADER_SIGNATURE!r})"


class _Archive:
    """The members of one torch.save zip, as slices of the mapped file."""

    def __init__(self, path: Path, data: np.ndarray, members: dict[str, zipfile.ZipInfo]):
        self.path, self._data, self._members = path, data, members
        pickles = [name for name in members if name.endswith("/data.pkl") and name.count("/") == 1]
        if len(pickles) != 1:
            raise _error(path, f"expected one <folder>/data.pkl in the archive, found {len(pickles)} "
                               f"(members: {sorted(members)[:5]!r:.200})")
        self.prefix = pickles[0][: -len("data.pkl")]  # "archive/"
        byteorder = self.member(self.prefix + "byteorder", optional=True)
        if byteorder is not None and bytes(byteorder) != b"little":
            raise _error(path, f"byteorder is {bytes(byteorder)[:20]!r}; only little-endian checkpoints are read")

    def member(self, name: str, *, optional: bool = False) -> np.ndarray | None:
        """The bytes of member `name`: (file_size,) uint8, a view of the mapped file."""
        info = self._members.get(name)
        if info is None:
            if optional:
                return None
            raise _error(self.path, f"the archive has no member {name!r}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise _error(self.path, f"member {name!r} is compressed (zip method {info.compress_type}); torch.save "
                                    "stores every member uncompressed")
        begin = self._data_offset(info)
        end = begin + info.file_size
        if end > len(self._data) or info.compress_size != info.file_size:
            raise _error(self.path, f"member {name!r} declares {info.file_size} bytes at offset {begin}, past the "
                                    f"end of the {len(self._data)}-byte file (truncated, or a zip bomb?)")
        return self._data[begin:end]

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a member's bytes start: after its local header, whose name and extra field lengths may differ
        from the central directory's (APPNOTE.TXT 4.3.7: signature, ..., name length @26, extra length @28)."""
        start = info.header_offset
        header = bytes(self._data[start:start + _LOCAL_HEADER_BYTES])
        if len(header) < _LOCAL_HEADER_BYTES or header[:4] != _LOCAL_HEADER_SIGNATURE:
            raise _error(self.path, f"member {info.filename!r}: no local file header at offset {start}")
        name_length = int.from_bytes(header[26:28], "little")
        extra_length = int.from_bytes(header[28:30], "little")
        return start + _LOCAL_HEADER_BYTES + name_length + extra_length


# ----------------------------------------------------------------------------------------------------------------
# The pickle


class _Unpickler(pickle.Unpickler):
    """Unpickles data.pkl, resolving only the globals of a tensor checkpoint to our stand-ins (see module docs)."""

    def __init__(self, archive: _Archive):
        self.archive = archive
        pkl = archive.member(archive.prefix + "data.pkl")
        if len(pkl) > MAX_PICKLE_BYTES:
            raise _error(archive.path, f"data.pkl is {len(pkl)} bytes, over the limit of {MAX_PICKLE_BYTES}")
        super().__init__(io.BytesIO(bytes(pkl)))
        self._storages: dict[str, _Storage] = {}
        storage_types = {("torch", name): _StorageType(name, *dtypes) for name, dtypes in _STORAGE_DTYPES.items()}
        self._globals = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            **storage_types,
        }

    def load_state(self) -> object:
        try:
            return self.load()
        except TorchCheckpointError:
            raise
        except Exception as e:  # noqa: BLE001 -- a malformed pickle fails in many ways (opcodes, EOF, arguments)
            raise _error(self.archive.path, f"data.pkl is not a valid checkpoint pickle ({type(e).__name__}: "
                                            f"{e!s:.200})") from None

    def find_class(self, module: str, name: str) -> object:
        """Every global the pickle names passes here (GLOBAL, STACK_GLOBAL, INST, OBJ) before anything is called."""
        found = self._globals.get((module, name))
        if found is None:
            raise _error(self.archive.path, f"data.pkl names the global {module}.{name}, which a tensor checkpoint "
                                            "never needs; refusing it (unpickling it could run code)")
        return found

    def persistent_load(self, pid: object) -> _Storage:
        """('storage', storage type, key, location, numel) -> the storage's elements, read once per key."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and type(pid[4]) is int):
            raise _error(self.archive.path, f"data.pkl has a persistent id {pid!r:.120} that is not "
                                            "('storage', <storage type>, key, location, numel)")
        _, storage_type, key, _location, numel = pid  # location ("cpu", "cuda:0") does not matter: we read bytes
        if key not in self._storages:
            self._storages[key] = self._read_storage(storage_type, key, numel)
        return self._storages[key]

    def _read_storage(self, storage_type: _StorageType, key: str, numel: int) -> _Storage:
        raw = self.archive.member(f"{self.archive.prefix}data/{key}")  # (nbytes,) uint8
        itemsize = storage_type.elements.itemsize
        if len(raw) != numel * itemsize:
            raise _error(self.archive.path, f"storage {key!r} ({storage_type.name}) holds {len(raw)} bytes, "
                                            f"its {numel} elements need {numel * itemsize}")
        return _Storage(key, raw.view(storage_type.elements), storage_type.dtype)  # elements: (numel,)

    def _rebuild_tensor_v2(self, storage: _Storage, offset: int, size: tuple, stride: tuple, *_rest) -> _View:
        """As torch._utils._rebuild_tensor_v2: the strided view storage[offset + sum(i_k * stride_k)] of `size`,
        checked here and read when indexed (TorchCheckpoint.__getitem__). The trailing arguments (requires_grad,
        backward hooks, metadata) do not change the values."""
        path = self.archive.path
        if not isinstance(storage, _Storage):
            raise _error(path, f"a tensor is built from {type(storage).__name__}, not from a storage")
        if not (_is_index(offset) and isinstance(size, tuple) and isinstance(stride, tuple)
                and len(size) == len(stride) and all(map(_is_index, size + stride))):
            raise _error(path, f"a tensor of storage {storage.key!r} has offset {offset!r:.40}, size {size!r:.80}, "
                               f"stride {stride!r:.80}: not non-negative integers of one length")
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))  # the highest element the view reads
        if 0 not in size and last >= len(storage.elements):
            raise _error(path, f"a tensor of size {size} and stride {stride} at offset {offset} reads element {last} "
                               f"of storage {storage.key!r}, which has {len(storage.elements)}")
        return _View(storage, offset, size, stride)


def _rebuild_parameter(data: _View, _requires_grad: bool, _backward_hooks: object) -> _View:
    """As torch._utils._rebuild_parameter: an nn.Parameter is its tensor plus a flag we do not need."""
    return data


def _is_index(value: object) -> bool:
    """A non-negative int (bool is a subclass of int: True must not pass as 1)."""
    return type(value) is int and value >= 0


def _check_state_dict(path: Path, state: object) -> dict[str, _View]:
    """The unpickled object must be a flat {str: tensor} mapping, as model.state_dict() and save_pretrained give."""
    if not isinstance(state, dict):
        raise _error(path, f"holds a {type(state).__name__}, not a state dict of name -> tensor")
    for name, value in state.items():
        if not isinstance(name, str) or not isinstance(value, _View):
            raise _error(path, f"entry {name!r:.80} is a {type(value).__name__}, not a tensor (a training "
                               "checkpoint wrapping the state dict? save model.state_dict() alone)")
    return dict(state)


# ----------------------------------------------------------------------------------------------------------------
# The tensors


class TorchCheckpoint(Mapping):
    """One checked torch.save state dict: a read-only mapping name -> np.ndarray, plus info() and metadata, as
    weights_tools.safetensors.SafetensorsFile.

    ckpt[name] is a view of the memory-mapped file (read-only, no copy) when the tensor is a contiguous run of its
    storage, as every parameter of a model's state dict is; a strided tensor (a transpose saved as such) comes back
    as a contiguous copy, and BF16, which NumPy lacks, as a new float32 array. Two names of one storage (tied
    weights) read the same bytes. Names iterate in sorted order, as SafetensorsFile's do.
    """

    def __init__(self, path: Path, views: dict[str, _View]):
        self.path = path
        self.metadata: dict[str, str] = {}  # a .bin has no counterpart of safetensors' "__metadata__"
        self._views = views

    def info(self, name: str) -> safetensors.TensorInfo:
        """E.g. TensorInfo("lm_head.weight", "BF16", (64, 32), 4096): nbytes are the tensor's own stored bytes."""
        view = self._views[name]
        itemsize = view.storage.elements.itemsize
        return safetensors.TensorInfo(name, view.storage.dtype, view.size, math.prod(view.size) * itemsize)

    def __getitem__(self, name: str) -> np.ndarray:
        storage, offset, size, stride = self._views[name]  # KeyError for an unknown name, as for any mapping
        elements = storage.elements  # (numel,)
        if 0 in size:
            array = np.zeros(size, elements.dtype)
        else:
            array = np.lib.stride_tricks.as_strided(elements[offset:], shape=size, writeable=False,
                                                    strides=[s * elements.itemsize for s in stride])
        # a copy only when strided (np.ascontiguousarray would also turn a 0-d scalar into shape (1,))
        array = array if array.flags.c_contiguous else array.copy(order="C")
        if storage.dtype == "BF16":
            bits = array.astype(np.uint32)  # (*size,)
            bits <<= 16  # bf16 bits are a float32's high half (in place: `<<` would turn a 0-d array into a scalar)
            return bits.view(np.float32)
        return array

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._views))

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, name: object) -> bool:
        return name in self._views

    def __repr__(self) -> str:
        return f"TorchCheckpoint({str(self.path)!r}, {len(self)} tensors)"
