"""`python -m weights_tools.inspect PATH`: what a checkpoint holds, and what running it will cost.

PATH is a model directory (config.json + its weights: safetensors or pytorch_model.bin, single or sharded, found
by weights_tools.checkpoint), a single .safetensors file (a config.json beside it is used when present), or a
llama2.c .bin. Printed: every tensor (name, dtype, shape, bytes), the parameter count, the ModelConfig nanollm
derives, the memory the weights need as float32 (nanollm computes in float32 whatever the file stores) and the
key/value cache for one sequence at the model's full context.

What this module adds is the counting rule, the same as transformers' `num_parameters()`:
  - a parameter shared by two modules counts once: with tied embeddings the output projection *is* the token
    embedding, so a saved `lm_head.weight` copy is not counted again;
  - buffers are not parameters: GPT-2's causal-mask tensors (`attn.bias`, `attn.masked_bias`), a saved RoPE
    `rotary_emb.inv_freq`, and llama2.c's precomputed RoPE tables (`freq_cis_real`, `freq_cis_imag`).
`config_parameters(cfg)` derives the same number from the config alone, layer by layer, as a check on the file.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from nanollm.config import ModelConfig
from nanollm.kv_cache import kv_cache_bytes

from .checkpoint import open_weights
from .convert import CheckpointError, config_from_hf, read_json
from .llama2c import Llama2cError, hf_config, out_of_memory_message, read_llama2c
from .safetensors import SafetensorsError, TensorInfo, open_checkpoint
from .torch_checkpoint import TorchCheckpointError

BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq", "freq_cis_real", "freq_cis_imag")
TIED_COPIES = ("lm_head.weight", "wcls")  # the output projection's names in Hugging Face and llama2.c files
FLOAT32_BYTES = np.dtype(np.float32).itemsize


@dataclass
class Report:
    path: Path
    kind: str  # "Hugging Face directory", "safetensors file", "llama2.c legacy file", ...
    tensors: list[TensorInfo]
    config: ModelConfig | None  # None: a lone .safetensors file with no config.json beside it
    parameters: int
    not_counted: list[str]  # tensors held in the file that are not parameters (buffers, tied copies)

    @property
    def float32_bytes(self) -> int:
        return self.parameters * FLOAT32_BYTES

    @property
    def kv_bytes(self) -> int | None:
        return None if self.config is None else kv_cache_bytes(self.config, 1, self.config.max_seq_len)


def count_parameters(tensors: list[TensorInfo], cfg: ModelConfig | None) -> tuple[int, list[str]]:
    """-> (parameter count, names not counted), by the rule in the module docstring."""
    tied = cfg is not None and cfg.tie_embeddings
    skipped = [t.name for t in tensors if t.name.endswith(BUFFER_SUFFIXES) or (tied and t.name in TIED_COPIES)]
    count = sum(int(np.prod(t.shape)) for t in tensors if t.name not in skipped)
    return count, skipped


def config_parameters(cfg: ModelConfig) -> int:
    """The parameter count a config implies: what the tensors of a complete checkpoint must add up to.

    Per layer: the norms around the two branches (LayerNorm has a weight and a bias, RMSNorm a weight; one before
    each branch, or after it for OLMo-2, or both for Gemma 2/3), the q/k norms where the family has them, the q|k|v
    and output projections, and the MLP (GPT-2: up and down; gated: gate, up and down), with biases where the config
    has them. Outside the layers: the token embedding, GPT-2's position embedding, the final norm, and an output
    projection unless tied.
    """
    C, H, V = cfg.n_embd, cfg.n_hidden, cfg.vocab_size
    q_dim, kv_dim = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    norm = 2 * C if cfg.norm == "layer" else C
    norms_per_layer = {"pre": 2, "post": 2, "sandwich": 4}[cfg.norm_placement]
    qk_norms = {None: 0, "head": 2 * cfg.head_dim, "full": q_dim + kv_dim}[cfg.qk_norm]
    attention = C * cfg.qkv_dim + q_dim * C + (cfg.qkv_dim if cfg.qkv_bias else 0) + (C if cfg.out_bias else 0)
    if cfg.mlp == "gelu":
        mlp = 2 * C * H + (H + C if cfg.mlp_bias else 0)
    else:
        mlp = 3 * C * H + (2 * H + C if cfg.mlp_bias else 0)
    per_layer = norms_per_layer * norm + qk_norms + attention + mlp
    positions = cfg.max_seq_len * C if cfg.positions == "learned" else 0
    head = 0 if cfg.tie_embeddings else C * V
    return V * C + positions + cfg.n_layer * per_layer + norm + head


def inspect_path(path: str | os.PathLike) -> Report:
    """Read the headers of PATH (no tensor data is loaded) and count."""
    path = Path(path)
    if path.is_dir():
        checkpoint = open_weights(path)
        files = [f.path.name for f in checkpoint.files]
        kind = f"Hugging Face directory, weights in {files[0]}" + (f" and {len(files) - 1} more" if files[1:] else "")
        tensors = [checkpoint.info(name) for name in checkpoint]
        config_json = path / "config.json"
        cfg = config_from_hf(read_json(config_json), where=str(config_json))
    elif path.suffix == ".safetensors":
        kind = "safetensors file"
        checkpoint = open_checkpoint(path)
        tensors = [checkpoint.info(name) for name in checkpoint]
        config_json = path.parent / "config.json"
        cfg = config_from_hf(read_json(config_json), where=str(config_json)) if config_json.is_file() else None
    else:
        model = read_llama2c(path)
        kind = f"llama2.c {'legacy' if model.header.version == 0 else 'version 1'} file"
        tensors = [TensorInfo(name, "F32", tuple(a.shape), a.nbytes) for name, a in model.tensors.items()]
        cfg = config_from_hf(hf_config(model.header), where=str(path))
    parameters, not_counted = count_parameters(tensors, cfg)
    return Report(path, kind, tensors, cfg, parameters, not_counted)


def mib(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB ({n:,} bytes)"


def format_report(r: Report) -> str:
    width = max([len("name")] + [len(t.name) for t in r.tensors])
    lines = [f"{r.path}: {r.kind}", "", f"{'name':<{width}}  dtype  {'shape':<20}  {'bytes':>14}"]
    for t in r.tensors:
        lines.append(f"{t.name:<{width}}  {t.dtype:<5}  {tuple(t.shape)!s:<20}  {t.nbytes:>14,}")
    total = sum(t.nbytes for t in r.tensors)
    lines += ["", f"tensors: {len(r.tensors)}, {total:,} bytes of tensor data"]  # a .bin's tied copy: stored once
    lines.append(f"parameters: {r.parameters:,}")
    if r.not_counted:
        lines.append(f"  not counted (buffers or a tied copy of the embedding): {', '.join(r.not_counted)}")
    if r.config is None:
        lines.append("config: none (no config.json beside the file), so no memory estimate")
        return "\n".join(lines)
    implied = config_parameters(r.config)
    if implied != r.parameters:
        lines.append(f"  note: the config implies {implied:,} parameters; the file holds a different set")
    lines.append("config (nanollm.config.ModelConfig):")
    lines += [f"  {f.name} = {getattr(r.config, f.name)!r}" for f in fields(r.config)]
    c = r.config
    lines.append(f"weights as float32: {mib(r.float32_bytes)} = {r.parameters:,} parameters x {FLOAT32_BYTES} bytes")
    lines.append(f"KV cache at full context ({c.max_seq_len} positions, batch 1): {mib(r.kv_bytes)} = "
                 f"2 (k, v) x {c.n_layer} layers x {c.n_kv_head} KV heads x {c.max_seq_len} x {c.head_dim} (hs) x "
                 f"{FLOAT32_BYTES} bytes")
    lines.append(f"total: {mib(r.float32_bytes + r.kv_bytes)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m weights_tools.inspect", description=__doc__.split("\n")[0])
    p.add_argument("path", help="a model directory (safetensors or pytorch_model.bin weights), a .safetensors "
                                "file, or a llama2.c .bin")
    args = p.parse_args(argv)
    try:
        report = inspect_path(args.path)
    except (CheckpointError, SafetensorsError, TorchCheckpointError, Llama2cError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:
        print(out_of_memory_message(e, args.path), file=sys.stderr)
        return 1
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
