"""pytorch_model.bin checkpoints end to end (weights_tools/checkpoint.py): a model directory whose weights are a
PyTorch .bin, single or sharded, reads exactly as its safetensors twin, and `python -m weights_tools.convert DIR
OUT` writes a safetensors copy of any model directory, atomically.

The reference is transformers itself: each case writes a tiny GPT-2 or Llama with save_pretrained (safetensors),
then its .bin twin as transformers 4 wrote one (transformers 5 ignores save_pretrained(safe_serialization=False)):
torch.save of the model's state dict in its storage dtype, where a tied lm_head.weight is the embedding's own
storage, sharded by huggingface_hub's split_torch_state_dict_into_shards under pytorch_model.bin.index.json.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import split_torch_state_dict_into_shards
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM

import nanollm
import nanollm.memory
from nanollm.files import FileError
from tests.conftest import PROJECT_ROOT, make_non_regular, time_limit
from tests.hf_models import DTYPES, Options, build_checkpoint
from tests.test_torch_checkpoint import Payload, replaced
from weights_tools import checkpoint
from weights_tools.checkpoint import convert_checkpoint, main, open_weights
from weights_tools.inspect import inspect_path
from weights_tools.inspect import main as inspect_main
from weights_tools.safetensors import SafetensorsError
from weights_tools.torch_checkpoint import TorchCheckpointError

EMBEDDING = {"gpt2": "transformer.wte.weight", "llama": "model.embed_tokens.weight"}
SHARD_BYTES = 12_000  # shards of a few tensors each for these tiny models


def write_bin_twin(source: Path, directory: Path, storage: str, *, sharded: bool) -> dict[str, torch.Tensor]:
    """The .bin twin of the safetensors checkpoint in `source` (config.json and generation_config.json copied)
    -> the state dict it holds. Sharded as transformers 4's save_pretrained shards a .bin: names from
    "pytorch_model{suffix}.bin", the index's weight_map from the split."""
    state = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[storage]).state_dict()
    directory.mkdir()
    for name in ("config.json", "generation_config.json"):
        shutil.copyfile(source / name, directory / name)
    if not sharded:
        torch.save(state, directory / "pytorch_model.bin")
        return state
    split = split_torch_state_dict_into_shards(state, filename_pattern="pytorch_model{suffix}.bin",
                                               max_shard_size=SHARD_BYTES)
    for filename, names in split.filename_to_tensors.items():
        torch.save({name: state[name] for name in names}, directory / filename)
    index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))
    return state


CASES = [
    Options(arch="gpt2", storage="F32", tied=True),
    Options(arch="gpt2", storage="F16", tied=True, sharded=True),
    Options(arch="gpt2", storage="BF16", tied=False),
    Options(arch="llama", storage="BF16", tied=True, sharded=True),
    Options(arch="llama", storage="F16", tied=False),
    Options(arch="llama", storage="F32", tied=False, sharded=True, n_kv_head=2),
]
IDS = [f"{o.arch}-{o.storage}-{'tied' if o.tied else 'untied'}-{'sharded' if o.sharded else 'single'}" for o in CASES]


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def twins(request, tmp_path_factory):
    """(options, safetensors directory, .bin directory, the .bin's state dict); both sharded or both single."""
    o = request.param
    root = tmp_path_factory.mktemp("twins")
    st_dir, _ = build_checkpoint(root / "st", o)
    state = write_bin_twin(st_dir, root / "bin", o.storage, sharded=o.sharded)
    return o, st_dir, root / "bin", state


def assert_same_weights(got, expected, names) -> None:
    """Every tensor of `names` equal exactly, as safetensors describes it (dtype name, shape, bytes) and as NumPy
    holds it (dtype, values)."""
    for name in names:
        assert got.info(name)[1:] == expected.info(name)[1:], name
        a, b = got[name], expected[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a, b), name


def test_bin_reads_exactly_as_its_safetensors_twin(twins):
    o, st_dir, bin_dir, state = twins
    if o.tied:  # the premise: the .bin holds lm_head.weight as the embedding's own storage, stored once
        assert len({state[n].untyped_storage().data_ptr() for n in ("lm_head.weight", EMBEDDING[o.arch])}) == 1
    index = bin_dir / "pytorch_model.bin.index.json"
    assert index.exists() == (st_dir / "model.safetensors.index.json").exists() == o.sharded
    from_bin, from_safetensors = open_weights(bin_dir), open_weights(st_dir)
    shards = set(json.loads(index.read_text())["weight_map"].values()) if o.sharded else {"pytorch_model.bin"}
    assert {f.path.name for f in from_bin.files} == shards
    # save_pretrained drops the tied copy from the safetensors file; the .bin names it, and it is the embedding
    assert set(from_bin) == set(from_safetensors) | ({"lm_head.weight"} if o.tied else set())
    assert_same_weights(from_bin, from_safetensors, from_safetensors)
    if o.tied:
        assert np.array_equal(from_bin["lm_head.weight"], from_safetensors[EMBEDDING[o.arch]])


def model_arrays(model) -> dict[str, np.ndarray]:
    """Every weight array of a loaded model by field name (None fields left out)."""
    w = model.weights
    arrays = {k: v for k, v in vars(w).items() if k != "layers" and v is not None}
    for i, layer in enumerate(w.layers):
        arrays |= {f"layers.{i}.{k}": v for k, v in vars(layer).items() if v is not None}
    return arrays


def assert_same_model(got, expected) -> None:
    """Identical config, weights (exactly) and logits (exactly: the same float32 arrays through the same pass)."""
    assert got.config == expected.config
    a, b = model_arrays(got), model_arrays(expected)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    ids = np.array([[1, 5, 9, 3, 7, 2, 8]])
    assert np.array_equal(got.forward(ids), expected.forward(ids))


def test_nanollm_loads_a_bin_directory_as_its_safetensors_twin(twins):
    _, st_dir, bin_dir, _ = twins
    assert_same_model(nanollm.load(bin_dir), nanollm.load(st_dir))


def test_the_bin_file_itself_is_one_error_naming_its_directory(gpt2):
    """A .bin path is read as llama2.c's format; a PyTorch archive there says what it is and where to point."""
    bin_dir = gpt2[1]
    with pytest.raises(ValueError) as e:
        nanollm.load(bin_dir / "pytorch_model.bin")
    assert str(e.value) == (f"{bin_dir / 'pytorch_model.bin'}: a PyTorch checkpoint (a zip archive), not a llama2.c "
                            f"file: nanollm reads it from its model directory, beside its config.json ({bin_dir})")


# ----------------------------------------------------------------------------------------------------------------
# Which file a directory is read from


def hostile_bin(path: Path, marker: Path) -> None:
    """A torch.save archive whose data.pkl would create `marker` if pickle.load ever unpickled it."""
    torch.save({"w": torch.zeros(2)}, path)
    evil = pickle.dumps({"w": Payload(os.system, f"touch {marker}")}, protocol=2)
    path.write_bytes(replaced(path.read_bytes(), "/data.pkl", evil))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """A tied GPT-2 as safetensors, and its .bin twins: single and sharded."""
    root = tmp_path_factory.mktemp("gpt2")
    st_dir, _ = build_checkpoint(root / "st", Options(arch="gpt2", tied=True))
    write_bin_twin(st_dir, root / "bin", "F32", sharded=False)
    write_bin_twin(st_dir, root / "sharded", "F32", sharded=True)
    return st_dir, root / "bin", root / "sharded"


def test_safetensors_is_preferred_and_the_pickle_beside_it_never_opened(tmp_path, gpt2):
    """transformers' order: model.safetensors before pytorch_model.bin. A hostile .bin beside a safetensors file is
    not read at all: the payload never runs and nothing is refused; alone in a directory it is refused by name."""
    st_dir, _, _ = gpt2
    directory = shutil.copytree(st_dir, tmp_path / "both")
    marker = tmp_path / "MARKER"
    hostile_bin(directory / "pytorch_model.bin", marker)
    expected = open_weights(st_dir)
    assert_same_weights(open_weights(directory), expected, expected)
    (tmp_path / "alone").mkdir()
    shutil.copyfile(directory / "pytorch_model.bin", tmp_path / "alone" / "pytorch_model.bin")
    with pytest.raises(TorchCheckpointError, match=r"alone/pytorch_model.bin: .*system, which .* refusing"):
        open_weights(tmp_path / "alone")
    assert not marker.exists()


def test_single_bin_before_its_index_and_safetensors_index_before_both(tmp_path, gpt2):
    """The rest of the order: pytorch_model.bin before pytorch_model.bin.index.json (a broken index beside a
    single .bin is never read), and a safetensors index before either."""
    _, bin_dir, sharded = gpt2
    directory = shutil.copytree(bin_dir, tmp_path / "m")
    (directory / "pytorch_model.bin.index.json").write_text("{not json")
    assert [f.path.name for f in open_weights(directory).files] == ["pytorch_model.bin"]
    sharded_st = tmp_path / "sharded_st"
    build_checkpoint(sharded_st, Options(arch="gpt2", tied=True, sharded=True))
    for path in [*sharded.iterdir(), bin_dir / "pytorch_model.bin"]:
        if path.suffix == ".bin" or path.name.endswith(".bin.index.json"):
            shutil.copyfile(path, sharded_st / path.name)
    assert (sharded_st / "pytorch_model.bin").exists() and (sharded_st / "pytorch_model.bin.index.json").exists()
    assert all(f.path.suffix == ".safetensors" for f in open_weights(sharded_st).files)


def test_a_directory_without_weights_names_every_file_looked_for(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.bin").write_bytes(b"not one of the names")
    with pytest.raises(SafetensorsError) as caught:
        open_weights(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}: no weights")
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json"):
        assert name in message


# ----------------------------------------------------------------------------------------------------------------
# Sharded .bin: the index and the shards must agree


def bin_index(directory: Path) -> dict:
    return json.loads((directory / "pytorch_model.bin.index.json").read_text())


def assert_refused(directory: Path, *fragments: str) -> str:
    """open_weights(directory) is one TorchCheckpointError naming the index or a shard and each fragment, quickly,
    and every file is byte-identical afterwards."""
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    with time_limit(10), pytest.raises(TorchCheckpointError) as caught:
        open_weights(directory)
    message = str(caught.value)
    assert message.startswith(str(directory / "pytorch_model")), message
    for fragment in fragments:
        assert fragment in message
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    return message


def test_the_sharded_twin_has_several_shards(gpt2):
    _, _, sharded = gpt2
    shards = sorted(set(bin_index(sharded)["weight_map"].values()))
    assert len(shards) >= 3 and all(name.startswith("pytorch_model-000") for name in shards)


def sharing(index: dict) -> str:
    """A tensor whose shard holds others too: left out of the index, its shard is still read."""
    shards = list(index["weight_map"].values())
    return next(name for name, shard in index["weight_map"].items() if shards.count(shard) > 1)


@pytest.mark.parametrize("edit, fragments", [
    (lambda d, shards, index: (d / shards[1]).unlink(), ["pytorch_model.bin.index.json: shard", "is missing"]),
    (lambda d, shards, index: index["weight_map"].update(x="../x.bin"), ["'../x.bin' is not a plain file name"]),
    (lambda d, shards, index: index["weight_map"].update(ghost=shards[0]), ["'ghost' in", "which does not hold it"]),
    (lambda d, shards, index: index["weight_map"].pop(sharing(index)), ["is not listed in the index"]),
    (lambda d, shards, index: index.pop("weight_map"), ["no \"weight_map\" object"]),
    (lambda d, shards, index: index["weight_map"].update(x=3), ["no \"weight_map\" object"]),
], ids=["missing-shard", "path", "ghost", "unlisted", "no-map", "int-shard-name"])
def test_index_and_shards_that_disagree_are_refused(tmp_path, gpt2, edit, fragments):
    directory = shutil.copytree(gpt2[2], tmp_path / "m")
    index = bin_index(directory)
    edit(directory, sorted(set(index["weight_map"].values())), index)
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    assert_refused(directory, *fragments)


@pytest.mark.parametrize("content, fragment", [(b"{not json", "not valid JSON"), (b"[]", "index is a JSON list"),
                                               (b'{"weight_map": {}, "weight_map": {}}', "duplicate key 'weight_map'"),
                                               (b'{"weight_map": {"w": "\xff.bin"}}', "index is not valid UTF-8")])
def test_an_unreadable_index_is_refused(tmp_path, gpt2, content, fragment):
    directory = shutil.copytree(gpt2[2], tmp_path / "m")
    (directory / "pytorch_model.bin.index.json").write_bytes(content)
    assert_refused(directory, "pytorch_model.bin.index.json", fragment)


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
@pytest.mark.parametrize("where", ["single", "index", "shard"])
def test_a_weights_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path, gpt2, where, kind):
    """A FIFO would hang open(), /dev/zero never ends: either, in place of the .bin, its index or one shard, is one
    FileError naming it, within the time limit."""
    directory = shutil.copytree(gpt2[1] if where == "single" else gpt2[2], tmp_path / "m")
    name = {"single": "pytorch_model.bin", "index": "pytorch_model.bin.index.json"}.get(where) or min(
        bin_index(directory)["weight_map"].values())
    (directory / name).unlink()
    make_non_regular(directory / name, kind)
    with time_limit(10), pytest.raises(FileError, match=f"{name} is .*not a regular file"):
        open_weights(directory)


def test_a_tensor_in_two_shards_is_refused(tmp_path, gpt2):
    directory = shutil.copytree(gpt2[2], tmp_path / "m")
    shards = sorted(set(bin_index(directory)["weight_map"].values()))
    first = torch.load(directory / shards[0], weights_only=True)
    stolen = next(iter(first))
    torch.save(torch.load(directory / shards[1], weights_only=True) | {stolen: first[stolen]}, directory / shards[1])
    assert_refused(directory, f"{shards[1]}: tensor {stolen!r} is also in shard {shards[0]!r}")


def test_a_hostile_shard_is_refused_by_name_and_runs_nothing(tmp_path, gpt2):
    directory = shutil.copytree(gpt2[2], tmp_path / "m")
    shard = sorted(set(bin_index(directory)["weight_map"].values()))[1]
    marker = tmp_path / "MARKER"
    hostile_bin(directory / shard, marker)
    assert_refused(directory, shard, "system, which a tensor checkpoint never needs")
    assert not marker.exists()


@settings(max_examples=40)
@given(data=st.data())
def test_any_edit_of_the_weight_map_is_refused_or_changes_nothing(tmp_path_factory, gpt2, data):
    """Drawn edits of a good index (entries moved to another shard, dropped, added, renamed to drawn text, the
    entries reordered): the checkpoint opens exactly when the map still tells the truth about every shard it names
    (a shard it no longer names is not part of the checkpoint, as for transformers), holding the tensors it lists,
    equal to the original's; any other map is one TorchCheckpointError naming the index or a shard."""
    source = gpt2[2]
    truth = bin_index(source)["weight_map"]
    names, shards = sorted(truth), sorted(set(truth.values()))
    weight_map = dict(truth)
    for _ in range(data.draw(st.integers(0, 3), label="edits")):
        kind = data.draw(st.sampled_from(["move", "drop", "add", "rename"]), label="kind")
        name = data.draw(st.sampled_from(names), label="name")
        if kind == "move":
            weight_map[name] = data.draw(st.sampled_from(shards), label="to")
        elif kind == "drop":
            weight_map.pop(name, None)
        elif kind == "add":
            weight_map[data.draw(st.text(min_size=1, max_size=8), label="new")] = data.draw(st.sampled_from(shards))
        else:
            weight_map[name] = data.draw(st.sampled_from(["", ".", "..", "/etc/passwd", "a/b.bin", "x.bin",
                                                          "pytorch_model.bin.index.json"]), label="shard name")
    order = data.draw(st.permutations(list(weight_map)), label="order")
    directory = shutil.copytree(source, tmp_path_factory.mktemp("edit") / "m")
    index = {"metadata": {}, "weight_map": {name: weight_map[name] for name in order}}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    named = set(weight_map.values())
    if weight_map.items() <= truth.items() and {n for n, shard in truth.items() if shard in named} <= weight_map.keys():
        opened = open_weights(directory)
        assert set(opened) == set(weight_map)
        assert_same_weights(opened, open_weights(source), weight_map)
    else:
        assert_refused(directory)


# ----------------------------------------------------------------------------------------------------------------
# python -m weights_tools.convert DIR OUT


def test_convert_writes_every_tensor_in_its_own_dtype(tmp_path, twins):
    """OUT holds every tensor of DIR under its name, in its dtype (F16 stays F16, BF16 stays BF16), exactly; and
    nanollm loads OUT as it loads DIR's safetensors twin: the same weights, the same logits."""
    _, st_dir, bin_dir, _ = twins
    out = convert_checkpoint(bin_dir, tmp_path / "out")
    assert out == tmp_path / "out"
    source = open_weights(bin_dir)
    assert set(open_weights(out)) == set(source)
    assert_same_weights(open_weights(out), source, source)
    assert all(f.path.suffix == ".safetensors" for f in open_weights(out).files)
    assert_same_model(nanollm.load(out), nanollm.load(st_dir))


def test_convert_of_safetensors_is_the_file_transformers_wrote(tmp_path):
    """A safetensors directory converts to itself, byte for byte: the same layout, header and metadata as the
    safetensors library writes for save_pretrained (an untied model, so nothing was dropped)."""
    st_dir, _ = build_checkpoint(tmp_path / "st", Options(arch="llama", storage="BF16", tied=False))
    out = convert_checkpoint(st_dir, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in st_dir.iterdir())
    for path in st_dir.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name


def test_convert_shards_above_the_limit(tmp_path, gpt2):
    """Above max_shard_bytes the copy is sharded as save_pretrained shards: model-0000k-of-0000n.safetensors and
    model.safetensors.index.json, holding every tensor."""
    _, bin_dir, _ = gpt2
    out = convert_checkpoint(bin_dir, tmp_path / "out", max_shard_bytes=SHARD_BYTES)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 3 and not (out / "model.safetensors").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", "generation_config.json",
                                                            "model.safetensors.index.json", *shards])
    source = open_weights(bin_dir)
    assert_same_weights(open_weights(out), source, source)
    assert checkpoint.MAX_SHARD_BYTES == 5 * 10**9  # huggingface_hub's "5GB"


def test_convert_copies_the_model_files_byte_for_byte(tmp_path, gpt2):
    """config.json, generation_config.json and every tokenizer file nanollm reads are copied as they are; other
    files (a README, the .bin itself) are not."""
    directory = shutil.copytree(gpt2[1], tmp_path / "m")
    extra = {"tokenizer.json": b'{"odd": "\xff bytes kept"}\n', "merges.txt": b"#version: 0.2\r\nh e\r\n",
             "chat_template.jinja": "{{ m }} \u00e9".encode("latin-1"), "README.md": b"not copied"}
    for name, data in extra.items():
        (directory / name).write_bytes(data)
    out = convert_checkpoint(directory, tmp_path / "out")
    copied = {"config.json", "generation_config.json", "tokenizer.json", "merges.txt", "chat_template.jinja"}
    assert {p.name for p in out.iterdir()} == copied | {"model.safetensors"}
    for name in copied:
        assert (out / name).read_bytes() == (directory / name).read_bytes(), name


def test_convert_into_an_empty_directory(tmp_path, gpt2):
    (tmp_path / "out").mkdir()
    out = convert_checkpoint(gpt2[1], tmp_path / "out")
    assert (out / "model.safetensors").is_file()


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` (relative name -> bytes): a directory's state, to compare before and after."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["out-not-empty", "out-is-a-file", "out-is-dir", "out-inside-dir", "no-config",
                                  "dir-is-a-file", "dir-missing", "hostile-weights", "broken-index"])
def test_convert_refuses_and_leaves_nothing_behind(tmp_path, gpt2, case):
    """Each refusal is one error naming the path, and the disk is as it was: OUT untouched or absent, DIR
    byte-identical, no staging directory left beside OUT."""
    directory = shutil.copytree(gpt2[2] if case == "broken-index" else gpt2[1], tmp_path / "m")
    out = tmp_path / "out"
    if case == "out-not-empty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "out-is-a-file":
        out.write_text("mine")
    elif case == "out-is-dir":
        out = directory
    elif case == "out-inside-dir":
        out = directory / "converted"
    elif case == "no-config":
        (directory / "config.json").unlink()
    elif case == "dir-is-a-file":
        directory = directory / "pytorch_model.bin"
    elif case == "dir-missing":
        directory = tmp_path / "nothing"
    elif case == "hostile-weights":
        hostile_bin(directory / "pytorch_model.bin", tmp_path / "MARKER")
    else:
        (directory / "pytorch_model.bin.index.json").write_text('{"weight_map": {"w": "../../x.bin"}}')
    before, listing = tree(tmp_path), sorted(p.name for p in tmp_path.iterdir())
    with time_limit(20), pytest.raises((FileError, TorchCheckpointError)) as caught:
        convert_checkpoint(directory, out)
    assert str(out if case in ("out-not-empty", "out-is-a-file") else directory) in str(caught.value)
    assert tree(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == listing  # no staging left
    assert not (tmp_path / "MARKER").exists()


def test_a_failure_while_writing_leaves_no_output(tmp_path, gpt2, monkeypatch):
    """A failure after the first file is written (here: the disk fills while copying config.json) removes the
    staging directory: OUT never appears."""
    def full_disk(path, data, **_):
        raise OSError(28, f"No space left on device: {path}")
    monkeypatch.setattr(checkpoint, "write_bytes", full_disk)
    with pytest.raises(OSError, match="No space left"):
        convert_checkpoint(gpt2[1], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_writes_and_reports(tmp_path, gpt2, capsys):
    assert main([str(gpt2[1]), str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out == f"wrote {tmp_path / 'out'}\n"
    assert main([str(gpt2[1]), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("weights_tools.convert: refusing to write") and err.count("\n") == 1
    with pytest.raises(SystemExit) as caught:
        main([str(gpt2[1])])
    assert caught.value.code == 2 and "OUT" in capsys.readouterr().err


def test_bf16_weights_that_would_not_fit_once_widened_are_refused_first(tmp_path, monkeypatch, capsys):
    """NumPy has no bf16, so BF16 tensors are widened to float32 while written: 4 bytes per element that must fit
    in memory, checked before anything is written (one line from the CLI, exit 1, no OUT)."""
    st_dir, _ = build_checkpoint(tmp_path / "st", Options(arch="gpt2", storage="BF16"))
    write_bin_twin(st_dir, tmp_path / "bin", "BF16", sharded=False)
    bf16 = sum(t.numel() for t in torch.load(tmp_path / "bin" / "pytorch_model.bin", weights_only=True).values())
    monkeypatch.setattr(nanollm.memory, "available_bytes", lambda: 4 * bf16 - 1)
    assert main([str(tmp_path / "bin"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"weights_tools.convert: {tmp_path / 'bin'}: its BF16 tensors") and err.count("\n") == 1
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["bin", "st"]
    monkeypatch.setattr(nanollm.memory, "available_bytes", lambda: 4 * bf16)
    assert main([str(tmp_path / "bin"), str(tmp_path / "out")]) == 0


def test_python_m_weights_tools_convert(tmp_path, gpt2):
    run = subprocess.run([sys.executable, "-m", "weights_tools.convert", str(gpt2[1]), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT, check=False)
    assert run.returncode == 0, run.stderr
    source = open_weights(gpt2[1])
    assert_same_weights(open_weights(tmp_path / "out"), source, source)


@pytest.mark.parametrize("module", ["safetensors", "torch_checkpoint", "checkpoint", "hub"])
def test_each_reader_can_be_imported_first(module):
    """Importing one of these first imports nanollm halfway through it, whose loader imports the others: none may
    take a half-imported sibling's names at import time (weights_tools/__init__.py)."""
    run = subprocess.run([sys.executable, "-c", f"import weights_tools.{module}"], capture_output=True, text=True,
                         timeout=60, cwd=PROJECT_ROOT, check=False)
    assert run.returncode == 0, run.stderr


def test_inspect_reads_a_bin_directory(tmp_path, gpt2, capsys):
    """The same parameter count as the safetensors twin (the tied copy not counted again), and the weights file
    named in the report."""
    st_dir, bin_dir, sharded = gpt2
    expected = inspect_path(st_dir).parameters
    for directory in (bin_dir, sharded):
        report = inspect_path(directory)
        assert report.parameters == expected and "lm_head.weight" in report.not_counted
    assert inspect_main([str(bin_dir)]) == 0
    out = capsys.readouterr().out
    assert "Hugging Face directory, weights in pytorch_model.bin" in out and "lm_head.weight" in out
    assert inspect_main([str(sharded)]) == 0
    assert "weights in pytorch_model-00001-of-" in capsys.readouterr().out
    hostile = shutil.copytree(bin_dir, tmp_path / "hostile")
    hostile_bin(hostile / "pytorch_model.bin", tmp_path / "MARKER")
    assert inspect_main([str(hostile)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {hostile / 'pytorch_model.bin'}: data.pkl names the global") and err.count("\n") == 1
    assert not (tmp_path / "MARKER").exists()
