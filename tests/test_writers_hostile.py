"""Hostile inputs to the checkpoint writers and readers, and their CLIs: success or one clear error, quickly.

What is shown:
  - save_safetensors refuses, with SafetensorsError naming the file, every argument the reader or the format would
    refuse (fuzzed: non-mapping `tensors`, names of every type, lone surrogates, `__metadata__`, values that are not
    arrays or have no safetensors dtype, odd metadata and dtypes), and never raises anything else; whatever the
    reference library (safetensors 0.8) refuses to write, we refuse too; whatever we write, both read back equal.
    A refused save leaves the file already at the path byte-identical. The 100,000,000-byte header limit is exact
    on both sides of the boundary, as in the reference writer.
  - readers open regular files only: a FIFO, /dev/zero, a directory or a socket where a .safetensors file, a shard,
    an index, config.json or a .bin should be is an OSError naming it, at once (a FIFO used to hang the reader);
  - llama2.c headers (fuzzed, all seven sizes up to 2**31 - 1, legacy and version 1) are checked against the file's
    size before anything is allocated: success or one Llama2cError naming the file, in well under a second;
  - the CLIs (`inspect`, `llama2c import|export`) print one line and exit 1 for every bad input, including a
    MemoryError, which names the size.
Every case runs under `time_limit`: a hang fails the test instead of stalling the suite.
"""
import json
import math
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.conftest import PROJECT_ROOT, make_non_regular, time_limit
from tests.test_writers_atomic import tiny_llama2c
from weights_tools import inspect, llama2c
from weights_tools.llama2c import MAGIC, Llama2cError, read_llama2c
from weights_tools.safetensors import (
    INDEX_FILE_NAME,
    MAX_HEADER_BYTES,
    SINGLE_FILE_NAME,
    SafetensorsError,
    open_checkpoint,
    open_safetensors,
    save_safetensors,
    save_sharded,
)

SECONDS = 5  # per case; each takes milliseconds when nothing hangs


def assert_one_line_error(capsys, *names):
    """The CLI printed exactly one line, on stderr, starting with "error: " and naming each of `names`."""
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1, (out, err)
    assert "Traceback" not in err
    for name in names:
        assert str(name) in err, (name, err)
    return err


# ----------------------------------------------------------------------------------------------------------------
# The safetensors writer against the reference writer, on arguments of every shape


class NotAMapping:
    """Has .items(), like a dict, but is not a Mapping: the reference calls .items() and goes on."""

    def items(self):
        return [("a", np.zeros(2, np.float32))]


text = st.text(max_size=6)
lone_surrogates = st.sampled_from(["\ud800", "a\udfff", "\udc80b"])
names = st.one_of(text, lone_surrogates, st.just("__metadata__"), st.integers(-2, 2), st.binary(max_size=3),
                  st.none(), st.tuples(st.integers(0, 2)), st.floats(allow_nan=False))
arrays = st.one_of(
    hnp.arrays(st.sampled_from([np.float32, np.float16, np.int64, np.uint8, np.bool_, ">f4", ">i2"]),
               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)),
    hnp.arrays(st.sampled_from([np.complex64, "U2", "S2", "M8[s]", object]), st.integers(0, 3)),
)
values = st.one_of(arrays, arrays.map(lambda a: a.tolist()), st.none(), st.integers(), text,
                   arrays.map(lambda a: a[::2] if a.ndim else a))  # strided views
tensor_args = st.one_of(
    st.dictionaries(names, values, max_size=4),
    st.lists(st.tuples(text, arrays), max_size=2), st.none(), text, st.builds(NotAMapping),
)
metadata_args = st.one_of(st.none(), st.dictionaries(st.one_of(text, lone_surrogates, st.integers()),
                                                     st.one_of(text, lone_surrogates, st.integers(), st.none()),
                                                     max_size=2),
                          st.lists(text, max_size=2), text)
dtype_args = st.one_of(st.none(), st.dictionaries(st.one_of(text, st.integers()),
                                                  st.sampled_from(["BF16", "F16", "F32", "I8", "X", 3, None]),
                                                  max_size=2), st.lists(text, max_size=1))


def reference_writes(path, tensors, metadata) -> bool:
    """Whether safetensors.numpy.save_file writes a file that its own reader then loads."""
    try:
        safetensors.numpy.save_file(tensors, path, metadata=metadata)
        safetensors.numpy.load_file(path)
    except Exception:  # TypeError, AttributeError, UnicodeEncodeError, SafetensorError: all refusals here
        return False
    return True


@settings(max_examples=300)
@given(tensors=tensor_args, metadata=metadata_args, dtypes=dtype_args)
def test_writer_refuses_what_the_reader_refuses(tmp_path_factory, tensors, metadata, dtypes):
    d = tmp_path_factory.mktemp("w")
    path = d / "w.safetensors"
    path.write_bytes(b"previous content")
    try:
        with time_limit(SECONDS):
            save_safetensors(path, tensors, metadata, dtypes=dtypes)
    except SafetensorsError as e:
        assert str(path) in str(e)
        assert path.read_bytes() == b"previous content" and [p.name for p in d.iterdir()] == ["w.safetensors"]
        return
    ours = open_safetensors(path)  # what we write, we read
    assert isinstance(tensors, dict) and sorted(ours) == sorted(tensors)
    assert [p.name for p in d.iterdir()] == ["w.safetensors"]
    if dtypes or (not tensors and metadata == {}):
        return  # the reference has no dtypes argument (test_safetensors.py compares conversions with torch), and
        # for no tensors with metadata {} it writes a header its own reader refuses (safetensors.py docstring)
    assert reference_writes(d / "reference.safetensors", tensors, metadata)  # never accept what it refuses
    theirs = safetensors.numpy.load_file(path)  # and it reads ours as we do
    for name in tensors:
        assert ours[name].dtype == theirs[name].dtype and np.array_equal(ours[name], theirs[name], equal_nan=True)
        assert np.array_equal(ours[name], tensors[name].astype(ours[name].dtype), equal_nan=True)


WRITER_ERRORS = [
    ("list", [("a", np.zeros(2, np.float32))], None, "tensors must be a mapping of name -> NumPy array, got a list"),
    ("int-name", {1: np.zeros(2, np.float32)}, None, "tensor name 1 is not a str but a value of type int"),
    ("surrogate", {"\ud800x": np.zeros(2, np.float32)}, None, "tensor name '\\ud800x' is not valid Unicode"),
    ("reserved", {"__metadata__": np.zeros(2, np.float32)}, None, "'__metadata__' is reserved"),
    ("list-value", {"a": [1.0, 2.0]}, None, "tensor 'a': value is not a NumPy array but a value of type list"),
    ("none-value", {"a": None}, None, "tensor 'a': value is not a NumPy array but a value of type NoneType"),
    ("object", {"a": np.array([None])}, None, "NumPy dtype object has no safetensors equivalent"),
    ("complex", {"a": np.zeros(2, np.complex64)}, None, "NumPy dtype complex64 has no safetensors equivalent"),
    ("meta-list", {}, ["a"], "metadata must map strings to strings"),
    ("meta-int", {}, {"a": 1}, "metadata must map strings to strings"),
    ("meta-surrogate", {}, {"a": "\udc80"}, "metadata['a'] '\\udc80' is not valid Unicode"),
]


@pytest.mark.parametrize("case, tensors, metadata, message", WRITER_ERRORS, ids=[c[0] for c in WRITER_ERRORS])
def test_writer_errors_name_the_culprit(tmp_path, case, tensors, metadata, message):
    """Each refusal by hand, with the reference's behaviour on the same call: it raises AttributeError/TypeError/
    UnicodeEncodeError, or (reserved name, complex) writes a file we would refuse to read."""
    with pytest.raises(SafetensorsError) as caught:
        save_safetensors(tmp_path / "w.safetensors", tensors, metadata)
    assert str(tmp_path / "w.safetensors") in str(caught.value) and message in str(caught.value)
    assert not (tmp_path / "w.safetensors").exists()
    if case != "complex":  # safetensors 0.8 stores complex64 as C64, a dtype we do not read
        assert not reference_writes(tmp_path / "reference.safetensors", tensors, metadata)


def metadata_for_header_of(n_bytes: int) -> dict[str, str]:
    """Metadata whose file header (one F32 tensor "a" of 2 elements, no padding needed) is exactly n_bytes."""
    fixed = len(json.dumps({"__metadata__": {"k": ""}, "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
                           separators=(",", ":")))
    return {"k": "x" * (n_bytes - fixed)}


def test_header_limit_is_exact_as_in_the_reference(tmp_path):
    """A header of exactly MAX_HEADER_BYTES (100,000,000) is written and read by both; 8 bytes more (the next
    padded size) is refused by both writers, before a byte is written."""
    a = {"a": np.zeros(2, np.float32)}
    at_limit = metadata_for_header_of(MAX_HEADER_BYTES)
    save_safetensors(tmp_path / "limit.safetensors", a, at_limit)
    assert int.from_bytes((tmp_path / "limit.safetensors").read_bytes()[:8], "little") == MAX_HEADER_BYTES
    assert open_safetensors(tmp_path / "limit.safetensors").metadata == at_limit
    assert reference_writes(tmp_path / "reference.safetensors", a, at_limit)
    over = metadata_for_header_of(MAX_HEADER_BYTES + 8)
    with pytest.raises(SafetensorsError, match=r"header would be 100,000,008 bytes, over the format's limit of "
                                               r"100,000,000"):
        save_safetensors(tmp_path / "over.safetensors", a, over)
    assert not (tmp_path / "over.safetensors").exists()
    assert not reference_writes(tmp_path / "reference.safetensors", a, over)


def test_sharded_save_checks_every_header_before_writing(tmp_path, monkeypatch):
    """The last shard's header is too large (the limit lowered to keep the test small): refused before the first
    shard is written, so the older checkpoint in the directory stays whole."""
    save_sharded(tmp_path, {"old": np.zeros(4, np.float32)}, max_shard_bytes=100)
    before = (tmp_path / SINGLE_FILE_NAME).read_bytes()
    monkeypatch.setattr("weights_tools.safetensors.MAX_HEADER_BYTES", 200)
    tensors = {"a": np.zeros(30, np.float32), "b": np.zeros(30, np.float32), "c" * 300: np.zeros(30, np.float32)}
    with pytest.raises(SafetensorsError, match="model-00003-of-00003.safetensors: the header would be"):
        save_sharded(tmp_path, tensors, max_shard_bytes=120)
    assert sorted(p.name for p in tmp_path.iterdir()) == [SINGLE_FILE_NAME]
    assert (tmp_path / SINGLE_FILE_NAME).read_bytes() == before


@pytest.mark.parametrize("arguments, message", [
    (dict(tensors=[("a", np.zeros(2))], max_shard_bytes=10), "tensors must be a mapping"),
    (dict(tensors={"a": np.zeros(2)}, max_shard_bytes=True), "max_shard_bytes must be a positive integer"),
    (dict(tensors={"a": [1, 2]}, max_shard_bytes=10), "value of type list"),
    (dict(tensors={"a": np.zeros(2)}, max_shard_bytes=10, dtypes=["a"]), "dtypes must be a mapping"),
])
def test_save_sharded_errors(tmp_path, arguments, message):
    with pytest.raises(SafetensorsError, match=message):
        save_sharded(tmp_path / "out", **arguments)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------------------
# Readers open regular files only


# What the error says. open(2) itself refuses a socket (ENXIO) before nanollm.files can fstat it.
KIND_WORDS = {"fifo": "is a FIFO", "/dev/zero": "is a character device", "directory": "is a directory",
              "socket": "is a socket|No such device or address"}


def model_dir(directory: Path, *, sharded: bool) -> Path:
    """A Hugging Face Llama directory that llama2.c can export, in one file or in shards, with a config.json."""
    tiny_llama2c(directory.parent / f"{directory.name}.bin")
    llama2c.convert_to_hf_dir(directory.parent / f"{directory.name}.bin", directory)
    if sharded:
        tensors = {name: np.array(a) for name, a in open_checkpoint(directory).items()}
        save_sharded(directory, tensors, max_shard_bytes=1000)
    return directory


@pytest.mark.parametrize("kind", sorted(KIND_WORDS))
@pytest.mark.parametrize("where", ["model.safetensors", "index", "shard", "config.json", "lone .safetensors",
                                   ".bin"])
def test_readers_refuse_what_is_not_a_regular_file(tmp_path, capsys, kind, where):
    """Through the API and through both CLIs: an OSError (nanollm.files.FileError) naming the file and what it is,
    at once; the CLIs print it as one line."""
    if where in ("model.safetensors", "index", "shard", "config.json"):
        directory = model_dir(tmp_path / "m", sharded=where in ("index", "shard"))
        shards = sorted(directory.glob("model-*-of-*.safetensors"))
        victim = {"model.safetensors": directory / SINGLE_FILE_NAME, "index": directory / INDEX_FILE_NAME,
                  "shard": shards[-1] if shards else None, "config.json": directory / "config.json"}[where]
        victim.unlink()
        target = directory
    else:
        victim = target = tmp_path / ("w.safetensors" if where == "lone .safetensors" else "m.bin")
    make_non_regular(victim, kind)
    # A directory named w.safetensors is read as a model directory, and one without a checkpoint is a
    # SafetensorsError saying so; every other case is an OSError saying what the file is.
    read_as_directory = kind == "directory" and where == "lone .safetensors"
    with time_limit(SECONDS):
        with pytest.raises(SafetensorsError if read_as_directory else OSError) as caught:
            {".bin": read_llama2c, "config.json": llama2c.read_any}.get(where, open_checkpoint)(target)
        words = "no model.safetensors" if read_as_directory else KIND_WORDS[kind]
        assert str(victim) in str(caught.value) and re.search(words, str(caught.value))
        assert inspect.main([str(target)]) == 1
        assert_one_line_error(capsys, victim)
        command = ["import", str(target), str(tmp_path / "out")] if where == ".bin" else \
            ["export", str(target), str(tmp_path / "out.bin")]
        if where != "lone .safetensors":  # llama2c reads .bin files and model directories
            assert llama2c.main(command) == 1
            assert_one_line_error(capsys, victim)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("length", [2**63, 2**64 - 1, MAX_HEADER_BYTES + 1, 10**6, 3])
def test_safetensors_header_length_beyond_the_file(tmp_path, length):
    """The 8-byte length field is checked against the limit and the file's size before anything is read or
    allocated: 2**63 is one SafetensorsError at once, as is a length between the file size and the limit."""
    path = tmp_path / "w.safetensors"
    path.write_bytes(length.to_bytes(8, "little") + b'{"a":1}' + bytes(100))
    with time_limit(SECONDS), pytest.raises(SafetensorsError) as caught:
        open_safetensors(path)
    assert str(path) in str(caught.value)
    expected = "exceeds the limit of 100000000" if length > MAX_HEADER_BYTES else \
        "runs past the end" if length > 100 else "is not valid JSON"
    assert expected in str(caught.value)


def test_header_too_big_for_memory_is_one_error(tmp_path, monkeypatch):
    """A header of millions of tiny entries takes many times its size as Python objects: MemoryError while parsing
    it becomes a SafetensorsError naming the file and the header's size."""
    save_safetensors(tmp_path / "w.safetensors", {"a": np.zeros(2, np.float32)})

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr("weights_tools.safetensors.json.loads", out_of_memory)
    with pytest.raises(SafetensorsError, match=r"w.safetensors: out of memory parsing the 56-byte header"):
        open_safetensors(tmp_path / "w.safetensors")


# ----------------------------------------------------------------------------------------------------------------
# llama2.c headers

int32 = st.one_of(st.integers(-3, 40), st.integers(-2**31, 2**31 - 1), st.sampled_from([2**31 - 1, 10**9, -2**31]))


@settings(max_examples=200)
@given(version=st.sampled_from([0, 1, 2]), sizes=st.lists(int32, min_size=7, max_size=7), shared=st.integers(0, 2),
       data_length=st.one_of(st.integers(0, 5000), st.just(None)))
def test_llama2c_headers_are_checked_before_allocating(tmp_path_factory, version, sizes, shared, data_length):
    """Any seven sizes, in a legacy or version-1 header, with any amount of data after it (or exactly the amount
    the header implies, when that is small): a model or one Llama2cError naming the file, in under SECONDS."""
    dim, hidden, layers, heads, kv_heads, vocab, seq = sizes
    header = (struct.pack("<Ii7iB", MAGIC, version, *sizes, shared).ljust(256, b"\0") if version else
              struct.pack("<7i", *sizes))
    if data_length is None:  # the size the header implies, when the sizes make sense
        assume(min(sizes) > 0 and dim % heads == 0 and dim <= 64 and max(hidden, layers, kv_heads, vocab, seq) <= 64)
        shapes = llama2c.Llama2cHeader(dim, hidden, layers, heads, kv_heads, abs(vocab), seq, shared_classifier=True,
                                       version=version).tensor_shapes()
        data_length = 4 * sum(math.prod(shape) for shape in shapes.values())
    path = tmp_path_factory.mktemp("bin") / "m.bin"
    content = header + bytes(data_length)
    path.write_bytes(content)
    with time_limit(SECONDS):
        try:
            model = read_llama2c(path)
        except Llama2cError as e:
            assert str(path) in str(e)
        else:
            assert model.header.n_layers == layers and model.tensors["wq"].shape[0] == layers
    assert path.read_bytes() == content


def test_a_billion_layers_is_one_error_at_once(tmp_path, capsys):
    """The header claims 10**9 layers of a 288-wide model (about 4 PB): the size check answers before any
    allocation, in milliseconds, through the API and both CLIs."""
    path = tmp_path / "huge.bin"
    path.write_bytes(struct.pack("<7i", 288, 768, 10**9, 6, 6, 32000, 256) + bytes(1000))
    with time_limit(1):
        with pytest.raises(Llama2cError, match=r"n_layers=1000000000.*implies 3,983,616,036,914,304 bytes"):
            read_llama2c(path)
        assert inspect.main([str(path)]) == 1
        assert_one_line_error(capsys, path, "implies")
        assert llama2c.main(["import", str(path), str(tmp_path / "out")]) == 1
        assert_one_line_error(capsys, path, "implies")


# ----------------------------------------------------------------------------------------------------------------
# The CLIs: one line for every bad input


@pytest.fixture
def bad_inputs(tmp_path):
    """name -> a path that is not a usable model."""
    (tmp_path / "junk.bin").write_bytes(b"not a model at all, just text")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 40)
    (tmp_path / "bad-header.safetensors").write_bytes((30).to_bytes(8, "little") + b'{"a": {"dtype": "F32"}}' + b" " * 7)
    (tmp_path / "empty").mkdir()
    (tmp_path / "no-config").mkdir()
    save_safetensors(tmp_path / "no-config" / SINGLE_FILE_NAME, {"a": np.zeros(2, np.float32)})
    os.mkfifo(tmp_path / "fifo.bin")
    return {name: tmp_path / name for name in ("junk.bin", "junk.safetensors", "bad-header.safetensors", "empty",
                                               "no-config", "fifo.bin", "missing.bin")}


@pytest.mark.parametrize("cli", ["inspect", "import", "export"])
@pytest.mark.parametrize("name", ["junk.bin", "junk.safetensors", "bad-header.safetensors", "empty", "no-config",
                                  "fifo.bin", "missing.bin"])
def test_every_bad_input_is_one_line(tmp_path, bad_inputs, capsys, cli, name):
    path = bad_inputs[name]
    if cli == "inspect":
        argv, main = [str(path)], inspect.main
    else:
        argv, main = [cli, str(path), str(tmp_path / ("out" if cli == "import" else "out.bin"))], llama2c.main
    with time_limit(SECONDS):
        assert main(argv) == 1
    assert_one_line_error(capsys, path)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.bin").exists()


@pytest.mark.parametrize("module, args, expected", [
    ("weights_tools.inspect", ["fifo.bin"], "error: fifo.bin is a FIFO (named pipe), not a regular file\n"),
    ("weights_tools.llama2c", ["export", "junk.bin", "o.bin"], "error: junk.bin: header (dim=1802401130, "),
], ids=["inspect-fifo", "export-junk"])
def test_cli_as_a_user_runs_it(tmp_path, module, args, expected):
    """The real entry point, in a new process: exit 1, one line, no traceback."""
    os.mkfifo(tmp_path / "fifo.bin")
    (tmp_path / "junk.bin").write_bytes(b"junk" * 10)
    run = subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert run.returncode == 1 and run.stdout == "" and run.stderr.count("\n") == 1, run.stderr
    assert run.stderr.startswith(expected)


@pytest.mark.parametrize("failure", ["numpy", "bare"])
def test_memory_error_is_one_line_naming_the_size(tmp_path, capsys, monkeypatch, failure):
    """Out of memory during a conversion: NumPy's own message names the allocation; a bare MemoryError still gets
    the input's size on disk. Nothing is left behind."""
    source = tiny_llama2c(tmp_path / "m.bin")

    def allocate(*args):
        if failure == "numpy":
            return np.empty(2**60, np.uint8)  # NumPy refuses at once: "Unable to allocate 1.00 EiB ..."
        raise MemoryError

    monkeypatch.setattr("weights_tools.llama2c.to_rotate_half_order", allocate)
    assert llama2c.main(["import", str(source), str(tmp_path / "out")]) == 1
    err = assert_one_line_error(capsys, source, "out of memory", f"({source.stat().st_size:,} bytes on disk)")
    assert ("Unable to allocate 1.00 EiB" in err) == (failure == "numpy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin"]
