"""Safetensors, read and written from scratch: the file format every Hugging Face checkpoint uses.

What this module adds: `open_safetensors` parses and validates one file's header and hands out tensors as NumPy views
of the file mapped into memory (no copies, nothing read until used); `open_checkpoint` does the same across the
shards of a `model.safetensors.index.json`; `save_safetensors` / `save_sharded` write the files the reference
library writes, byte for byte. Every malformed file raises `SafetensorsError`, whose message names the file and the problem.

The format (https://github.com/huggingface/safetensors, README "Format", and `safetensors/src/tensor.rs`):

    bytes [0, 8)         N, the header length: an unsigned 64-bit little-endian integer
    bytes [8, 8 + N)     the header: UTF-8 JSON, one object
                           {"__metadata__": {"format": "pt"},                      <- optional, str -> str
                            "wte.weight": {"dtype": "F32", "shape": [64, 32], "data_offsets": [0, 8192]}, ...}
    bytes [8 + N, end)   the byte buffer; data_offsets = [begin, end) are relative to its start

Tensors are stored C-order and little-endian. Rules we enforce, all taken from the reference reader (tensor.rs,
`read_metadata` and `Metadata::validate`, checked against safetensors 0.8's behaviour in tests/test_safetensors.py):
  - the header is at most 100,000,000 bytes (the reference's MAX_HEADER_SIZE) and fits inside the file;
  - every entry has a known dtype, a shape of non-negative integers and prod(shape) * itemsize == end - begin;
  - sorted by offset, the tensors tile the buffer exactly: the first starts at 0, each starts where the previous one
    ended, the last ends at the end of the file. So overlaps are errors, and so are holes and trailing bytes: the
    reference rejects a gap between tensors ("invalid offset") and bytes after the last one ("incomplete metadata,
    file not fully covered"), and so do we. Zero-sized tensors take no room and may share an offset.
  - one deliberate difference: a name that appears twice in the header is an error here. The reference's JSON parser
    silently keeps the last one, which would hide a broken writer.
Unknown keys inside an entry are ignored, as the reference does.

Writing follows the reference writer (tensor.rs, `prepare`): tensors are laid out by decreasing alignment (the order
of the `_DTYPES` table below, reversed), then by name, so each tensor starts at a multiple of its itemsize once the
header is padded with spaces to a multiple of 8 bytes. The JSON is compact, `__metadata__` first, its keys sorted
(the reference writes them in hash order, so files match it byte for byte when metadata has at most one key).
Saving no tensors with metadata {} gives `{"__metadata__":{}}`, where safetensors 0.8 writes an unreadable header.
The writer refuses what the reader refuses, before writing a byte: a header over MAX_HEADER_BYTES (as the reference
writer does), a `tensors` that is not a mapping, names that are not str, `__metadata__` or not valid Unicode,
values that are not NumPy arrays (SafetensorsError, where the reference raises AttributeError or TypeError).
Every file is written atomically (nanollm.files.atomic_write): a failed save leaves the previous file as it was.

bfloat16: NumPy has no bf16 type. A bf16 value is the top 16 bits of a float32, so reading shifts the bits up
(exact); writing rounds a float32 to the nearest bf16, ties to even, as PyTorch does, and maps every NaN to 0x7FC0
as PyTorch's scalar `round_to_nearest_even` does (torch/headeronly/util/BFloat16.h; its vectorised CPU kernel
writes 0xFFFF instead: any NaN pattern is a NaN).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

from nanollm.files import atomic_write, open_regular, read_bytes

HEADER_LENGTH_BYTES = 8
MAX_HEADER_BYTES = 100_000_000
METADATA_KEY = "__metadata__"
SINGLE_FILE_NAME = "model.safetensors"
INDEX_FILE_NAME = "model.safetensors.index.json"

# Every dtype we read and write, in the reference's `Dtype` enum order (increasing alignment; the writer sorts by
# the reverse). BF16 is stored as raw 16-bit patterns and converted by hand; FP8/FP4 have no NumPy type and are
# rejected as unsupported.
_DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
}
_WRITE_ORDER = {name: rank for rank, name in enumerate(_DTYPES)}
_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


class SafetensorsError(ValueError):
    """A safetensors file or checkpoint is malformed (or cannot be written); the message names the file."""


def _error(path: str | os.PathLike, problem: str) -> SafetensorsError:
    return SafetensorsError(f"{os.fspath(path)}: {problem}")


class TensorInfo(NamedTuple):
    """What the header says about one tensor, e.g. TensorInfo("wte.weight", "BF16", (64, 32), 4096)."""

    name: str
    dtype: str  # the safetensors name: "F32", "BF16", ...
    shape: tuple[int, ...]
    nbytes: int  # bytes in the file (2 per element for BF16, although reading yields float32)


class _Span(NamedTuple):
    info: TensorInfo
    begin: int  # offsets into the byte buffer, [begin, end)
    end: int


# ----------------------------------------------------------------------------------------------------------------
# Reading one file


def open_safetensors(path: str | os.PathLike) -> SafetensorsFile:
    """Parse and validate the header of `path` now; tensor data stays on disk until a tensor is indexed."""
    path = Path(path)
    with open_regular(path) as f:  # a FIFO or /dev/zero is refused here, before a byte is read
        file_size = os.fstat(f.fileno()).st_size
        if file_size < HEADER_LENGTH_BYTES:
            raise _error(path, f"file is {file_size} bytes, shorter than the 8-byte header length")
        header_length = int.from_bytes(f.read(HEADER_LENGTH_BYTES), "little")
        if header_length > MAX_HEADER_BYTES:
            raise _error(path, f"header length {header_length} exceeds the limit of {MAX_HEADER_BYTES} bytes")
        if HEADER_LENGTH_BYTES + header_length > file_size:
            raise _error(path, f"header length {header_length} runs past the end of the {file_size}-byte file")
        header = _parse_json_object(path, f.read(header_length), what="header")
    buffer_start = HEADER_LENGTH_BYTES + header_length
    metadata = _check_metadata(path, header.pop(METADATA_KEY, None))
    spans = {name: _check_entry(path, name, entry) for name, entry in header.items()}
    _check_tiling(path, spans, buffer_size=file_size - buffer_start)
    return SafetensorsFile(path, spans, metadata, buffer_start, file_size - buffer_start)


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """object_pairs_hook for json: a plain dict would silently keep the last of two equal keys."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _parse_json_object(path: Path, raw: bytes, *, what: str, error: type[ValueError] = SafetensorsError) -> dict:
    """UTF-8 JSON bytes -> dict, or `error` naming the file. Rejects duplicate keys at every level."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: {what} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        value = json.loads(text, object_pairs_hook=_reject_duplicates)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, our duplicate check, absurdly deep nesting
        raise error(f"{path}: {what} is not valid JSON: {e}") from None
    except MemoryError:  # a header of millions of tiny entries takes many times its size as Python objects
        raise error(f"{path}: out of memory parsing the {len(raw):,}-byte {what}") from None
    if not isinstance(value, dict):
        raise error(f"{path}: {what} is a JSON {type(value).__name__}, not an object")
    return value


def _is_uint(value: object) -> bool:
    """A JSON integer in [0, 2**64), the reference's usize. (bool is a subclass of int: JSON true must not pass.)"""
    return type(value) is int and 0 <= value < 2**64


def _check_metadata(path: Path, metadata: object) -> dict[str, str]:
    if metadata is None:  # absent, or null as the reference also accepts
        return {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _error(path, f"{METADATA_KEY!r} must be an object of string values, got {metadata!r:.80}")
    return metadata


def _check_entry(path: Path, name: str, entry: object) -> _Span:
    """One header entry -> _Span, checking types, dtype and that the byte span fits shape x itemsize."""
    if not isinstance(entry, dict):
        raise _error(path, f"tensor {name!r}: entry is a JSON {type(entry).__name__}, not an object")
    missing = [key for key in ("dtype", "shape", "data_offsets") if key not in entry]
    if missing:
        raise _error(path, f"tensor {name!r}: entry lacks {', '.join(missing)}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise _error(path, f"tensor {name!r}: dtype {dtype!r} is not a string")
    if dtype not in _DTYPES:
        raise _error(path, f"tensor {name!r}: unknown or unsupported dtype {dtype!r:.40}")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise _error(path, f"tensor {name!r}: shape {shape!r:.80} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets):
        raise _error(path, f"tensor {name!r}: data_offsets {offsets!r:.80} is not [begin, end] in bytes")
    begin, end = offsets
    if begin > end:
        raise _error(path, f"tensor {name!r}: data_offsets begin {begin} > end {end}")
    itemsize = _DTYPES[dtype].itemsize
    # prod(shape) * itemsize, stopping once it exceeds the span: a hostile header may list thousands of huge
    # dimensions, whose full product would take minutes to compute.
    nbytes = 0 if 0 in shape else itemsize
    for dim in shape:
        nbytes *= dim
        if nbytes > end - begin:
            raise _error(path, f"tensor {name!r}: shape {shape!r:.80} of {dtype} needs more than the "
                               f"{end - begin} bytes of data_offsets [{begin}, {end}]")
    if nbytes != end - begin:
        raise _error(path, f"tensor {name!r}: shape {shape} of {dtype} needs {nbytes} bytes, "
                           f"data_offsets [{begin}, {end}] hold {end - begin}")
    return _Span(TensorInfo(name, dtype, tuple(shape), nbytes), begin, end)


def _check_tiling(path: Path, spans: dict[str, _Span], *, buffer_size: int) -> None:
    """Sorted by offset, the spans must cover [0, buffer_size) exactly: no overlap, no hole, nothing after."""
    covered_to, previous = 0, None
    for span in sorted(spans.values(), key=lambda s: (s.begin, s.end)):
        name = span.info.name
        if span.end > buffer_size:
            raise _error(path, f"tensor {name!r}: data_offsets end {span.end} is past the end of the "
                               f"{buffer_size}-byte buffer (file truncated?)")
        if span.begin < covered_to:
            raise _error(path, f"tensor {name!r}: bytes [{span.begin}, {span.end}) overlap tensor "
                               f"{previous!r} which ends at {covered_to}")
        if span.begin > covered_to:
            raise _error(path, f"tensor {name!r}: hole in the buffer, bytes [{covered_to}, {span.begin}) "
                               f"belong to no tensor")
        covered_to, previous = span.end, name
    if covered_to != buffer_size:
        raise _error(path, f"{buffer_size - covered_to} trailing bytes after the last tensor "
                           f"(buffer is {buffer_size} bytes, tensors cover {covered_to})")


class SafetensorsFile(Mapping):
    """One validated .safetensors file: a read-only mapping name -> np.ndarray, plus info() and metadata.

    f[name] is a view of the memory-mapped file (read-only, no copy) for every dtype but BF16, which NumPy lacks:
    BF16 comes back as a new float32 array. Names iterate in sorted order, as the reference's keys() does.
    """

    def __init__(self, path: Path, spans: dict[str, _Span], metadata: dict[str, str], buffer_start: int,
                 buffer_size: int):
        self.path = path
        self.metadata = metadata
        self._spans = spans
        self._buffer_start = buffer_start
        self._buffer_size = buffer_size

    @cached_property
    def _buffer(self) -> np.ndarray:
        """The byte buffer, mapped on first use: (buffer_size,) uint8, read-only."""
        if self._buffer_size == 0:  # mmap cannot map zero bytes; only zero-sized tensors live here
            return np.zeros(0, np.uint8)
        with open_regular(self.path) as f:  # the map keeps its own handle on the file
            return np.memmap(f, dtype=np.uint8, mode="r", offset=self._buffer_start, shape=(self._buffer_size,))

    def info(self, name: str) -> TensorInfo:
        return self._spans[name].info

    def __getitem__(self, name: str) -> np.ndarray:
        info, begin, end = self._spans[name]  # KeyError for an unknown name, as for any mapping
        raw = self._buffer[begin:end]  # (nbytes,) uint8
        if info.dtype == "BF16":
            # bf16 bits are the high half of a float32: widen, shift into place, reinterpret.
            bits = raw.view(_DTYPES["BF16"]).astype(np.uint32) << 16  # (n,) uint32
            return bits.view(np.float32).reshape(info.shape)
        return raw.view(_DTYPES[info.dtype]).reshape(info.shape)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._spans))

    def __len__(self) -> int:
        return len(self._spans)

    def __contains__(self, name: object) -> bool:
        return name in self._spans

    def __repr__(self) -> str:
        return f"SafetensorsFile({str(self.path)!r}, {len(self)} tensors)"


# ----------------------------------------------------------------------------------------------------------------
# Reading a checkpoint: one file, or shards listed by an index


class Checkpoint(Mapping):
    """All tensors of a checkpoint, single-file or sharded, behind the same interface as SafetensorsFile.

    `files` lists the .safetensors files; `metadata` merges their "__metadata__" entries (Hugging Face writes the
    same {"format": "pt"} into every shard).
    """

    def __init__(self, files: list[SafetensorsFile]):
        self.files = files
        self._owner = {name: f for f in files for name in f}
        self.metadata = {key: value for f in files for key, value in f.metadata.items()}

    def info(self, name: str) -> TensorInfo:
        return self._owner[name].info(name)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._owner[name][name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._owner))

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, name: object) -> bool:
        return name in self._owner

    def __repr__(self) -> str:
        return f"Checkpoint({[str(f.path) for f in self.files]}, {len(self)} tensors)"


def open_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """A .safetensors file, an index .json, or a directory -> Checkpoint.

    In a directory we look, as transformers does, for model.safetensors first, then model.safetensors.index.json;
    failing both, a lone *.safetensors file is accepted. A path that does not exist raises FileNotFoundError; a name
    that is there but not a regular file (a FIFO, a directory, a link to /dev/zero) raises nanollm.files.FileError,
    both OSErrors; a checkpoint that is there but wrong raises SafetensorsError.
    """
    path = Path(path)
    if not path.is_dir():
        if path.name.endswith(".index.json"):
            return open_sharded(path)
        return Checkpoint([open_safetensors(path)])
    # exists(), not is_file(): a model.safetensors that is a FIFO must be reported, not skipped for another file.
    if (path / SINGLE_FILE_NAME).exists():
        return Checkpoint([open_safetensors(path / SINGLE_FILE_NAME)])
    if (path / INDEX_FILE_NAME).exists():
        return open_sharded(path / INDEX_FILE_NAME)
    candidates = sorted(path.glob("*.safetensors"))
    if len(candidates) == 1:
        return Checkpoint([open_safetensors(candidates[0])])
    raise _error(path, f"no {SINGLE_FILE_NAME} or {INDEX_FILE_NAME} in this directory"
                       + (f" ({len(candidates)} .safetensors files and no index to tie them)" if candidates else ""))


def open_sharded(index_path: Path, open_shard=None, error: type[ValueError] = SafetensorsError) -> Checkpoint:
    """Open every shard an index names and check that the index and the shards agree, tensor by tensor.

    The index (written by transformers' save_pretrained, the same for safetensors and pytorch_model.bin shards) is
    {"metadata": {"total_size": ...}, "weight_map": {tensor name: shard file name}}; shard names are plain file names
    beside the index. open_shard reads one shard (default open_safetensors; weights_tools/checkpoint.py passes the
    .bin reader, and its error class): every problem is one `error` naming the index or the shard. A shard file the
    index does not name is not part of the checkpoint, as for transformers.
    """
    open_shard = open_shard or open_safetensors
    weight_map = _parse_json_object(index_path, read_bytes(index_path), what="index", error=error).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise error(f"{index_path}: index has no \"weight_map\" object of tensor name -> shard file name")
    shards = {}
    for shard_name in sorted(set(weight_map.values())):
        if Path(shard_name).name != shard_name or shard_name in ("", ".", ".."):
            raise error(f"{index_path}: shard name {shard_name!r} is not a plain file name beside the index")
        shard_path = index_path.parent / shard_name
        if not shard_path.exists():
            raise error(f"{index_path}: shard {shard_name!r} named by the index is missing")
        shards[shard_name] = open_shard(shard_path)
    seen: dict[str, str] = {}
    for shard_name, shard in shards.items():
        for name in shard:
            if name in seen:
                raise error(f"{shard.path}: tensor {name!r} is also in shard {seen[name]!r}")
            if name not in weight_map:
                raise error(f"{shard.path}: tensor {name!r} is not listed in the index {index_path.name}")
            seen[name] = shard_name
    for name, shard_name in weight_map.items():
        if name not in shards[shard_name]:
            raise error(f"{index_path}: the index places tensor {name!r} in {shard_name!r}, which does not hold it")
    return Checkpoint(list(shards.values()))


# ----------------------------------------------------------------------------------------------------------------
# Writing


def bfloat16_bits(x: np.ndarray) -> np.ndarray:
    """float32 (...) -> uint16 (...): the nearest bfloat16, ties to even; NaN -> 0x7FC0 (PyTorch's scalar choice).

    Example: 1 + 2**-8 is 0x3F808000, exactly between bf16 0x3F80 and 0x3F81; ties go to the even one, 0x3F80.
    """
    bits = np.asarray(x, dtype=np.float32, order="C").reshape(-1).view(np.uint32)  # (n,)
    # Adding 0x7FFF plus the lowest kept bit carries into bit 16 exactly when the dropped half is > 0x8000, or
    # == 0x8000 with an odd kept part. Overflow past the largest finite value correctly gives inf.
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    rounded[np.isnan(bits.view(np.float32))] = 0x7FC0  # rounding could turn a NaN's payload into inf
    return rounded.reshape(np.shape(x))


class _Entry(NamedTuple):
    """One tensor to write, checked: e.g. _Entry("wte.weight", <float32 array (64, 32)>, "BF16")."""

    name: str
    array: np.ndarray  # as given; encoded into `dtype` only while it is written, one tensor at a time
    dtype: str  # the safetensors dtype it is stored as


class _Layout(NamedTuple):
    header: bytes  # the JSON header, padded with spaces to a multiple of 8 bytes
    entries: list[_Entry]  # in file order


def _check_text(path: Path, what: str, text: str) -> None:
    """The header is UTF-8 JSON; a Python str holding a lone surrogate ("\\ud800") has no UTF-8 form."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _error(path, f"{what} {text!r:.80} is not valid Unicode (lone surrogate at index {e.start})") from None


def _check_arguments(path: Path, tensors: object, metadata: object, dtypes: object) -> list[_Entry]:
    """Refuse, before a byte is written, every argument the reader above would refuse in the file.

    The reference writer raises AttributeError or TypeError for most of these (a list for `tensors`, an int for a
    name, a list for a value); here each is a SafetensorsError naming the file and the culprit.
    """
    if not isinstance(tensors, Mapping):
        raise _error(path, f"tensors must be a mapping of name -> NumPy array, got a {type(tensors).__name__}")
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                        for k, v in metadata.items()):
            raise _error(path, f"metadata must map strings to strings, got {metadata!r:.80}")
        for key, value in metadata.items():
            _check_text(path, "metadata key", key)
            _check_text(path, f"metadata[{key!r:.40}]", value)
    if dtypes is not None and not isinstance(dtypes, Mapping):
        raise _error(path, f"dtypes must be a mapping of tensor name -> dtype name, got a {type(dtypes).__name__}")
    dtypes = dict(dtypes or {})
    unknown = [name for name in dtypes if name not in tensors]
    if unknown:
        raise _error(path, f"dtypes names tensors that are not being saved: {unknown!r:.200}")
    entries = []
    for name, array in tensors.items():
        if not isinstance(name, str):
            raise _error(path, f"tensor name {name!r:.80} is not a str but a value of type {type(name).__name__}")
        if name == METADATA_KEY:
            raise _error(path, f"tensor name {METADATA_KEY!r} is reserved for the file's metadata")
        _check_text(path, "tensor name", name)
        if not isinstance(array, np.ndarray):
            raise _error(path, f"tensor {name!r}: value is not a NumPy array but a value of type {type(array).__name__} "
                               f"(np.asarray converts one)")
        entries.append(_Entry(name, array, _stored_dtype(path, name, array, dtypes.get(name))))
    return entries


def _stored_dtype(path: Path, name: str, array: np.ndarray, requested: object) -> str:
    """The safetensors dtype `array` is written as: its own, or `requested` (a float type for a float array)."""
    little_endian = array.dtype.newbyteorder("<")  # a big-endian array is stored after a byte swap
    natural = next((st for st, dt in _DTYPES.items() if st != "BF16" and little_endian == dt), None)
    if requested is None or requested == natural:
        if natural is None:
            raise _error(path, f"tensor {name!r}: NumPy dtype {array.dtype} has no safetensors equivalent")
        return natural
    if requested not in _FLOAT_DTYPES or array.dtype.kind != "f":
        raise _error(path, f"tensor {name!r}: cannot store a {array.dtype} array as {requested!r:.40} "
                           f"(only float arrays convert, to one of {', '.join(_FLOAT_DTYPES)})")
    return requested


def _encode(array: np.ndarray, dtype: str) -> np.ndarray:
    """array -> C-contiguous little-endian array holding exactly the bytes to store for `dtype`."""
    with np.errstate(over="ignore"):  # floats beyond the stored type's range become inf, as in torch
        if dtype == "BF16":
            return bfloat16_bits(array.astype(np.float32))
        return np.asarray(array, dtype=_DTYPES[dtype], order="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray


def _layout(path: Path, entries: list[_Entry], metadata: Mapping[str, str] | None) -> _Layout:
    """Checked entries -> the padded header and the file order; refuses a header the reader would refuse."""
    # Decreasing alignment, then name: every tensor starts at a multiple of its own itemsize.
    entries = sorted(entries, key=lambda e: (-_WRITE_ORDER[e.dtype], e.name))
    # Metadata keys sorted: the reference writes them in hash order, which is not reproducible.
    header: dict[str, object] = {} if metadata is None else {METADATA_KEY: dict(sorted(metadata.items()))}
    offset = 0
    for e in entries:
        nbytes = e.array.size * _DTYPES[e.dtype].itemsize
        header[e.name] = {"dtype": e.dtype, "shape": list(e.array.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the buffer then starts 8-byte aligned
    if len(raw) > MAX_HEADER_BYTES:  # the reference writer refuses it too ("header too large")
        raise _error(path, f"the header would be {len(raw):,} bytes, over the format's limit of "
                           f"{MAX_HEADER_BYTES:,} that every reader enforces (too many or too long names/metadata)")
    return _Layout(raw, entries)


def _write(f: BinaryIO, layout: _Layout) -> None:
    f.write(len(layout.header).to_bytes(HEADER_LENGTH_BYTES, "little"))
    f.write(layout.header)
    for e in layout.entries:
        f.write(_encode(e.array, e.dtype).reshape(-1).data)  # 1-D so 0-d arrays expose their buffer too


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray],
                     metadata: Mapping[str, str] | None = None, *, dtypes: Mapping[str, str] | None = None) -> None:
    """Write `tensors` to `path` as one safetensors file.

    dtypes: optional {name: "BF16" | "F16" | "F32" | "F64"} to store a float array in another float type
    (float32 -> BF16 rounds to nearest even; the other conversions are NumPy's astype, also round-to-nearest-even).
    Every argument is checked first; the file is then written atomically (nanollm.files.atomic_write): a failure
    leaves an existing file at `path` as it was, and `tensors` may be views of that very file.
    """
    path = Path(path)
    layout = _layout(path, _check_arguments(path, tensors, metadata, dtypes), metadata)
    with atomic_write(path) as f:
        _write(f, layout)


_SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def _split(entries: list[_Entry], max_shard_bytes: int) -> list[list[_Entry]]:
    """Fill shards greedily in the given order; a tensor larger than the limit gets a shard of its own
    (huggingface_hub, `split_state_dict_into_shards_factory`)."""
    shards: list[list[_Entry]] = []
    current: list[_Entry] = []
    current_bytes = 0
    for e in entries:
        nbytes = e.array.size * _DTYPES[e.dtype].itemsize
        if nbytes > max_shard_bytes:
            shards.append([e])
            continue
        if current_bytes + nbytes > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(e)
        current_bytes += nbytes
    if current or not shards:
        shards.append(current)
    return shards


def save_sharded(directory: str | os.PathLike, tensors: Mapping[str, np.ndarray], *, max_shard_bytes: int,
                 metadata: Mapping[str, str] | None = None, dtypes: Mapping[str, str] | None = None) -> list[Path]:
    """Write `tensors` into shards of at most `max_shard_bytes` each, named and indexed as Hugging Face does.

    Several shards are written as model-00001-of-0000N.safetensors plus model.safetensors.index.json; a single shard
    is written as plain model.safetensors with no index, as save_pretrained does. `metadata` goes into every shard.
    Returns the paths.

    Saving over an older checkpoint replaces it whole or not at all: every header is checked, then every file is
    written to a temporary file, and only when all are written are they renamed into place, the index last. Files
    of the older checkpoint that the new one does not replace are then removed (as save_pretrained removes stale
    shards): a stale model.safetensors would otherwise be read instead of the new index (see open_checkpoint).
    """
    directory = Path(directory)
    if type(max_shard_bytes) is not int or max_shard_bytes <= 0:
        raise _error(directory, f"max_shard_bytes must be a positive integer, got {max_shard_bytes!r:.40}")
    shards = _split(_check_arguments(directory, tensors, metadata, dtypes), max_shard_bytes)
    names = [SINGLE_FILE_NAME] if len(shards) == 1 else [f"model-{number:05d}-of-{len(shards):05d}.safetensors"
                                                         for number in range(1, len(shards) + 1)]
    layouts = {name: _layout(directory / name, shard, metadata) for name, shard in zip(names, shards)}
    directory.mkdir(parents=True, exist_ok=True)
    # Each file is flushed as soon as it is written, so a full disk fails inside the block, before any file is
    # renamed; the renames happen as the contexts close, in reverse: the index, entered first, is renamed last.
    with ExitStack() as stack:
        if len(shards) > 1:
            entries = [e for shard in shards for e in shard]
            weight_map = {e.name: name for name, shard in zip(names, shards) for e in shard}
            index = {"metadata": {"total_parameters": sum(e.array.size for e in entries),
                                  "total_size": sum(e.array.size * _DTYPES[e.dtype].itemsize for e in entries)},
                     "weight_map": weight_map}
            f = stack.enter_context(atomic_write(directory / INDEX_FILE_NAME))
            f.write((json.dumps(index, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))
            f.flush()
            names.append(INDEX_FILE_NAME)
        for name, layout in layouts.items():
            f = stack.enter_context(atomic_write(directory / name))
            _write(f, layout)
            f.flush()
    for stale in directory.iterdir():
        ours = stale.name in (SINGLE_FILE_NAME, INDEX_FILE_NAME) or _SHARD_NAME.fullmatch(stale.name)
        if ours and stale.name not in names and stale.is_file():
            stale.unlink()
    return [directory / name for name in names]
