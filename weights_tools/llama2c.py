"""llama2.c checkpoints (`.bin`) <-> Hugging Face Llama directories, and straight into a nanollm Model.

What this module adds: `read_llama2c` parses both float32 formats of Karpathy's llama2.c (the legacy one that
`run.c` reads, and the "version 1" export) into named tensors; `write_llama2c` writes version 1; `llama2c_to_hf` /
`hf_to_llama2c` translate between llama2.c's tensors and a Hugging Face `LlamaForCausalLM` state dict;
`convert_to_hf_dir` writes a directory (config.json + model.safetensors) that both `nanollm.load` and transformers
read; `load_llama2c_checkpoint` reads a `.bin` into nanollm's config and weights without writing anything. Sources: llama2.c's `run.c`
(`read_checkpoint`, `memory_map_weights`, `forward`) and `export.py` (`legacy_export`, `version1_export`).

The two file layouts (all numbers little-endian; L = n_layers, hs = dim / n_heads, kv = n_kv_heads * hs):

    legacy (version 0)                          version 1
    7 x int32: dim, hidden_dim, n_layers,       uint32 magic 0x616B3432 ("ak42" read as a big-endian word, so the
      n_heads, n_kv_heads, vocab_size,            first four bytes of the file are b"24ka"), int32 version = 1,
      seq_len. vocab_size < 0 means the          the same 7 x int32 (vocab_size always positive), one byte
      classifier is NOT shared with the          shared_classifier (1 = tied), zeros up to byte 256.
      token embedding (a sign used as a flag)
    float32 tensors, in this order:             float32 tensors, in this order:
      token_embedding_table (V, dim)              rms_att_weight (L, dim), rms_ffn_weight (L, dim),
      rms_att_weight (L, dim)                     rms_final_weight (dim,), token_embedding_table (V, dim),
      wq (L, dim, dim)   wk, wv (L, kv, dim)      wq, wk, wv, wo, w1, w2, w3 (shapes as on the left),
      wo (L, dim, dim)   rms_ffn_weight (L, dim)  [wcls (V, dim) when not shared]
      w1, w3 (L, hidden_dim, dim)
      w2 (L, dim, hidden_dim)
      rms_final_weight (dim,)
      freq_cis_real, freq_cis_imag (seq_len, hs/2): RoPE's cos/sin table, recomputable, so not read
      [wcls (V, dim) when not shared]

Every matrix is stored as PyTorch's nn.Linear holds it, (out, in), exactly as Hugging Face stores Llama: the names
change (w1 -> gate_proj, w3 -> up_proj, w2 -> down_proj, ...) but no matrix is transposed here. The one transpose
into nanollm's (in, out) layout stays where it always is, in weights_tools/convert.py.

The subtle part, RoPE. Both models rotate pairs of query/key coordinates by the angle pos * theta^(-2j/hs), but
they pair different coordinates of a head:
  llama2.c (and Meta's original code) rotates interleaved pairs (2j, 2j+1), viewing a head as hs/2 complex numbers;
  Hugging Face's `rotate_half` rotates (j, j + hs/2): first half real parts, second half imaginary parts.
Attention only uses q . k, and a dot product does not care how coordinates are ordered as long as q and k are
ordered alike. So reordering the output rows of wq and wk, inside each head, from (re0, im0, re1, im1, ...) to
(re0, re1, ..., im0, im1, ...) makes Hugging Face's rotation compute exactly llama2.c's attention. This is the
`permute` of transformers' convert_llama_weights_to_hf.py; with hs = 4, a head's rows [a0 a1 b0 b1] become
[a0 b0 a1 b1]. wk has n_kv_heads heads, not n_heads: permuting it by n_heads (as llama2.c's own HF importer once
did) silently scrambles grouped-query models. wv and wo do not meet RoPE and keep their order.

What llama2.c cannot express is refused on export rather than lost: biases, a RoPE base other than 10000 or any
RoPE scaling, head_dim != dim / n_heads, and an RMSNorm epsilon other than run.c's hard-coded 1e-5.

Files from the world: a .bin is opened only if it is a regular file (nanollm.files.open_regular), and its header's
sizes are checked against the file's real size before anything is allocated. Every output is written atomically
(nanollm.files), and an output that is one of the inputs is refused before anything is touched.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanollm.config import ModelConfig
from nanollm.files import atomic_write, open_regular, refuse_overwriting_inputs, write_text
from nanollm.weights import ModelWeights

from . import convert, safetensors  # the modules, not their names: see weights_tools/__init__.py

MAGIC = 0x616B3432  # "ak42"
VERSION1_HEADER_BYTES = 256
LEGACY_HEADER = struct.Struct("<7i")  # dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
VERSION1_PREFIX = struct.Struct("<Ii7iB")  # magic, version, the 7 ints, shared_classifier
RUN_C_NORM_EPS = 1e-5  # run.c's rmsnorm adds 1e-5; the file has no field for it
RUN_C_ROPE_THETA = 10000.0  # run.c's RoPE base, also hard-coded
BOS_ID, EOS_ID = 1, 2  # llama2.c's tokenizers (Llama 2's and the small trained ones) number BOS 1 and EOS 2
F32 = np.dtype("<f4")


class Llama2cError(ValueError):
    """A llama2.c file that cannot be read, or a model that llama2.c's format cannot hold; the message says which."""


@dataclass(frozen=True)
class Llama2cHeader:
    """The seven numbers every llama2.c file starts with, plus the classifier flag and the format version."""

    dim: int  # 288 (C)
    hidden_dim: int  # 768 (H)
    n_layers: int  # 6
    n_heads: int  # 6 (nh)
    n_kv_heads: int  # 6 (n_kv); fewer than n_heads is grouped-query attention
    vocab_size: int  # 32000 (V), always positive here: the legacy sign flag is decoded into shared_classifier
    seq_len: int  # 256
    shared_classifier: bool  # True: logits = x @ token_embedding_table.T, no wcls tensor
    version: int = 1  # 0 = legacy, 1 = version 1

    @property
    def head_size(self) -> int:
        return self.dim // self.n_heads

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor this header implies, in the order the file stores them."""
        C, H, L, V = self.dim, self.hidden_dim, self.n_layers, self.vocab_size
        kv = self.n_kv_heads * self.head_size
        shape = {
            "token_embedding_table": (V, C),
            "rms_att_weight": (L, C), "wq": (L, C, C), "wk": (L, kv, C), "wv": (L, kv, C), "wo": (L, C, C),
            "rms_ffn_weight": (L, C), "w1": (L, H, C), "w2": (L, C, H), "w3": (L, H, C),
            "rms_final_weight": (C,),
            "freq_cis_real": (self.seq_len, self.head_size // 2), "freq_cis_imag": (self.seq_len, self.head_size // 2),
            "wcls": (V, C),
        }
        if self.version == 0:
            order = ["token_embedding_table", "rms_att_weight", "wq", "wk", "wv", "wo", "rms_ffn_weight", "w1", "w2",
                     "w3", "rms_final_weight", "freq_cis_real", "freq_cis_imag"]
        else:
            order = ["rms_att_weight", "rms_ffn_weight", "rms_final_weight", "token_embedding_table", "wq", "wk",
                     "wv", "wo", "w1", "w2", "w3"]
        if not self.shared_classifier:
            order.append("wcls")
        return {name: shape[name] for name in order}

    def float32_bytes(self) -> int:
        """The bytes of float32 tensors the file holds after its header (exact: Python ints never overflow)."""
        return sum(math.prod(shape) for shape in self.tensor_shapes().values()) * F32.itemsize

    def check_positive(self, where: str) -> None:
        numbers = {k: getattr(self, k) for k in ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads",
                                                  "vocab_size", "seq_len")}
        bad = [f"{k}={v}" for k, v in numbers.items() if v <= 0]
        if bad:
            raise Llama2cError(f"{where}: header has non-positive sizes ({', '.join(bad)}): not a llama2.c file?")

    def check(self, where: str) -> None:
        """Raise Llama2cError unless the sizes describe a model run.c could run."""
        self.check_positive(where)
        if self.dim % self.n_heads:
            raise Llama2cError(f"{where}: dim={self.dim} is not a multiple of n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise Llama2cError(f"{where}: n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.head_size % 2:
            raise Llama2cError(f"{where}: head size {self.head_size} is odd; RoPE rotates pairs")


@dataclass
class Llama2cModel:
    """A llama2.c checkpoint in memory: header + float32 tensors by llama2.c's names (shapes: tensor_shapes)."""

    header: Llama2cHeader
    tensors: dict[str, np.ndarray]


# ----------------------------------------------------------------------------------------------------------------
# Reading and writing .bin files


def read_llama2c(path: str | os.PathLike) -> Llama2cModel:
    """Parse a legacy or version-1 llama2.c file. Tensors are read-only views of the file mapped into memory.

    Nothing is allocated from the header's numbers until they are checked against the file's real size: a header
    claiming 10**9 layers is one Llama2cError, at once. (Sizes are multiplied as Python ints: NumPy's int64 product
    of seven int32 fields can wrap around and match the file by accident.)
    """
    path = Path(path)
    where = str(path)
    with open_regular(path) as f:  # a FIFO or /dev/zero is refused here, before a byte is read
        size = os.fstat(f.fileno()).st_size
        head = f.read(VERSION1_HEADER_BYTES)
        header, data_start = _parse_header(where, head, size)
        # (n,) float32, every tensor back to back; the map keeps its own handle on the open file
        buffer = np.memmap(f, dtype=F32, mode="r", offset=data_start)
    tensors, at = {}, 0
    for name, shape in header.tensor_shapes().items():
        n = math.prod(shape)
        tensors[name] = buffer[at : at + n].reshape(shape)
        at += n
    return Llama2cModel(header, tensors)


def _parse_header(where: str, head: bytes, size: int) -> tuple[Llama2cHeader, int]:
    """The first (up to) 256 bytes of a `size`-byte file -> (checked header, offset of the first tensor)."""
    if head.startswith(b"PK\x03\x04"):  # a zip archive: how torch.save writes pytorch_model.bin
        raise Llama2cError(f"{where}: a PyTorch checkpoint (a zip archive), not a llama2.c file: nanollm reads it "
                           f"from its model directory, beside its config.json ({Path(where).parent})")
    if len(head) < LEGACY_HEADER.size:
        raise Llama2cError(f"{where}: {size} bytes, too short for a llama2.c header ({LEGACY_HEADER.size} bytes)")
    if struct.unpack_from("<I", head)[0] == MAGIC:
        if len(head) < VERSION1_HEADER_BYTES:
            raise Llama2cError(f"{where}: version header is {VERSION1_HEADER_BYTES} bytes, file has only {size}")
        _, version, *numbers, shared = VERSION1_PREFIX.unpack_from(head)
        if version != 1:
            kind = " (llama2.c's int8 Q8_0 export)" if version == 2 else ""
            raise Llama2cError(f"{where}: llama2.c format version {version}{kind} is not supported; "
                               f"versions 0 (legacy) and 1 (float32) are")
        if shared not in (0, 1):
            raise Llama2cError(f"{where}: shared_classifier byte is {shared}, expected 0 or 1")
        header = Llama2cHeader(*numbers, shared_classifier=bool(shared), version=1)
        data_start = VERSION1_HEADER_BYTES
    else:
        *numbers, vocab, seq_len = LEGACY_HEADER.unpack_from(head)
        # Legacy files flag an untied classifier with a negative vocab_size.
        header = Llama2cHeader(*numbers, abs(vocab), seq_len, shared_classifier=vocab > 0, version=0)
        data_start = LEGACY_HEADER.size
    # The size check comes before the others: on a file that is not a llama2.c checkpoint at all it is the clearest.
    header.check_positive(where)
    expected = header.float32_bytes()
    if size - data_start != expected:
        raise Llama2cError(f"{where}: header (dim={header.dim}, n_layers={header.n_layers}, "
                           f"vocab_size={header.vocab_size}, ...) implies {expected:,} bytes of float32 tensors "
                           f"after the {data_start}-byte header, but the file holds {size - data_start:,}")
    header.check(where)
    return header, data_start


def write_llama2c(path: str | os.PathLike, model: Llama2cModel) -> None:
    """Write `model` as a version-1 file, byte for byte what llama2.c's export.py `version1_export` writes.

    Every tensor is checked before the file is opened, then the file is written atomically (nanollm.files): a
    failure leaves an existing file at `path` as it was. Tensors are converted to float32 one at a time.
    """
    h = Llama2cHeader(**{**vars(model.header), "version": 1})
    h.check(str(path))
    shapes = h.tensor_shapes()
    prefix = VERSION1_PREFIX.pack(MAGIC, 1, h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads,
                                  h.vocab_size, h.seq_len, int(h.shared_classifier))
    for name, shape in shapes.items():
        if name not in model.tensors:
            raise Llama2cError(f"{path}: tensor {name!r} is missing")
        if np.shape(model.tensors[name]) != shape:
            raise Llama2cError(f"{path}: tensor {name!r} has shape {np.shape(model.tensors[name])}, "
                               f"the header implies {shape}")
    with atomic_write(path) as f:
        f.write(prefix.ljust(VERSION1_HEADER_BYTES, b"\0"))
        for name in shapes:
            f.write(np.ascontiguousarray(model.tensors[name], dtype=F32).reshape(-1).data)


# ----------------------------------------------------------------------------------------------------------------
# llama2.c names and RoPE order <-> Hugging Face names and RoPE order


def to_rotate_half_order(w: np.ndarray, n_heads: int) -> np.ndarray:
    """(n_heads * hs, C) -> same shape. Within each head, rows (re0, im0, re1, im1, ...) -> (re0, re1, ..., im0, ...).

    Example, one head, hs = 4: rows [a0, a1, b0, b1] -> [a0, b0, a1, b1] (row 2j goes to j, row 2j+1 to j + hs/2).
    convert.to_rotate_half does it (GPT-J's q and k need it too, on part of each head): here on the rows of an
    (out, in) matrix, every dim of the head rotating.
    """
    hs = w.shape[0] // n_heads
    return np.ascontiguousarray(convert.to_rotate_half(w.T, n_heads, hs).T)  # (n_heads * hs, C)


def to_interleaved_order(w: np.ndarray, n_heads: int) -> np.ndarray:
    """The inverse of to_rotate_half_order: rows (re0, re1, ..., im0, im1, ...) -> (re0, im0, re1, im1, ...)."""
    rows, cols = w.shape
    hs = rows // n_heads
    return w.reshape(n_heads, 2, hs // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


# llama2.c's per-layer tensors and their Hugging Face names (w1 is SwiGLU's gate, w3 its up projection).
_LAYER_NAMES = {
    "rms_att_weight": "input_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "rms_ffn_weight": "post_attention_layernorm.weight",
    "w1": "mlp.gate_proj.weight",
    "w2": "mlp.down_proj.weight",
    "w3": "mlp.up_proj.weight",
}


def hf_config(h: Llama2cHeader) -> dict:
    """The config.json of the Hugging Face Llama that computes what run.c computes for this header."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h.dim,
        "intermediate_size": h.hidden_dim,
        "num_hidden_layers": h.n_layers,
        "num_attention_heads": h.n_heads,
        "num_key_value_heads": h.n_kv_heads,
        "head_dim": h.head_size,
        "vocab_size": h.vocab_size,
        "max_position_embeddings": h.seq_len,
        "hidden_act": "silu",
        "rms_norm_eps": RUN_C_NORM_EPS,
        # transformers >= 5 reads rope_parameters, older versions rope_theta: both say run.c's base.
        "rope_theta": RUN_C_ROPE_THETA,
        "rope_parameters": {"rope_type": "default", "rope_theta": RUN_C_ROPE_THETA},
        "tie_word_embeddings": h.shared_classifier,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "dtype": "float32",
    }


def llama2c_to_hf(model: Llama2cModel) -> tuple[dict, dict[str, np.ndarray]]:
    """-> (config.json dict, Hugging Face state dict of float32 arrays, (out, in) matrices as nn.Linear holds them)."""
    h, t = model.header, model.tensors
    state = {"model.embed_tokens.weight": t["token_embedding_table"]}
    for i in range(h.n_layers):
        for ours, theirs in _LAYER_NAMES.items():
            w = t[ours][i]
            if ours == "wq":
                w = to_rotate_half_order(w, h.n_heads)
            elif ours == "wk":
                w = to_rotate_half_order(w, h.n_kv_heads)  # the KV heads: n_kv_heads, not n_heads
            state[f"model.layers.{i}.{theirs}"] = w
    state["model.norm.weight"] = t["rms_final_weight"]
    if not h.shared_classifier:
        state["lm_head.weight"] = t["wcls"]
    return hf_config(h), state


def hf_to_llama2c(config: dict, state: Mapping[str, np.ndarray], where: str = "model") -> Llama2cModel:
    """A Hugging Face Llama (config.json dict + state dict) -> llama2.c tensors; refuses what llama2.c cannot hold."""
    cfg = convert.config_from_hf(config, where=f"{where}/config.json")
    problems = []
    if cfg.arch != "llama":
        problems.append(f"architecture {cfg.arch!r} (llama2.c runs Llama only)")
    if cfg.qkv_bias or cfg.out_bias or cfg.mlp_bias:
        problems.append("biases")
    rope = cfg.rope
    if rope is not None and (rope.theta != RUN_C_ROPE_THETA or rope.scaling is not None or rope.rotary_dim != cfg.head_dim):
        problems.append(f"RoPE base {rope.theta:g}{' with scaling' if rope.scaling else ''}"
                        f"{' rotating part of each head' if rope.rotary_dim != cfg.head_dim else ''} (run.c: 10000)")
    if cfg.head_dim * cfg.n_head != cfg.n_embd:
        problems.append(f"head_dim={cfg.head_dim} != hidden_size / num_attention_heads")
    if cfg.norm_eps != RUN_C_NORM_EPS:
        problems.append(f"rms_norm_eps={cfg.norm_eps:g} (run.c: 1e-5)")
    if problems:
        raise Llama2cError(f"{where}: llama2.c's format cannot hold this model: {'; '.join(problems)}")
    header = Llama2cHeader(cfg.n_embd, cfg.n_hidden, cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.vocab_size,
                           cfg.max_seq_len, shared_classifier=cfg.tie_embeddings, version=1)

    used = set()

    def get(name: str) -> np.ndarray:
        if name not in state:
            raise Llama2cError(f"{where}: missing tensor {name!r}")
        used.add(name)
        return np.asarray(state[name], dtype=np.float32)

    tensors = {"token_embedding_table": get("model.embed_tokens.weight")}
    for ours, theirs in _LAYER_NAMES.items():
        per_layer = []
        for i in range(cfg.n_layer):
            w = get(f"model.layers.{i}.{theirs}")
            if ours == "wq":
                w = to_interleaved_order(w, cfg.n_head)
            elif ours == "wk":
                w = to_interleaved_order(w, cfg.n_kv_head)
            per_layer.append(w)
        tensors[ours] = np.stack(per_layer)  # (L, ...)
    tensors["rms_final_weight"] = get("model.norm.weight")
    if not cfg.tie_embeddings:
        tensors["wcls"] = get("lm_head.weight")
    else:
        used.add("lm_head.weight")  # a saved copy of the tied embedding, if any
    unused = sorted(n for n in state if n not in used and not n.endswith(".rotary_emb.inv_freq"))
    if unused:
        raise Llama2cError(f"{where}: tensors llama2.c has no place for: {unused[:5]}")
    for name, shape in header.tensor_shapes().items():
        if tensors[name].shape != shape:
            raise Llama2cError(f"{where}: {name} has shape {tensors[name].shape}, config.json implies {shape}")
    return Llama2cModel(header, tensors)


# ----------------------------------------------------------------------------------------------------------------
# Files and directories


def read_any(path: str | os.PathLike) -> Llama2cModel:
    """A llama2.c .bin, or a Hugging Face Llama directory, as llama2.c tensors."""
    path = Path(path)
    if path.is_dir():
        return hf_to_llama2c(convert.read_json(path / "config.json"), safetensors.open_checkpoint(path), where=str(path))
    return read_llama2c(path)


def convert_to_hf_dir(bin_path: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write `bin_path` as a Hugging Face Llama directory: config.json + model.safetensors (float32). -> out_dir.

    out_dir must be new or empty, so no output can replace an input or another model's file. Each file is written
    atomically, the weights first and config.json (what makes the directory a model) last; if either fails, what
    this call wrote is removed again.
    """
    model = read_llama2c(bin_path)
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise Llama2cError(f"{out_dir}: exists and is not an empty directory; choose a new one")
    config, state = llama2c_to_hf(model)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        safetensors.save_safetensors(out_dir / safetensors.SINGLE_FILE_NAME, state, metadata={"format": "pt"})
        write_text(out_dir / "config.json", json.dumps(config, indent=2) + "\n")
    except BaseException:
        (out_dir / safetensors.SINGLE_FILE_NAME).unlink(missing_ok=True)  # the directory was empty: this file is ours
        if created:
            out_dir.rmdir()
        raise
    return out_dir


def export_llama2c(source: str | os.PathLike, bin_path: str | os.PathLike) -> Path:
    """A Hugging Face Llama directory (or any llama2.c file) -> a version-1 llama2.c file at bin_path.

    bin_path may not be the source file, nor any file of the source directory (its weights, config.json, its
    tokenizer): that is refused before anything is read or written (`export m.bin m.bin` once left 0 bytes).
    """
    source = Path(source)
    refuse_overwriting_inputs(bin_path, list(source.iterdir()) if source.is_dir() else [source])
    write_llama2c(bin_path, read_any(source))
    return Path(bin_path)


class _ArrayCheckpoint(Mapping):
    """In-memory tensors behind the interface convert.TensorSource reads (a Mapping plus info(name))."""

    def __init__(self, tensors: dict[str, np.ndarray]):
        self._tensors = tensors

    def info(self, name: str) -> safetensors.TensorInfo:
        a = self._tensors[name]
        return safetensors.TensorInfo(name, "F32", tuple(a.shape), a.nbytes)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def load_llama2c_checkpoint(path: str | os.PathLike) -> tuple[ModelConfig, ModelWeights]:
    """A llama2.c .bin -> (config, float32 weights), through the same Hugging Face path as a converted directory;
    nanollm.load builds the Model (llama2.c keeps the tokenizer in a separate tokenizer.bin: there is none)."""
    config, state = llama2c_to_hf(read_llama2c(path))
    cfg = convert.config_from_hf(config, where=str(path))
    return cfg, convert.llama_family_weights(cfg, convert.TensorSource(_ArrayCheckpoint(state), where=str(path)))


# ----------------------------------------------------------------------------------------------------------------
# Command line


def out_of_memory_message(error: MemoryError, path: str | os.PathLike) -> str:
    """The one line a CLI prints for a MemoryError while working on `path`. NumPy's own message names the array it
    could not allocate ("Unable to allocate 1.2 GiB for an array with shape ..."); the input's size on disk says how
    big the job was, also when Python's MemoryError says nothing."""
    path = Path(path)
    try:
        files = list(path.iterdir()) if path.is_dir() else [path]
        size = f"{sum(f.stat().st_size for f in files if f.is_file()):,} bytes on disk"
    except OSError:
        size = "size unknown"
    return f"error: out of memory working on {path} ({size}){f': {error}' if str(error) else ''}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m weights_tools.llama2c",
                                description="Convert between llama2.c .bin checkpoints and Hugging Face directories.")
    sub = p.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="llama2.c .bin (legacy or version 1) -> Hugging Face directory")
    imp.add_argument("bin", help="the llama2.c checkpoint, e.g. stories260K.bin")
    imp.add_argument("out_dir", help="a new directory for config.json + model.safetensors")
    exp = sub.add_parser("export", help="Hugging Face Llama directory (or llama2.c .bin) -> version-1 .bin")
    exp.add_argument("source", help="a model directory, or a legacy .bin to rewrite as version 1")
    exp.add_argument("bin", help="the llama2.c file to write")
    args = p.parse_args(argv)
    source = args.bin if args.command == "import" else args.source
    try:
        if args.command == "import":
            out = convert_to_hf_dir(args.bin, args.out_dir)
        else:
            out = export_llama2c(args.source, args.bin)
    except (Llama2cError, convert.CheckpointError, safetensors.SafetensorsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except MemoryError as e:
        print(out_of_memory_message(e, source), file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
