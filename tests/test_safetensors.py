"""weights_tools.safetensors against the reference library (safetensors, PyTorch, transformers, huggingface_hub).

What is shown:
  - round trips: random tensor dicts written by us are byte-identical to the reference writer's output, and read
    back identically by us, by safetensors.numpy and by safetensors.torch (bf16 compared with torch's own rounding);
  - every class of corruption, generated at random on random files and on a real transformers GPT-2 checkpoint,
    raises SafetensorsError naming the file, and the reference rejects the same files (except duplicate names,
    which only we reject: the reference keeps the last);
  - sharded checkpoints: our shards match huggingface_hub's split; transformers' sharded save reads correctly;
    inconsistent indexes and shards are rejected;
  - float tensors come back as read-only views of the memory-mapped file.
"""
import json
import random
import struct

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from weights_tools.safetensors import (
    SafetensorsError,
    bfloat16_bits,
    open_checkpoint,
    open_safetensors,
    save_safetensors,
    save_sharded,
)

NUMPY_DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.float16, np.int32, np.uint32, np.float32,
                np.float64, np.int64, np.uint64]
FLOAT_TARGETS = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}

tensor_names = st.text(max_size=8).filter(lambda name: name != "__metadata__")
metadata_dicts = st.none() | st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)


@st.composite
def tensor_dicts(draw, min_size=0):
    """-> (tensors {name: array}, dtypes {name: stored float type} for some float arrays)."""
    tensors, dtypes = {}, {}
    for name in draw(st.lists(tensor_names, min_size=min_size, max_size=5, unique=True)):
        dtype = draw(st.sampled_from(NUMPY_DTYPES))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        if np.dtype(dtype).kind == "f" and draw(st.booleans()):
            dtypes[name] = draw(st.sampled_from(sorted(FLOAT_TARGETS)))
            # No NaN in converted arrays: a cast keeps NaN a NaN, but its payload bits differ between NumPy and
            # torch (float16 -> float32, say). test_bf16_matches_torch covers NaN for bf16.
            elements = hnp.from_dtype(np.dtype(dtype), allow_nan=False)
            tensors[name] = draw(hnp.arrays(dtype, shape, elements=elements))
        else:
            tensors[name] = draw(hnp.arrays(dtype, shape))  # stored unconverted: every bit pattern round-trips
    return tensors, dtypes


def torch_reference(tensors, dtypes):
    """What each tensor should become once stored, computed by torch: {name: torch.Tensor of the stored dtype}.

    BF16 goes through float32 first, as save_safetensors documents (torch rounds float64 -> bf16 only once).
    """
    out = {}
    for name, array in tensors.items():
        t = torch.from_numpy(array.copy())
        if dtypes.get(name) == "BF16":
            t = t.float()
        out[name] = t.to(FLOAT_TARGETS[dtypes[name]]) if name in dtypes else t
    return out


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """Our reader's view of a torch tensor: bf16 widens to float32 (exactly, bits << 16)."""
    return t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()


def assert_same(actual: np.ndarray, expected: np.ndarray):
    """Same dtype, shape and bytes (so NaN payloads and -0.0 count)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (actual.dtype, actual.shape,
                                                                               expected.dtype, expected.shape)
    assert np.ascontiguousarray(actual).tobytes() == np.ascontiguousarray(expected).tobytes()


# ----------------------------------------------------------------------------------------------------------------
# Round trips against the reference


def assert_same_file(ours: bytes, theirs: bytes):
    """Byte-identical, except that the reference writes "__metadata__" keys in hash order (a Rust HashMap) where we
    sort them: so compare the header's entries in order, its metadata as a dict, and all other bytes exactly."""
    header_end = 8 + int.from_bytes(ours[:8], "little")
    assert ours[:8] == theirs[:8] and ours[header_end:] == theirs[header_end:]
    ours_header, theirs_header = (json.loads(raw[8:header_end], object_pairs_hook=list) for raw in (ours, theirs))
    assert [(k, v) for k, v in ours_header if k != "__metadata__"] == [(k, v) for k, v in theirs_header
                                                                      if k != "__metadata__"]
    assert [k for k, _ in ours_header] [:1] == [k for k, _ in theirs_header][:1]  # metadata first, when present
    assert sorted(dict(ours_header).get("__metadata__", [])) == sorted(dict(theirs_header).get("__metadata__", []))
    if len(dict(ours_header).get("__metadata__", [])) <= 1:
        assert ours == theirs


@settings(max_examples=60)
@given(data=tensor_dicts(), metadata=metadata_dicts)
def test_round_trip_matches_reference(tmp_path_factory, data, metadata):
    """Our file == the reference writer's file, byte for byte; we, safetensors.numpy and safetensors.torch all read
    it back as torch computes the stored values; and we read the reference's own file the same way."""
    tensors, dtypes = data
    d = tmp_path_factory.mktemp("rt")
    expected = torch_reference(tensors, dtypes)
    save_safetensors(d / "ours.safetensors", tensors, metadata, dtypes=dtypes)
    safetensors.torch.save_file(expected, d / "torch.safetensors", metadata=metadata)
    ours_bytes = (d / "ours.safetensors").read_bytes()
    if not tensors and metadata == {}:
        # safetensors 0.8 writes `{},"__metadata__":{}}` here, a header neither it nor we can read back.
        with pytest.raises(SafetensorsError, match="not valid JSON"):
            open_safetensors(d / "torch.safetensors")
        return
    assert_same_file(ours_bytes, (d / "torch.safetensors").read_bytes())

    f = open_safetensors(d / "ours.safetensors")
    assert sorted(f) == sorted(tensors) and len(f) == len(tensors)
    assert f.metadata == (metadata or {})
    by_torch = safetensors.torch.load_file(d / "ours.safetensors")
    for name, t in expected.items():
        assert_same(f[name], as_numpy(t))
        assert_same(as_numpy(by_torch[name]), as_numpy(t))
        assert f.info(name).shape == tuple(t.shape) and f.info(name).nbytes == t.nbytes
    if "BF16" not in dtypes.values():  # NumPy (so safetensors.numpy) has no bfloat16
        numpy_arrays = {name: as_numpy(t) for name, t in expected.items()}
        for name, array in safetensors.numpy.load_file(d / "ours.safetensors").items():
            assert_same(array, numpy_arrays[name])
        safetensors.numpy.save_file(numpy_arrays, d / "numpy.safetensors", metadata=metadata)
        assert_same_file(ours_bytes, (d / "numpy.safetensors").read_bytes())
        theirs = open_safetensors(d / "numpy.safetensors")
        for name in tensors:
            assert_same(theirs[name], numpy_arrays[name])


@settings(max_examples=40)
@given(values=hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=2, max_side=16)))
def test_bf16_matches_torch(tmp_path_factory, values):
    """A torch.bfloat16 file saved by safetensors.torch reads as t.float(); our float32 -> bf16 rounding (nearest,
    ties to even) gives torch's bits, including inf, subnormals and overflow to inf. NaN stays NaN, but its bits are
    not canonical in torch itself: the scalar path gives 0x7FC0 (as we do), the vectorised CPU kernel 0xFFFF."""
    d = tmp_path_factory.mktemp("bf16")
    t = torch.from_numpy(values.copy()).to(torch.bfloat16)
    safetensors.torch.save_file({"x": t}, d / "torch.safetensors")
    f = open_safetensors(d / "torch.safetensors")
    assert f.info("x").dtype == "BF16"
    assert_same(f["x"], t.float().numpy())
    ours, theirs = bfloat16_bits(values), t.view(torch.int16).numpy().view(np.uint16)
    nan = np.isnan(values)
    assert_same(ours[~nan], theirs[~nan])
    assert (ours[nan] == 0x7FC0).all()


def test_hand_written_file(tmp_path):
    """A file written byte by byte from the format description reads as the values put in it.

    The buffer holds 1.0 and -2.0 as little-endian float32 (0x3F800000, 0xC0000000) in bytes [0, 8), then bf16
    1.5 = 0x3FC0 (the top half of float32 1.5 = 0x3FC00000) in bytes [8, 10). Readers need no header padding.
    """
    header = (b'{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
              b'"y":{"dtype":"BF16","shape":[],"data_offsets":[8,10]}}')
    (tmp_path / "hand.safetensors").write_bytes(struct.pack("<Q", len(header)) + header
                                                + struct.pack("<ffH", 1.0, -2.0, 0x3FC0))
    f = open_safetensors(tmp_path / "hand.safetensors")
    assert f["x"].tolist() == [1.0, -2.0] and f["x"].dtype == np.float32
    assert f["y"].shape == () and f["y"].dtype == np.float32 and float(f["y"]) == 1.5
    assert f.info("y") == ("y", "BF16", (), 2) and f.metadata == {}


def test_bf16_rounding_by_hand():
    """1 + 2**-8 (0x3F808000) lies exactly between bf16 0x3F80 and 0x3F81: ties go to the even one, 0x3F80;
    1 + 3 * 2**-8 (0x3F818000) lies between 0x3F81 and 0x3F82: even is 0x3F82. Just above a tie rounds up."""
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, np.float32(3.4e38)], np.float32)
    assert bfloat16_bits(x).tolist() == [0x3F80, 0x3F82, 0x3F81, 0x7F80]  # the largest float32 rounds to inf
    # A NaN whose payload sits only in the 16 dropped bits would truncate to inf: every NaN becomes 0x7FC0 instead.
    nans = np.array([0x7F800001, 0xFFC00000, 0x7FFFFFFF], np.uint32).view(np.float32)
    assert bfloat16_bits(nans).tolist() == [0x7FC0] * 3


def test_tensors_are_read_only_memmap_views(tmp_path):
    """F32/I8 tensors are views of the mapped file (no copy) and cannot be written; BF16 is a float32 copy."""
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_safetensors(tmp_path / "m.safetensors", {"w": values, "i": np.arange(5, dtype=np.int8), "b": values},
                     dtypes={"b": "BF16"})
    f = open_safetensors(tmp_path / "m.safetensors")
    for name in ("w", "i"):
        assert isinstance(f[name], np.memmap) and not f[name].flags.writeable
        with pytest.raises(ValueError):
            f[name][0] = 1
    assert_same(f["w"], values)
    assert f["b"].dtype == np.float32 and not isinstance(f["b"], np.memmap)


def test_writer_rejects_what_it_cannot_store(tmp_path):
    """Complex arrays, an integer array asked to be BF16, non-string metadata and stray dtypes names all fail."""
    path = tmp_path / "w.safetensors"
    cases = [
        ({"z": np.zeros(2, np.complex64)}, None, None),
        ({"i": np.zeros(2, np.int32)}, None, {"i": "BF16"}),
        ({"f": np.zeros(2, np.float32)}, None, {"f": "I8"}),
        ({"f": np.zeros(2, np.float32)}, {"k": 1}, None),
        ({"f": np.zeros(2, np.float32)}, None, {"g": "F16"}),
        ({"__metadata__": np.zeros(2, np.float32)}, None, None),
    ]
    for tensors, metadata, dtypes in cases:
        with pytest.raises(SafetensorsError, match="w.safetensors"):
            save_safetensors(path, tensors, metadata, dtypes=dtypes)


# ----------------------------------------------------------------------------------------------------------------
# Corruptions: each function takes a valid file's bytes and a random.Random and returns a file that must be rejected


def split(raw: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header, buffer: bytes) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + buffer


def entries(header: dict, *, non_empty=False) -> list[str]:
    names = [name for name in header if name != "__metadata__"]
    return [n for n in names if header[n]["data_offsets"][1] > header[n]["data_offsets"][0]] if non_empty else names


def set_header_length(raw: bytes, n: int) -> bytes:
    return struct.pack("<Q", n) + raw[8:]


def _shorter_than_8(raw, rng):
    return raw[:rng.randrange(8)]


def _truncated(raw, rng):
    return raw[:rng.randrange(8, len(raw))]


def _trailing_bytes(raw, rng):
    return raw + bytes(rng.randrange(1, 40))


def _header_length_past_end(raw, rng):
    return set_header_length(raw, rng.choice([len(raw) - 7, rng.randrange(len(raw) - 7, 2**64)]))


def _header_length_too_short(raw, rng):
    n = int.from_bytes(raw[:8], "little")
    return set_header_length(raw, n - rng.randrange(1, n + 1))


def _invalid_utf8(raw, rng):
    n = int.from_bytes(raw[:8], "little")
    at = rng.randrange(8, 8 + n)
    return raw[:at] + b"\xff" + raw[at + 1:]


def _not_json(raw, rng):
    header, buffer = split(raw)
    text = json.dumps(header).encode()
    return join(rng.choice([text[:-1], text + b"}", b"{" + text, text.replace(b":", b"=", 1)]), buffer)


def _not_an_object(raw, rng):
    return join(rng.choice([b"[]", b"42", b'"F32"', b"null", b"true", b"[{}]"]), split(raw)[1])


def _entry_not_object(raw, rng):
    header, buffer = split(raw)
    header[rng.choice(entries(header))] = rng.choice([[], 3, "F32", None])
    return join(header, buffer)


def _missing_key(raw, rng):
    header, buffer = split(raw)
    del header[rng.choice(entries(header))][rng.choice(["dtype", "shape", "data_offsets"])]
    return join(header, buffer)


def _wrong_type(raw, rng):
    header, buffer = split(raw)
    entry = header[rng.choice(entries(header))]
    key, value = rng.choice([
        ("dtype", 7), ("dtype", ["F32"]), ("shape", "2,3"), ("shape", entry["shape"] + [1.0]),
        ("shape", entry["shape"] + [True]), ("shape", {"0": 1}), ("data_offsets", entry["data_offsets"] + [0]),
        ("data_offsets", entry["data_offsets"][:1]), ("data_offsets", [float(o) for o in entry["data_offsets"]]),
        ("data_offsets", "0-8"), ("data_offsets", None),
    ])
    entry[key] = value
    return join(header, buffer)


def _unknown_dtype(raw, rng):
    header, buffer = split(raw)
    header[rng.choice(entries(header))]["dtype"] = rng.choice(["f32", "FLOAT", "", "F128", "Q4_0", "F32 "])
    return join(header, buffer)


def _negative_shape(raw, rng):
    header, buffer = split(raw)
    entry = header[rng.choice(entries(header))]
    entry["shape"] = entry["shape"] + [-rng.randrange(1, 5)]
    return join(header, buffer)


ITEMSIZES = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4,
             "I64": 8, "U64": 8, "F64": 8}


def _shape_mismatch(raw, rng):
    header, buffer = split(raw)
    entry = header[rng.choice(entries(header, non_empty=True))]
    if rng.random() < 0.5:
        entry["shape"] = entry["shape"] + [rng.randrange(2, 5)]  # the element count at least doubles
    else:  # same element count, another itemsize
        entry["dtype"] = rng.choice([d for d, size in ITEMSIZES.items() if size != ITEMSIZES[entry["dtype"]]])
    return join(header, buffer)


def _offsets_past_end(raw, rng):
    header, buffer = split(raw)
    begin, end = header[name := rng.choice(entries(header))]["data_offsets"]
    shift = len(buffer) + 1 + rng.randrange(100)
    header[name]["data_offsets"] = [begin + shift, end + shift]
    return join(header, buffer)


def _begin_after_end(raw, rng):
    header, buffer = split(raw)
    entry = header[rng.choice(entries(header, non_empty=True))]
    entry["data_offsets"] = entry["data_offsets"][::-1]
    return join(header, buffer)


def _overlap(raw, rng):
    header, buffer = split(raw)
    a, b = rng.sample(entries(header, non_empty=True), 2)
    a_begin, a_end = header[a]["data_offsets"]
    b_size = header[b]["data_offsets"][1] - header[b]["data_offsets"][0]
    start = rng.randrange(a_begin, a_end)
    header[b]["data_offsets"] = [start, start + b_size]
    return join(header, buffer)


def _hole(raw, rng):
    """Insert unused bytes before a tensor and shift the offsets after them: valid but for the gap."""
    header, buffer = split(raw)
    at = header[rng.choice(entries(header, non_empty=True))]["data_offsets"][0]
    gap = rng.randrange(1, 17)
    for name in entries(header):
        header[name]["data_offsets"] = [o + gap if o >= at and header[name]["data_offsets"][1] > at else o
                                        for o in header[name]["data_offsets"]]
    return join(header, buffer[:at] + bytes(gap) + buffer[at:])


def _duplicate_name(raw, rng):
    header, buffer = split(raw)
    name = rng.choice(entries(header))
    text = json.dumps(header, separators=(",", ":")).encode()
    duplicate = json.dumps({name: header[name]}, separators=(",", ":")).encode()[1:-1]
    return join(b"{" + duplicate + b"," + text[1:], buffer)


def _bad_metadata(raw, rng):
    header, buffer = split(raw)
    header["__metadata__"] = rng.choice([{"k": 1}, {"k": ["v"]}, ["format", "pt"], "pt", 3, {"k": None}])
    return join(header, buffer)


CORRUPTIONS = {f.__name__.lstrip("_"): f for f in [
    _shorter_than_8, _truncated, _trailing_bytes, _header_length_past_end, _header_length_too_short, _invalid_utf8,
    _not_json, _not_an_object, _entry_not_object, _missing_key, _wrong_type, _unknown_dtype, _negative_shape,
    _shape_mismatch, _offsets_past_end, _begin_after_end, _overlap, _hole, _duplicate_name, _bad_metadata,
]}
REFERENCE_ACCEPTS = {"duplicate_name"}  # serde_json keeps the last of two equal keys; we refuse the file


def assert_rejected(path, corruption: str):
    """Ours raises SafetensorsError naming the file; the reference rejects it too (unless it is lenient there)."""
    with pytest.raises(SafetensorsError) as caught:
        open_safetensors(path)
    assert str(path) in str(caught.value)
    if corruption not in REFERENCE_ACCEPTS:
        with pytest.raises(Exception):
            safetensors.numpy.load_file(path)


@st.composite
def corruptible_dicts(draw):
    """Random tensor dicts plus two non-empty tensors, so that every corruption class has something to work on."""
    tensors, dtypes = draw(tensor_dicts())
    for name in ("anchor.a", "anchor.b"):
        tensors[name] = draw(hnp.arrays(st.sampled_from(NUMPY_DTYPES), hnp.array_shapes(min_dims=0, max_dims=2)))
    return tensors, {k: v for k, v in dtypes.items() if v != "BF16"}  # keep it readable by safetensors.numpy


@settings(max_examples=150)
@given(data=corruptible_dicts(), corruption=st.sampled_from(sorted(CORRUPTIONS)), rng=st.randoms())
def test_random_corruptions_raise_safetensors_error(tmp_path_factory, data, corruption, rng):
    tensors, dtypes = data
    d = tmp_path_factory.mktemp("bad")
    save_safetensors(d / "good.safetensors", tensors, dtypes=dtypes)
    bad = d / f"{corruption}.safetensors"
    bad.write_bytes(CORRUPTIONS[corruption]((d / "good.safetensors").read_bytes(), rng))
    assert_rejected(bad, corruption)


@settings(max_examples=100)
@given(data=corruptible_dicts(), flips=st.lists(st.tuples(st.integers(0), st.integers(1, 255)), min_size=1,
                                                 max_size=4))
def test_random_header_byte_flips_never_escape(tmp_path_factory, data, flips):
    """XOR random bytes of the length field and header: the result is either rejected with SafetensorsError, or a
    file that both we and the reference accept and read identically (a flipped letter in a name, say)."""
    tensors, dtypes = data
    d = tmp_path_factory.mktemp("flip")
    save_safetensors(d / "good.safetensors", tensors, dtypes=dtypes)
    raw = bytearray((d / "good.safetensors").read_bytes())
    header_end = 8 + int.from_bytes(raw[:8], "little")
    for at, mask in flips:
        raw[at % header_end] ^= mask
    path = d / "flipped.safetensors"
    path.write_bytes(bytes(raw))
    try:
        f = open_safetensors(path)
    except SafetensorsError as e:
        assert str(path) in str(e)
        return
    theirs = safetensors.numpy.load_file(path)
    assert sorted(theirs) == sorted(f)
    for name in f:
        assert_same(f[name], theirs[name])


# ----------------------------------------------------------------------------------------------------------------
# A real checkpoint written by transformers


def tiny_gpt2(directory, **save_kwargs):
    """A GPT-2 with random weights (1 layer, C=32, 2 heads, V=64, 32 positions), saved by transformers."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32,
                                     bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    model.save_pretrained(directory, safe_serialization=True, **save_kwargs)
    return {name: t.detach().numpy() for name, t in model.state_dict().items()}


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2")
    return directory, tiny_gpt2(directory)


def test_reads_transformers_checkpoint(gpt2_dir):
    """Every stored tensor equals the model's own parameter and safetensors.numpy's reading, bit for bit."""
    directory, state = gpt2_dir
    ckpt = open_checkpoint(directory)
    reference = safetensors.numpy.load_file(directory / "model.safetensors")
    assert sorted(ckpt) == sorted(reference) and "transformer.wte.weight" in ckpt
    assert ckpt.metadata == {"format": "pt"}
    for name in ckpt:
        assert_same(ckpt[name], reference[name])
        assert_same(ckpt[name], state[name])
        assert ckpt.info(name).dtype == "F32"


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupted_transformers_checkpoint(gpt2_dir, tmp_path, corruption, seed):
    directory, _ = gpt2_dir
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(CORRUPTIONS[corruption]((directory / "model.safetensors").read_bytes(), random.Random(seed)))
    assert_rejected(bad, corruption)
    with pytest.raises(SafetensorsError, match="model.safetensors"):
        open_checkpoint(tmp_path)


# ----------------------------------------------------------------------------------------------------------------
# Sharded checkpoints


@settings(max_examples=25)
@given(data=tensor_dicts(min_size=1), max_shard_bytes=st.integers(1, 200))
def test_save_sharded_matches_huggingface_split(tmp_path_factory, data, max_shard_bytes):
    """Our shards hold the tensors huggingface_hub's splitter assigns them, under its file names, with the index
    transformers writes; open_checkpoint reads every tensor back as torch computes it."""
    from huggingface_hub.serialization._base import split_state_dict_into_shards_factory

    tensors, dtypes = data
    expected = torch_reference(tensors, dtypes)
    split = split_state_dict_into_shards_factory(expected, get_storage_size=lambda t: t.nbytes,
                                                 filename_pattern="model{suffix}.safetensors",
                                                 max_shard_size=max_shard_bytes)
    d = tmp_path_factory.mktemp("sharded")
    written = save_sharded(d, tensors, max_shard_bytes=max_shard_bytes, metadata={"format": "pt"}, dtypes=dtypes)
    assert sorted(p.name for p in d.iterdir()) == sorted(p.name for p in written)
    for file_name, names in split.filename_to_tensors.items():
        assert sorted(open_safetensors(d / file_name)) == sorted(names)
    if split.is_sharded:
        index = json.loads((d / "model.safetensors.index.json").read_text())
        assert index["weight_map"] == split.tensor_to_filename
        assert index["metadata"]["total_size"] == split.metadata["total_size"]
        assert index["metadata"]["total_parameters"] == sum(t.numel() for t in expected.values())
    else:
        assert [p.name for p in written] == ["model.safetensors"]
    ckpt = open_checkpoint(d)
    assert sorted(ckpt) == sorted(tensors) and ckpt.metadata == {"format": "pt"}
    for name, t in expected.items():
        assert_same(ckpt[name], as_numpy(t))


@pytest.fixture(scope="module")
def gpt2_sharded(tmp_path_factory):
    directory = tmp_path_factory.mktemp("gpt2_sharded")
    return directory, tiny_gpt2(directory, max_shard_size="20KB")


def test_reads_transformers_sharded_checkpoint(gpt2_sharded):
    directory, state = gpt2_sharded
    shards = sorted(directory.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (directory / "model.safetensors.index.json").exists()
    ckpt = open_checkpoint(directory)
    assert sorted(ckpt) == sorted(json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"])
    assert [f.path.name for f in ckpt.files] == [p.name for p in shards]
    for shard in shards:
        for name, array in safetensors.numpy.load_file(shard).items():
            assert_same(ckpt[name], array)
            assert_same(ckpt[name], state[name])
    assert sorted(open_checkpoint(directory / "model.safetensors.index.json")) == sorted(ckpt)
    with pytest.raises(FileNotFoundError):
        open_checkpoint(directory / "nowhere")


def _copy_checkpoint(source, destination):
    for path in source.glob("model*"):
        (destination / path.name).write_bytes(path.read_bytes())
    index = json.loads((destination / "model.safetensors.index.json").read_text())
    return index, sorted(set(index["weight_map"].values()))


def _write_index(directory, index):
    (directory / "model.safetensors.index.json").write_text(index if isinstance(index, str) else json.dumps(index))


def test_sharded_checkpoint_errors(gpt2_sharded, tmp_path):
    """Missing shard, malformed index, index/shard disagreements and a tensor in two shards: SafetensorsError each,
    naming the index or the shard at fault."""
    source, _ = gpt2_sharded

    def fresh(label):
        d = tmp_path / label
        d.mkdir()
        return (d, *_copy_checkpoint(source, d))

    d, index, shards = fresh("missing")
    (d / shards[1]).unlink()
    with pytest.raises(SafetensorsError, match=f"shard '{shards[1]}' named by the index is missing"):
        open_checkpoint(d)

    for label, bad_index in [("notjson", "{'weight_map': }"), ("list", "[]"), ("nomap", {"metadata": {}}),
                             ("intname", {"weight_map": {"a": 3}}), ("escape", {"weight_map": {"a": "../x"}}),
                             ("dupkey", '{"weight_map": {}, "weight_map": {}}')]:
        d, index, shards = fresh(label)
        _write_index(d, bad_index)
        with pytest.raises(SafetensorsError, match="model.safetensors.index.json"):
            open_checkpoint(d)

    d, index, shards = fresh("wrongshard")  # the index says a tensor lives in a shard that lacks it
    name = next(n for n, s in index["weight_map"].items() if s == shards[0])
    index["weight_map"][name] = shards[1]
    _write_index(d, index)
    with pytest.raises(SafetensorsError, match="does not hold it|not listed|also in shard"):
        open_checkpoint(d)

    d, index, shards = fresh("absent")  # the index lists a tensor no shard holds
    index["weight_map"]["ghost.weight"] = shards[0]
    _write_index(d, index)
    with pytest.raises(SafetensorsError, match=f"'ghost.weight' in '{shards[0]}', which does not hold it"):
        open_checkpoint(d)

    d, index, shards = fresh("twice")  # shard 2 also carries a tensor of shard 1
    first = open_safetensors(d / shards[0])
    second = open_safetensors(d / shards[1])
    stolen = next(iter(first))
    merged = {n: np.array(second[n]) for n in second} | {stolen: np.array(first[stolen])}
    save_safetensors(d / shards[1], merged, {"format": "pt"})
    with pytest.raises(SafetensorsError, match=f"'{stolen}' is also in shard"):
        open_checkpoint(d)

    d, index, shards = fresh("unlisted")  # a shard holds a tensor the index never mentions
    del index["weight_map"][stolen]
    _write_index(d, index)
    with pytest.raises(SafetensorsError, match="not listed in the index"):
        open_checkpoint(d)

    d, index, shards = fresh("corruptshard")  # a corrupt shard is reported under its own name
    (d / shards[0]).write_bytes((d / shards[0]).read_bytes()[:-1])
    with pytest.raises(SafetensorsError, match=shards[0]):
        open_checkpoint(d)


def test_directory_without_a_checkpoint(tmp_path):
    with pytest.raises(SafetensorsError, match="no model.safetensors"):
        open_checkpoint(tmp_path)
    for name in ("a.safetensors", "b.safetensors"):
        save_safetensors(tmp_path / name, {"x": np.zeros(1, np.float32)})
    with pytest.raises(SafetensorsError, match="2 .safetensors files and no index"):
        open_checkpoint(tmp_path)
    (tmp_path / "b.safetensors").unlink()
    assert list(open_checkpoint(tmp_path)) == ["x"]  # a lone file of another name is accepted
