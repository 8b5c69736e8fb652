"""Checkpoint writers lose nothing: every file is replaced whole or not at all, and no output may replace an input.

What is shown, for save_safetensors, save_sharded (shards and index), write_llama2c / `llama2c export` and
convert_to_hf_dir / `llama2c import`:
  - a write that fails part-way (the disk "fills up" at a random byte, by RLIMIT_FSIZE, so the real write(2) fails
    with EFBIG) leaves the previous file, or the previous sharded checkpoint, byte-identical, and no temporary file;
  - a sharded checkpoint saved over one of the other layout leaves no stale file a reader could pick instead;
  - writing onto one of the command's own inputs is refused before anything is touched (`export m.bin m.bin` once
    left a 0-byte file): exit status 1, one line naming the file, every input byte-identical;
  - an output that cannot be written (missing or non-directory parent) is one line, and leaves nothing behind.
"""
import errno
import os
import resource
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.files import FileError
from tests.conftest import PROJECT_ROOT
from weights_tools.llama2c import (
    Llama2cHeader,
    Llama2cModel,
    convert_to_hf_dir,
    export_llama2c,
    main,
    read_llama2c,
    write_llama2c,
)
from weights_tools.safetensors import SINGLE_FILE_NAME, open_checkpoint, save_safetensors, save_sharded


@contextmanager
def disk_full_after(n_bytes: int):
    """Inside the block, a write past byte n_bytes of any file fails with EFBIG, as on a full disk. RLIMIT_FSIZE is
    the kernel's per-process file size limit; SIGXFSZ is ignored so that write(2) returns the error instead of the
    signal killing the process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (temporary files included) -> its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def tiny_llama2c(path: Path, seed: int = 0) -> Path:
    """A random untied version-1 model: 2 layers, dim 8, GQA (2 heads, 1 KV head); 4,896 bytes with the header."""
    h = Llama2cHeader(dim=8, hidden_dim=12, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=10, seq_len=4,
                      shared_classifier=False)
    rng = np.random.default_rng(seed)
    tensors = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in h.tensor_shapes().items()}
    write_llama2c(path, Llama2cModel(h, tensors))
    return path


def random_tensors(seed: int, n: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {f"t{i}": rng.standard_normal((3, 5 + i)).astype(np.float32) for i in range(n)}


def test_disk_full_helper_makes_writes_fail(tmp_path):
    """The fault injection itself: a plain write past the limit raises EFBIG, and the limit is lifted afterwards."""
    with disk_full_after(100), pytest.raises(OSError) as caught, open(tmp_path / "f", "wb") as f:
        f.write(bytes(1000))
        f.flush()
    assert caught.value.errno == errno.EFBIG
    (tmp_path / "g").write_bytes(bytes(1000))


@settings(max_examples=30)
@given(seed=st.integers(0, 100), fraction=st.floats(0, 0.999))
def test_failed_save_safetensors_keeps_the_old_file(tmp_path_factory, seed, fraction):
    """Overwrite a file with a larger one; the disk fills up at a random byte: the old file is intact and alone."""
    d = tmp_path_factory.mktemp("st")
    save_safetensors(d / "w.safetensors", {"old": np.arange(6, dtype=np.float32)})
    before = snapshot(d)
    new = random_tensors(seed)
    with disk_full_after(int(fraction * sum(a.nbytes for a in new.values()))), pytest.raises(OSError):
        save_safetensors(d / "w.safetensors", new, dtypes={"t1": "BF16"})
    assert snapshot(d) == before
    save_safetensors(d / "w.safetensors", new)  # and the same write, with room, succeeds
    assert np.array_equal(open_checkpoint(d / "w.safetensors")["t3"], new["t3"])


@settings(max_examples=30)
@given(seed=st.integers(0, 100), fraction=st.floats(0, 0.999))
def test_failed_save_sharded_keeps_the_old_checkpoint(tmp_path_factory, seed, fraction):
    """Re-saving a sharded checkpoint with the same names and sizes but new values fails part-way through any of its
    files: every old shard and the old index are byte-identical (all files are complete before any is renamed), so
    no reader can see a mix of old and new shards."""
    d = tmp_path_factory.mktemp("sharded")
    old = random_tensors(seed)
    save_sharded(d, old, max_shard_bytes=150)
    before = snapshot(d)
    assert len(before) == 4  # three shards (t0 + t1, t2, t3) and the index
    new = random_tensors(seed + 1000)
    largest_file = max(len(raw) for raw in before.values())
    with disk_full_after(int(fraction * largest_file)), pytest.raises(OSError):
        save_sharded(d, new, max_shard_bytes=150)
    assert snapshot(d) == before
    assert np.array_equal(open_checkpoint(d)["t2"], old["t2"])


def test_sharded_over_single_and_back_leaves_no_stale_file(tmp_path):
    """A stale model.safetensors beside a new index would be read instead of it (readers look for the single file
    first), and stale shards beside a new model.safetensors would be a second copy: both are removed once the new
    checkpoint is in place. Files that are not checkpoint files stay."""
    (tmp_path / "config.json").write_text("{}")
    save_sharded(tmp_path, {"a": np.zeros(3, np.float32)}, max_shard_bytes=1000)
    new = random_tensors(1)
    written = save_sharded(tmp_path, new, max_shard_bytes=150)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["config.json"] + [p.name for p in written])
    assert np.array_equal(open_checkpoint(tmp_path)["t0"], new["t0"])
    newer = random_tensors(2)
    assert save_sharded(tmp_path, newer, max_shard_bytes=10**6) == [tmp_path / SINGLE_FILE_NAME]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", SINGLE_FILE_NAME]
    assert np.array_equal(open_checkpoint(tmp_path)["t0"], newer["t0"])


@settings(max_examples=20)
@given(fraction=st.floats(0, 0.999))
def test_failed_llama2c_export_keeps_the_old_file(tmp_path_factory, fraction):
    d = tmp_path_factory.mktemp("export")
    source, target = tiny_llama2c(d / "a.bin", seed=1), tiny_llama2c(d / "b.bin", seed=2)
    before = snapshot(d)
    with disk_full_after(int(fraction * source.stat().st_size)), pytest.raises(OSError):
        export_llama2c(source, target)
    assert snapshot(d) == before


@settings(max_examples=20)
@given(fraction=st.floats(0, 0.999), existing=st.booleans())
def test_failed_llama2c_import_leaves_nothing(tmp_path_factory, fraction, existing):
    """convert_to_hf_dir fails while writing model.safetensors or config.json: what it wrote is removed again, and
    the output directory is as before (absent, or empty)."""
    d = tmp_path_factory.mktemp("import")
    source = tiny_llama2c(d / "m.bin")
    if existing:
        (d / "out").mkdir()
    before = snapshot(d)
    with disk_full_after(int(fraction * source.stat().st_size)), pytest.raises(OSError):
        convert_to_hf_dir(source, d / "out")
    assert snapshot(d) == before
    assert (d / "out").exists() == existing


def test_failed_config_json_removes_the_weights(tmp_path, monkeypatch):
    """config.json is written last (it is what makes a directory a model); if it fails, the weights written just
    before are removed and the directory this call created is gone."""
    source = tiny_llama2c(tmp_path / "m.bin")

    def fail(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("weights_tools.llama2c.write_text", fail)
    with pytest.raises(OSError, match="config.json"):
        convert_to_hf_dir(source, tmp_path / "new" / "out")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m.bin", "new"]


# ----------------------------------------------------------------------------------------------------------------
# Outputs that are inputs


def assert_one_line_error(capsys, *names):
    """The CLI printed exactly one line, on stderr, starting with "error: " and naming each of `names`."""
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and err.count("\n") == 1, (out, err)
    for name in names:
        assert str(name) in err, (name, err)
    return err


@pytest.fixture
def model_files(tmp_path):
    """tmp_path/m.bin (llama2.c), tmp_path/hf/ (its Hugging Face directory, with a tokenizer file beside the
    weights), and a symlink tmp_path/link.bin -> m.bin."""
    tiny_llama2c(tmp_path / "m.bin")
    convert_to_hf_dir(tmp_path / "m.bin", tmp_path / "hf")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    (tmp_path / "link.bin").symlink_to(tmp_path / "m.bin")
    return tmp_path


@pytest.mark.parametrize("source, target, refused", [
    ("m.bin", "m.bin", "m.bin"),
    ("m.bin", "./m.bin", "m.bin"),
    ("m.bin", "link.bin", "link.bin"),
    ("link.bin", "m.bin", "m.bin"),
    ("hf", "hf/model.safetensors", "hf/model.safetensors"),
    ("hf", "hf/config.json", "hf/config.json"),
    ("hf", "hf/tokenizer.json", "hf/tokenizer.json"),
    ("hf", "hf", "hf"),
], ids=["same", "dot", "symlink-target", "symlink-source", "weights", "config", "tokenizer", "directory"])
def test_export_onto_an_input_is_refused(model_files, capsys, monkeypatch, source, target, refused):
    before = snapshot(model_files)
    monkeypatch.chdir(model_files)  # relative names, as a user types them
    assert main(["export", source, target]) == 1
    assert_one_line_error(capsys, refused)
    assert snapshot(model_files) == before


@pytest.mark.parametrize("out_dir", ["m.bin", ".", "hf"], ids=["the-input", "its-directory", "another-model"])
def test_import_onto_an_input_is_refused(model_files, capsys, out_dir):
    """The output directory must be new or empty, so no output file can replace an input or another model's file."""
    before = snapshot(model_files)
    assert main(["import", str(model_files / "m.bin"), str(model_files / out_dir)]) == 1
    assert_one_line_error(capsys, model_files / out_dir)  # pathlib drops the ".": the message names model_files
    assert snapshot(model_files) == before


def test_export_onto_itself_from_the_shell(model_files):
    """The command from the issue, run as a user runs it: refused, one line, the file byte-identical."""
    before = snapshot(model_files)
    run = subprocess.run([sys.executable, "-m", "weights_tools.llama2c", "export", "m.bin", "m.bin"],
                         cwd=model_files, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr == "error: refusing to write m.bin: it is the input m.bin (write the output elsewhere)\n"
    assert snapshot(model_files) == before


def test_api_refuses_before_reading(model_files):
    """export_llama2c refuses the target before reading the source: a source that is not even a model gets the
    refusal, not a parse error."""
    (model_files / "junk.bin").write_bytes(b"junk")
    with pytest.raises(FileError, match="junk.bin: it is the input"):
        export_llama2c(model_files / "junk.bin", model_files / "junk.bin")
    assert (model_files / "junk.bin").read_bytes() == b"junk"


@pytest.mark.parametrize("command, parent", [("export", "missing"), ("export", "a-file"), ("import", "a-file")])
def test_unwritable_output_is_one_line(model_files, capsys, command, parent):
    """An output whose directory is missing, or is a regular file: one line naming where, nothing left behind.
    (import creates missing parents of its new directory, as mkdir -p does.)"""
    where = model_files / ("no/such/dir" if parent == "missing" else "m.bin")
    before = snapshot(model_files)
    assert main([command, str(model_files / "m.bin"), str(where / "out")]) == 1
    assert_one_line_error(capsys, where)
    assert snapshot(model_files) == before


def test_export_result_is_the_model(model_files):
    """After all the refusals above, a plain export still writes the model: same tensors as the source."""
    out = export_llama2c(model_files / "hf", model_files / "v1.bin")
    source, back = read_llama2c(model_files / "m.bin"), read_llama2c(out)
    assert all(np.array_equal(back.tensors[name], source.tensors[name]) for name in source.tensors)
