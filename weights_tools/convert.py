"""Hugging Face GPT-2 and Llama checkpoints -> nanollm's config and named weights.

This file owns every layout change between a checkpoint and nanollm (nanollm/model.py states the convention: a
linear weight is (in, out), applied as x @ w):

  GPT-2 (GPT2LMHeadModel)  Conv1D weights are already stored (in, out): no transpose. c_attn already holds q|k|v side
                           by side. `attn.bias` / `attn.masked_bias` are causal-mask buffers, not weights: skipped.
                           Names carry a `transformer.` prefix in most checkpoints but not in the hub's own `gpt2`.
  Llama (LlamaForCausalLM) nn.Linear weights are (out, in): transposed. q, k and v are concatenated into one (in, out)
                           matrix so attention does one matmul. Heads are already in the rotate-half RoPE layout.

Every tensor is checked against the shape config.json implies, and every tensor the checkpoint holds must be used or
known to be skippable, so an unfamiliar checkpoint fails loudly instead of running with half its weights.
Weights are upcast to float32 (the NumPy reference computes in float32 whatever the storage dtype).
"""
import json
from pathlib import Path

import numpy as np

from nanollm.config import ModelConfig, RopeScaling
from nanollm.model import LayerWeights, ModelWeights

from .safetensors import open_checkpoint

SUPPORTED = ("gpt2", "llama")


class CheckpointError(ValueError):
    """A checkpoint nanollm cannot load: wrong or unsupported config, missing or mis-shaped tensors."""


# -- config.json -----------------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: no {path.name} (a model directory needs config.json)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def require_multiple(total: int, total_name: str, parts: int, parts_name: str, where: str):
    """Refuse a width that does not split evenly into heads (checked before dividing by a possibly zero count)."""
    if parts <= 0 or total % parts:
        raise CheckpointError(f"{where}: {total_name}={total} is not a positive multiple of {parts_name}={parts}")


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """A Hugging Face config.json dict -> ModelConfig, reading every field that changes the computation."""

    def get(key, default=...):
        if key in hf and hf[key] is not None:
            return hf[key]
        if default is ...:
            raise CheckpointError(f"{where}: missing required key {key!r}")
        return default

    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        archs = hf.get("architectures")
        raise CheckpointError(f"{where}: unknown architecture model_type={model_type!r} (architectures={archs}); "
                              f"nanollm loads {' and '.join(SUPPORTED)}")
    eos = get("eos_token_id", ())
    eos = tuple(eos) if isinstance(eos, list) else (eos,)
    try:
        if model_type == "gpt2":
            act = get("activation_function", "gelu_new")
            if act not in ("gelu_new", "gelu_pytorch_tanh"):
                raise CheckpointError(f"{where}: activation_function={act!r} is not supported (GPT-2 uses gelu_new)")
            if get("scale_attn_by_inverse_layer_idx", False) or not get("scale_attn_weights", True):
                raise CheckpointError(f"{where}: non-standard GPT-2 attention scaling is not supported")
            C, nh = int(get("n_embd")), int(get("n_head"))
            require_multiple(C, "n_embd", nh, "n_head", where)
            return ModelConfig(
                arch="gpt2", vocab_size=int(get("vocab_size")), n_layer=int(get("n_layer")), n_head=nh, n_kv_head=nh,
                n_embd=C, head_dim=C // nh, n_hidden=int(get("n_inner", 4 * C)),
                max_seq_len=int(get("n_positions")), norm_eps=float(get("layer_norm_epsilon", 1e-5)),
                tie_embeddings=bool(get("tie_word_embeddings", True)), attn_bias=True, mlp_bias=True,
                bos_token_id=get("bos_token_id", None), eos_token_ids=eos,
            )
        act = get("hidden_act", "silu")
        if act != "silu":
            raise CheckpointError(f"{where}: hidden_act={act!r} is not supported (Llama uses silu)")
        C, nh = int(get("hidden_size")), int(get("num_attention_heads"))
        if "head_dim" not in hf or hf["head_dim"] is None:  # the default head size divides the width among heads
            require_multiple(C, "hidden_size", nh, "num_attention_heads", where)
        # transformers >= 5 writes `rope_parameters` (theta inside); older files write rope_theta + rope_scaling.
        rope = dict(get("rope_parameters", None) or get("rope_scaling", None) or {})
        theta = float(rope.get("rope_theta", get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type == "llama3":
            scaling = RopeScaling(
                factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
            )
        elif rope_type == "default":
            scaling = None
        else:
            raise CheckpointError(f"{where}: rope_type={rope_type!r} is not supported (default and llama3 are)")
        return ModelConfig(
            arch="llama", vocab_size=int(get("vocab_size")), n_layer=int(get("num_hidden_layers")), n_head=nh,
            n_kv_head=int(get("num_key_value_heads", nh)), n_embd=C, head_dim=int(get("head_dim", C // nh)),
            n_hidden=int(get("intermediate_size")), max_seq_len=int(get("max_position_embeddings")),
            norm_eps=float(get("rms_norm_eps", 1e-6)), tie_embeddings=bool(get("tie_word_embeddings", False)),
            attn_bias=bool(get("attention_bias", False)), mlp_bias=bool(get("mlp_bias", False)),
            rope_theta=theta, rope_scaling=scaling, bos_token_id=get("bos_token_id", None), eos_token_ids=eos,
        )
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{where}: invalid config ({type(e).__name__}: {e})") from None


# -- tensors ---------------------------------------------------------------------------------------------------------


class TensorSource:
    """Takes tensors out of a checkpoint by name, checking each shape, and remembers what was taken."""

    def __init__(self, checkpoint, where: str):
        self.ckpt, self.where, self.taken = checkpoint, where, set()
        names = set(checkpoint.keys())
        # GPT-2 files differ: the hub's `gpt2` has bare names (`h.0.attn...`), most others `transformer.h.0...`.
        self.prefix = "transformer." if any(n.startswith("transformer.") for n in names) else ""

    def __contains__(self, name: str) -> bool:
        return self.prefix + name in self.ckpt or name in self.ckpt

    def take(self, name: str, shape: tuple, transpose: bool = False) -> np.ndarray:
        """The tensor `name` as a float32 array of `shape` (stored shape reversed when transpose)."""
        full = self.prefix + name if self.prefix + name in self.ckpt else name
        if full not in self.ckpt:  # name it as this checkpoint would have: with its prefix
            raise CheckpointError(f"{self.where}: missing tensor {self.prefix + name!r}")
        stored = tuple(self.ckpt.info(full).shape)
        want = tuple(reversed(shape)) if transpose else tuple(shape)
        if stored != want:
            raise CheckpointError(f"{self.where}: tensor {full!r} has shape {stored}, config.json implies {want}")
        self.taken.add(full)
        a = self.ckpt[full]  # a zero-copy view of the file (BF16: already upcast)
        return np.ascontiguousarray(a.T if transpose else a, dtype=np.float32)

    def ignore(self, name: str):
        """Mark a tensor as deliberately unused (e.g. a saved copy of a tied embedding)."""
        self.taken.add(self.prefix + name if self.prefix + name in self.ckpt else name)

    def check_all_used(self, skippable: tuple[str, ...]):
        unused = sorted(n for n in self.ckpt.keys() if n not in self.taken and not n.endswith(skippable))
        if unused:
            more = f" (+{len(unused) - 5} more)" if len(unused) > 5 else ""
            raise CheckpointError(f"{self.where}: tensors nanollm does not know how to use: {unused[:5]}{more}")


def output_projection(cfg: ModelConfig, src: TensorSource):
    """lm_head (C, V), or None when tied to the token embedding (some files still save a copy: not needed)."""
    if cfg.tie_embeddings:
        src.ignore("lm_head.weight")
        return None
    return src.take("lm_head.weight", (cfg.n_embd, cfg.vocab_size), transpose=True)


def gpt2_weights(cfg: ModelConfig, src: TensorSource) -> ModelWeights:
    C, H, V = cfg.n_embd, cfg.n_hidden, cfg.vocab_size
    layers = []
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        layers.append(LayerWeights(
            norm1_w=src.take(p + "ln_1.weight", (C,)), norm1_b=src.take(p + "ln_1.bias", (C,)),
            w_qkv=src.take(p + "attn.c_attn.weight", (C, 3 * C)), b_qkv=src.take(p + "attn.c_attn.bias", (3 * C,)),
            w_o=src.take(p + "attn.c_proj.weight", (C, C)), b_o=src.take(p + "attn.c_proj.bias", (C,)),
            norm2_w=src.take(p + "ln_2.weight", (C,)), norm2_b=src.take(p + "ln_2.bias", (C,)),
            w_up=src.take(p + "mlp.c_fc.weight", (C, H)), b_up=src.take(p + "mlp.c_fc.bias", (H,)), w_gate=None,
            w_down=src.take(p + "mlp.c_proj.weight", (H, C)), b_down=src.take(p + "mlp.c_proj.bias", (C,)),
        ))
    w = ModelWeights(
        tok_emb=src.take("wte.weight", (V, C)), pos_emb=src.take("wpe.weight", (cfg.max_seq_len, C)), layers=layers,
        norm_f_w=src.take("ln_f.weight", (C,)), norm_f_b=src.take("ln_f.bias", (C,)),
        lm_head=output_projection(cfg, src),
    )
    src.check_all_used(skippable=(".attn.bias", ".attn.masked_bias"))
    return w


def llama_weights(cfg: ModelConfig, src: TensorSource) -> ModelWeights:
    C, H, V, hs = cfg.n_embd, cfg.n_hidden, cfg.vocab_size, cfg.head_dim
    q_dim, kv_dim = cfg.n_head * hs, cfg.n_kv_head * hs

    def qkv(p: str, bias: bool):
        dims = {"q": q_dim, "k": kv_dim, "v": kv_dim}
        if bias:
            return np.concatenate([src.take(f"{p}self_attn.{x}_proj.bias", (dims[x],)) for x in "qkv"])
        return np.concatenate([src.take(f"{p}self_attn.{x}_proj.weight", (C, dims[x]), transpose=True)
                               for x in "qkv"], axis=1)  # (C, q_dim + 2*kv_dim)

    layers = []
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        layers.append(LayerWeights(
            norm1_w=src.take(p + "input_layernorm.weight", (C,)), norm1_b=None,
            w_qkv=qkv(p, bias=False), b_qkv=qkv(p, bias=True) if cfg.attn_bias else None,
            w_o=src.take(p + "self_attn.o_proj.weight", (q_dim, C), transpose=True),
            b_o=src.take(p + "self_attn.o_proj.bias", (C,)) if cfg.attn_bias else None,
            norm2_w=src.take(p + "post_attention_layernorm.weight", (C,)), norm2_b=None,
            w_up=src.take(p + "mlp.up_proj.weight", (C, H), transpose=True),
            b_up=src.take(p + "mlp.up_proj.bias", (H,)) if cfg.mlp_bias else None,
            w_gate=src.take(p + "mlp.gate_proj.weight", (C, H), transpose=True),
            w_down=src.take(p + "mlp.down_proj.weight", (H, C), transpose=True),
            b_down=src.take(p + "mlp.down_proj.bias", (C,)) if cfg.mlp_bias else None,
        ))
    if cfg.mlp_bias:
        for i in range(cfg.n_layer):  # SwiGLU's gate bias has no slot in LayerWeights: refuse rather than drop it
            if f"model.layers.{i}.mlp.gate_proj.bias" in src:
                raise CheckpointError(f"{src.where}: gate_proj biases are not supported")
    w = ModelWeights(
        tok_emb=src.take("model.embed_tokens.weight", (V, C)), pos_emb=None, layers=layers,
        norm_f_w=src.take("model.norm.weight", (C,)), norm_f_b=None, lm_head=output_projection(cfg, src),
    )
    src.check_all_used(skippable=(".rotary_emb.inv_freq",))
    return w


def load_hf_checkpoint(path) -> tuple[ModelConfig, ModelWeights]:
    """A Hugging Face model directory (config.json + *.safetensors, single or sharded) -> (config, float32 weights)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a model directory")
    cfg = config_from_hf(read_json(path / "config.json"), where=str(path / "config.json"))
    src = TensorSource(open_checkpoint(path), where=str(path))
    weights = gpt2_weights(cfg, src) if cfg.arch == "gpt2" else llama_weights(cfg, src)
    return cfg, weights
