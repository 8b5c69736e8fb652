"""A model directory's weights, whichever files hold them, and `python -m weights_tools.convert DIR OUT`.

What this module adds:
  - `open_weights(directory)`: the tensors of a Hugging Face model directory stored as safetensors or as PyTorch's
    pytorch_model.bin, single or sharded, behind one interface, safetensors.Checkpoint's: names, `info(name)` (the
    dtype as safetensors names it, "F32", "F16", "BF16", ..., and the shape) and `ckpt[name]`, an array exactly as
    the safetensors reader gives it (a view of the mapped file; BF16 widened to float32).
  - `convert_checkpoint(directory, out)`: a safetensors copy of such a directory; `main` is its command line,
    `python -m weights_tools.convert DIR OUT`.

Which file, in the order transformers tries them (modeling_utils.py, `_get_resolved_checkpoint_files`, transformers
5.24; the first one present wins):

    model.safetensors, model.safetensors.index.json, pytorch_model.bin, pytorch_model.bin.index.json

So safetensors is preferred when both formats are there, as transformers prefers it; a pickle beside it is then
never opened. Failing all four, a lone *.safetensors file of another name is read (nanollm always accepted one,
see safetensors.open_checkpoint).

A sharded checkpoint is an index, {"metadata": {...}, "weight_map": {tensor name: shard file name}}, written by
save_pretrained in the same format for both kinds of shard, so safetensors.open_sharded checks an index of .bin
shards as it checks its own, with the .bin reader: plain shard names beside the index, no shard missing, no tensor
in two shards, every tensor of a shard listed in the index and every tensor of the index in the shard it names.

Tied weights: a .bin stores a tied output projection (GPT-2's lm_head.weight, the same tensor as
transformer.wte.weight) once, as one storage with two names, where the safetensors file save_pretrained writes drops
the copy. Both names are read here; weights_tools/convert.py ignores lm_head.weight when config.json ties the
embeddings, so a .bin and its safetensors twin load alike.

The converter writes every tensor under its own name and in its own dtype (F16 stays F16, BF16 stays BF16), sharded
above MAX_SHARD_BYTES as Hugging Face does, plus config.json, generation_config.json and the tokenizer files (the
files weights_tools/hub.py fetches) copied byte for byte. A tied copy gets bytes of its own: a safetensors file
cannot give two names one tensor. OUT appears whole or not at all: everything is written into a new directory
beside it, which is then renamed to OUT; an OUT that exists and is not an empty directory is refused, never
overwritten, and so is an OUT inside DIR. A llama2.c .bin converts with `python -m weights_tools.llama2c import
X.bin OUT`, which writes the same kind of directory: llama2c.py reads through convert.py, which reads its weights
through this module, so this module cannot call it (an import cycle).
"""
from __future__ import annotations

import argparse
import math
import os
import secrets
import shutil
import sys
from pathlib import Path

from nanollm.files import FileError, read_bytes, write_bytes
from nanollm.memory import check_fits

# the modules, not their names: see weights_tools/__init__.py
from . import hub, safetensors, torch_checkpoint

MAX_SHARD_BYTES = 5_000_000_000  # huggingface_hub's MAX_SHARD_SIZE, "5GB" (serialization/_base.py)
FLOAT32_BYTES = 4


def open_weights(directory: str | os.PathLike) -> safetensors.Checkpoint:
    """The tensors of a model directory, from the first weights file present in transformers' order (see the
    module docstring). A path that exists but is not a regular file (a FIFO named model.safetensors) is reported
    by its reader, not skipped for another file."""
    directory = Path(directory)
    readers = {  # built here, not at import: a sibling module may be half-imported then (weights_tools/__init__.py)
        safetensors.SINGLE_FILE_NAME: safetensors.open_checkpoint,
        safetensors.INDEX_FILE_NAME: safetensors.open_checkpoint,
        torch_checkpoint.SINGLE_FILE_NAME: _open_bin,
        torch_checkpoint.INDEX_FILE_NAME: _open_bin_index,
    }
    for name, read in readers.items():
        if (directory / name).exists():
            return read(directory / name)
    lone = sorted(directory.glob("*.safetensors"))
    if len(lone) == 1:
        return safetensors.open_checkpoint(lone[0])
    # SafetensorsError: what nanollm raised here before it read .bin files, so callers that catch it keep working
    raise safetensors.SafetensorsError(
        f"{directory}: no weights: none of {', '.join(readers)} is in this directory"
        + (f" ({len(lone)} .safetensors files and no index to tie them)" if lone else ""))


def _open_bin(path: Path) -> safetensors.Checkpoint:
    return safetensors.Checkpoint([torch_checkpoint.open_torch_checkpoint(path)])


def _open_bin_index(path: Path) -> safetensors.Checkpoint:
    return safetensors.open_sharded(path, torch_checkpoint.open_torch_checkpoint, torch_checkpoint.TorchCheckpointError)


# ----------------------------------------------------------------------------------------------------------------
# The converter


def convert_checkpoint(directory: str | os.PathLike, out: str | os.PathLike, *,
                       max_shard_bytes: int = MAX_SHARD_BYTES) -> Path:
    """Write a safetensors copy of the model `directory` to the new directory `out` (see the module docstring).
    -> out. Every input is read, and every tensor checked by its reader, before anything is written."""
    directory, out = Path(directory), Path(out)
    if not directory.is_dir():
        raise FileError(f"{directory} is not a model directory (a llama2.c .bin converts with "
                        f"`python -m weights_tools.llama2c import {directory} {out}`)")
    _refuse_output(directory, out)
    if not (directory / hub.CONFIG_FILE).exists():
        raise FileError(f"{directory}: no {hub.CONFIG_FILE} (a model directory needs config.json)")
    copies = {name: read_bytes(directory / name) for name in (hub.CONFIG_FILE, *hub.OPTIONAL_FILES,
                                                             *hub.TOKENIZER_FILES) if (directory / name).exists()}
    weights = open_weights(directory)
    # NumPy has no bf16: BF16 tensors come widened to float32 and are rounded back, exactly, as they are written
    bf16 = [name for name in weights if weights.info(name).dtype == "BF16"]
    check_fits(FLOAT32_BYTES * sum(math.prod(weights.info(name).shape) for name in bf16),
               f"{directory}: its BF16 tensors, widened to float32 while they are written")
    tensors = {name: weights[name] for name in weights}
    target = out.resolve()  # "." has no name to put a staging directory beside
    staging = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")  # beside OUT: one disk, so one rename
    target.parent.mkdir(parents=True, exist_ok=True)
    staging.mkdir()
    try:
        safetensors.save_sharded(staging, tensors, max_shard_bytes=max_shard_bytes,
                                 metadata={"format": "pt", **weights.metadata}, dtypes=dict.fromkeys(bf16, "BF16"))
        for name, data in copies.items():
            write_bytes(staging / name, data)
        os.replace(staging, target)  # rename(2): atomic, and it replaces an empty directory but never a full one
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _refuse_output(directory: Path, out: Path) -> None:
    """OUT must be new (or an empty directory) and outside DIR: the copy never replaces a file, least of all one
    it is made from."""
    source, target = directory.resolve(), out.resolve()
    if target == source or source in target.parents:
        raise FileError(f"refusing to write {out}: it is inside the model directory {directory}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileError(f"refusing to write {out}: it exists and is not an empty directory (nothing is "
                        f"overwritten; choose a new one)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m weights_tools.convert",
                                description="Write a safetensors copy of a model directory (safetensors or "
                                            "pytorch_model.bin weights, single or sharded).")
    p.add_argument("directory", metavar="DIR", help="a model directory: config.json and its weights")
    p.add_argument("out", metavar="OUT", help="a new directory for the copy (or an empty one)")
    args = p.parse_args(argv)
    try:
        out = convert_checkpoint(args.directory, args.out)
    except (safetensors.SafetensorsError, torch_checkpoint.TorchCheckpointError, OSError, MemoryError) as e:
        print(f"weights_tools.convert: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0
