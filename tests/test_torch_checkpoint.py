"""weights_tools.torch_checkpoint: torch.save files read without torch, equal to torch's own values and described
(dtype name, shape, bytes) as the safetensors library describes the same tensor; hostile files (code-running pickles,
broken zips, storages too short, zip bombs) each give one TorchCheckpointError naming the file, and run nothing."""
from __future__ import annotations

import builtins
import collections
import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.files import FileError
from tests.conftest import make_non_regular, time_limit
from weights_tools.safetensors import open_checkpoint
from weights_tools.torch_checkpoint import TorchCheckpointError, open_torch_checkpoint


def reference(tensor: torch.Tensor) -> np.ndarray:
    """torch's own values as NumPy; bf16 widened to float32, as the reader does."""
    return tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()


def reference_info(name: str, tensor: torch.Tensor) -> tuple:
    """(name, dtype, shape, nbytes) as the safetensors library writes the tensor into a header."""
    data = safetensors.torch.save({name: tensor.contiguous().clone()})
    entry = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])[name]
    begin, end = entry["data_offsets"]
    return name, entry["dtype"], tuple(entry["shape"]), end - begin


def assert_loads_equal(path, state_dict: dict[str, torch.Tensor]):
    """The checkpoint at `path` holds exactly `state_dict`: values, NumPy dtypes and shapes as torch's own, info()
    as the safetensors library's header. -> the TorchCheckpoint."""
    loaded = open_torch_checkpoint(path)
    assert sorted(loaded) == sorted(state_dict)
    for name, tensor in state_dict.items():
        expected = reference(tensor)
        assert loaded[name].dtype == expected.dtype, name
        assert loaded[name].shape == expected.shape, name
        np.testing.assert_array_equal(loaded[name], expected, err_msg=name)  # exact; NaN equals NaN
        assert tuple(loaded.info(name)) == reference_info(name, tensor)
    return loaded


# ----------------------------------------------------------------------------------------------------------------
# Files torch writes


def test_state_dict_of_every_kind_loads_exactly(tmp_path):
    base = torch.randn(4, 6)
    state = {
        "f32": base, "tied": base,  # one storage, stored once
        "transposed": base.t(), "slice": base[1:3, 2:],  # non-contiguous views, an offset into the storage
        "f16": torch.randn(3, 2).half(), "bf16": torch.randn(5, 3).bfloat16(), "f64": torch.randn(2).double(),
        "i64": torch.arange(5), "i32": torch.arange(3, dtype=torch.int32), "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3),
        "bf16_special": torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 1e-40]).bfloat16(),
    }
    path = tmp_path / "pytorch_model.bin"
    torch.save(state, path)
    with zipfile.ZipFile(path) as z:  # the premise: tied tensors share one storage member
        assert sum("/data/" in name for name in z.namelist()) == len(state) - 2 - 1  # tied, 2 views share base
    loaded = assert_loads_equal(path, state)
    assert not loaded["f32"].flags.writeable and not loaded["f32"].flags.owndata  # a view of the mapped file
    assert np.shares_memory(loaded["f32"], loaded["tied"])


def test_parameters_and_nested_modules_load(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4)).to(torch.float16)
    torch.save(model.state_dict(), tmp_path / "m.bin")
    assert_loads_equal(tmp_path / "m.bin", model.state_dict())
    params = dict(model.named_parameters())  # nn.Parameter pickles through torch._utils._rebuild_parameter
    torch.save(params, tmp_path / "p.bin")
    assert_loads_equal(tmp_path / "p.bin", {k: v.detach() for k, v in params.items()})


@settings(max_examples=40)
@given(dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.int64]),
       layout=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 5)), max_size=3),
       offset=st.integers(0, 5), spare=st.integers(0, 3))
def test_strided_views_load_as_torch_sees_them(tmp_path_factory, dtype, layout, offset, spare):
    size, stride = [n for n, _ in layout], [s for _, s in layout]
    needed = offset + sum((n - 1) * s for n, s in layout) + 1 if 0 not in size else offset
    storage = (torch.randn(needed + spare) * 100).to(dtype)
    view = torch.as_strided(storage, size, stride, offset)
    path = tmp_path_factory.mktemp("strided") / "v.bin"
    torch.save({"view": view, "whole": storage}, path)
    assert_loads_equal(path, {"view": view, "whole": storage})


def test_transformers_gpt2_state_dict_loads_equal_to_its_safetensors(tmp_path):
    """transformers 5 ignores save_pretrained(safe_serialization=False) and writes safetensors only, so the .bin is
    written as transformers 4 wrote it: torch.save of the state dict (tied lm_head.weight shares wte's storage)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=8, n_layer=2, n_head=2))
    model.save_pretrained(tmp_path)
    state = model.state_dict()
    torch.save(state, tmp_path / "pytorch_model.bin")
    loaded = assert_loads_equal(tmp_path / "pytorch_model.bin", state)
    assert np.shares_memory(loaded["lm_head.weight"], loaded["transformer.wte.weight"])  # tied: stored once
    safetensors = open_checkpoint(tmp_path / "model.safetensors")
    assert set(safetensors) <= set(loaded) and "transformer.h.1.mlp.c_proj.weight" in safetensors
    for name in safetensors:
        np.testing.assert_array_equal(loaded[name], safetensors[name], err_msg=name)


# ----------------------------------------------------------------------------------------------------------------
# Hostile files: helpers that rebuild a valid archive with one member changed


def good_archive(tmp_path) -> bytes:
    path = tmp_path / "good.bin"
    torch.save({"w": torch.arange(12, dtype=torch.float32).reshape(3, 4)}, path)
    return path.read_bytes()


def members(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return {name: z.read(name) for name in z.namelist()}


def rezip(parts: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as z:
        for name, data in parts.items():
            z.writestr(name, data)
    return out.getvalue()


def replaced(archive: bytes, suffix: str, data: bytes | None) -> bytes:
    """The archive with the member ending in `suffix` replaced by `data` (None: removed)."""
    parts = members(archive)
    name = next(n for n in parts if n.endswith(suffix))
    if data is None:
        del parts[name]
    else:
        parts[name] = data
    return rezip(parts)


def assert_refused(tmp_path, content: bytes, *fragments: str) -> str:
    """Loading `content` gives one TorchCheckpointError naming the file and each fragment, quickly, and leaves the
    file byte-identical."""
    path = tmp_path / "hostile.bin"
    path.write_bytes(content)
    with time_limit(10), pytest.raises(TorchCheckpointError) as caught:
        open_torch_checkpoint(path)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert path.read_bytes() == content
    return message


class Payload:
    """Pickles as a call of `function(*args)`: what a hostile checkpoint hides in data.pkl."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("function", [os.system, builtins.eval, builtins.exec])
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_code_running_pickles_are_refused_and_run_nothing(tmp_path, function, protocol):
    marker = tmp_path / "MARKER"
    command = f"touch {marker}" if function is os.system else f"open({str(marker)!r}, 'w')"
    evil = pickle.dumps({"w": Payload(function, command)}, protocol=protocol)
    # protocols < 3 spell builtins "__builtin__" and os "posix": the message names the global as the pickle does
    message = assert_refused(tmp_path, replaced(good_archive(tmp_path), "/data.pkl", evil),
                             f".{function.__name__}, which", "refusing")
    assert not marker.exists(), message


def test_a_global_hidden_after_a_valid_tensor_is_still_refused(tmp_path):
    marker = tmp_path / "MARKER"
    archive = good_archive(tmp_path)
    valid = members(archive)[next(n for n in members(archive) if n.endswith("/data.pkl"))]
    evil = pickle.dumps(Payload(os.system, f"touch {marker}"), protocol=2)
    # (state dict, payload): the valid pickle without its STOP, the payload without its PROTO header, then a tuple
    glued = valid[:-1] + evil[2:-1] + pickle.TUPLE2 + pickle.STOP
    assert_refused(tmp_path, replaced(archive, "/data.pkl", glued), "system")
    assert not marker.exists()


@pytest.mark.parametrize("module, name", [("torch._utils", "_rebuild_tensor"), ("torch", "load"),
                                          ("numpy", "frombuffer"), ("collections", "defaultdict"),
                                          ("torch.storage", "_load_from_bytes")])
def test_every_other_global_is_refused_by_name(tmp_path, module, name):
    evil = pickle.PROTO + b"\x02" + pickle.GLOBAL + f"{module}\n{name}\n".encode() + pickle.EMPTY_TUPLE \
        + pickle.REDUCE + pickle.STOP
    assert_refused(tmp_path, replaced(good_archive(tmp_path), "/data.pkl", evil), f"{module}.{name}")


class _Storage:
    """Stands for a storage while a test pickles a tensor by hand (see hand_pickle)."""


def hand_pickle(offset: int, size: tuple, stride: tuple, numel: int) -> bytes:
    """data.pkl for {"w": _rebuild_tensor_v2(storage '0' of `numel` floats, offset, size, stride)}, written by
    hand so that the view can claim what torch.save would never write."""
    storage = _Storage()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is storage else None

    out = io.BytesIO()
    rebuild = Payload(torch._utils._rebuild_tensor_v2, storage, offset, size, stride, False, collections.OrderedDict())
    Pickler(out, protocol=2).dump({"w": rebuild})
    return out.getvalue()


def test_hand_pickled_tensor_matches_the_premise(tmp_path):
    archive = replaced(good_archive(tmp_path), "/data.pkl", hand_pickle(1, (2, 2), (1, 3), 12))
    (tmp_path / "ok.bin").write_bytes(archive)
    expected = np.arange(12, dtype=np.float32)[np.array([[1, 4], [2, 5]])]
    np.testing.assert_array_equal(open_torch_checkpoint(tmp_path / "ok.bin")["w"], expected)
    np.testing.assert_array_equal(torch.load(tmp_path / "ok.bin", weights_only=True)["w"].numpy(), expected)


@pytest.mark.parametrize("offset, size, stride", [(12, (1,), (1,)), (0, (13,), (1,)), (5, (2, 4), (4, 1)),
                                                  (0, (3, 4), (5, 1))])
def test_a_view_past_the_end_of_its_storage_is_refused(tmp_path, offset, size, stride):
    archive = replaced(good_archive(tmp_path), "/data.pkl", hand_pickle(offset, size, stride, 12))
    assert_refused(tmp_path, archive, "storage '0'", "has 12")


@pytest.mark.parametrize("offset, size, stride", [(-1, (2,), (1,)), (0, (2,), (1, 1)), (0, (-2,), (1,)),
                                                  (0, [2], [1]), (True, (2,), (1,)), (0, (2,), (-1,))])
def test_malformed_views_are_refused(tmp_path, offset, size, stride):
    archive = replaced(good_archive(tmp_path), "/data.pkl", hand_pickle(offset, size, stride, 12))
    assert_refused(tmp_path, archive, "not non-negative integers")


def test_storage_shorter_than_its_declared_elements_is_refused(tmp_path):
    archive = replaced(good_archive(tmp_path), "/data/0", bytes(40))
    assert_refused(tmp_path, archive, "storage '0'", "holds 40 bytes", "need 48")


def test_missing_storage_is_refused(tmp_path):
    assert_refused(tmp_path, replaced(good_archive(tmp_path), "/data/0", None), "no member", "data/0")


def test_missing_data_pkl_is_refused(tmp_path):
    assert_refused(tmp_path, replaced(good_archive(tmp_path), "/data.pkl", None), "data.pkl")


@pytest.mark.parametrize("cut", [0.3, 0.9, 0.99])
def test_truncated_archive_is_refused(tmp_path, cut):
    archive = good_archive(tmp_path)
    assert_refused(tmp_path, archive[:int(len(archive) * cut)], "zip")


def test_truncated_pickle_is_refused(tmp_path):
    archive = good_archive(tmp_path)
    pkl = members(archive)[next(n for n in members(archive) if n.endswith("/data.pkl"))]
    assert_refused(tmp_path, replaced(archive, "/data.pkl", pkl[:len(pkl) // 2]), "not a valid checkpoint pickle")


def test_declared_size_past_the_end_of_the_file_is_refused(tmp_path):
    """A zip bomb's shape: a member whose central directory entry declares 2 GiB in a tiny file."""
    archive = bytearray(good_archive(tmp_path))
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        name = next(n for n in z.namelist() if n.endswith("/data/0")).encode()
    entry = archive.rindex(b"PK\x01\x02", 0, archive.rindex(name))  # the member's central directory entry
    assert archive[entry + 46:entry + 46 + len(name)] == name
    archive[entry + 20:entry + 28] = (2**31 - 1).to_bytes(4, "little") * 2  # compressed, uncompressed size
    assert_refused(tmp_path, bytes(archive), "data/0", "past the end")


def test_compressed_member_is_refused(tmp_path):
    parts = members(good_archive(tmp_path))
    name = next(n for n in parts if n.endswith("/data/0"))
    parts[name] = bytes(10_000_000)  # deflates 1000x: never inflated
    assert_refused(tmp_path, rezip(parts, zipfile.ZIP_DEFLATED), "compressed")


def test_big_endian_archive_is_refused(tmp_path):
    assert_refused(tmp_path, replaced(good_archive(tmp_path), "/byteorder", b"big"), "byteorder", "little-endian")


@pytest.mark.parametrize("content", [b"", b"hello", b"PK", b"\x89HDF\r\n", bytes(100)])
def test_non_zip_files_are_refused(tmp_path, content):
    assert_refused(tmp_path, content, "not a torch.save zip archive")


def test_old_format_torch_save_is_refused_with_the_way_out(tmp_path):
    path = tmp_path / "old.bin"
    torch.save({"w": torch.zeros(2)}, path, _use_new_zipfile_serialization=False)
    assert_refused(tmp_path, path.read_bytes(), "old-format torch.save file", "torch >= 1.6")


@pytest.mark.parametrize("obj, fragment", [([torch.zeros(2)], "holds a list"), ({"model": {"w": torch.zeros(2)}},
                                           "'model' is a dict"), ({3: torch.zeros(2)}, "entry 3")])
def test_anything_but_a_flat_state_dict_is_refused(tmp_path, obj, fragment):
    path = tmp_path / "src.bin"
    torch.save(obj, path)
    assert_refused(tmp_path, path.read_bytes(), fragment)


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "directory"])
def test_non_regular_files_are_refused_without_hanging(tmp_path, kind):
    path = tmp_path / "pytorch_model.bin"
    make_non_regular(path, kind)
    with time_limit(10), pytest.raises(FileError, match="not a regular file"):
        open_torch_checkpoint(path)
