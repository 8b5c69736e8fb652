"""Hugging Face GPT-2 and Llama checkpoints -> nanollm's config and named weights.

This file owns every layout change between a checkpoint and nanollm (nanollm/model.py states the convention: a
linear weight is (in, out), applied as x @ w):

  GPT-2 (GPT2LMHeadModel)  Conv1D weights are already stored (in, out): no transpose. c_attn already holds q|k|v side
                           by side. `attn.bias` / `attn.masked_bias` are causal-mask buffers, not weights: skipped.
                           Names carry a `transformer.` prefix in most checkpoints but not in the hub's own `gpt2`.
  Llama (LlamaForCausalLM) nn.Linear weights are (out, in): transposed. q, k and v are concatenated into one (in, out)
                           matrix so attention does one matmul. Heads are already in the rotate-half RoPE layout.

config.json is read through typed getters (JsonFields): each value must have the JSON type transformers requires and
a range that makes sense, else one CheckpointError names the file and the key. Special token ids outside the
vocabulary are ignored with a warning, as transformers does.

Every tensor is checked against the shape config.json implies, and every tensor the checkpoint holds must be used or
known to be skippable, so an unfamiliar checkpoint fails loudly instead of running with half its weights.
Weights are upcast to float32 (the NumPy reference computes in float32 whatever the storage dtype), after checking
that the machine has the memory for them (nanollm.memory).
"""
import json
import math
import warnings
from pathlib import Path

import numpy as np

from nanollm.config import ModelConfig, RopeScaling
from nanollm.files import read_bytes
from nanollm.memory import check_fits
from nanollm.model import LayerWeights, ModelWeights
from nanollm.rope import rope_frequencies

from .safetensors import open_checkpoint

SUPPORTED = ("gpt2", "llama")
FLOAT32_MAX = float(np.finfo(np.float32).max)  # a norm's eps is added in float32: a larger one would overflow


class CheckpointError(ValueError):
    """A checkpoint nanollm cannot load: wrong or unsupported config, missing or mis-shaped tensors."""


# -- config.json -----------------------------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    """The JSON object in a model file (config.json, generation_config.json), read as a regular file only."""
    try:
        data = json.loads(read_bytes(path).decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: no {path.name} (a model directory needs config.json)") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSONDecodeError, a 5000-digit int
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


REQUIRED = object()  # a getter's default meaning "the key must be there"


class JsonFields:
    """Typed reads of one JSON object from a model file: every key nanollm reads goes through one of these getters.

    The types are those transformers 5 enforces on config.json (its config classes are huggingface_hub @strict
    dataclasses; checked against transformers 5.24): an int is a JSON integer (not true, not 2.0, not "2"), a bool is
    true or false (not "false", not 0), a string is a string. A number may be a JSON integer or float (transformers
    refuses `"layer_norm_epsilon": 0` for being an int; a writer that prints 1.0 as 1 is not wrong) but must be
    finite. null stands for "absent" only where transformers types the key `X | None`; elsewhere it is an error.
    Ranges are checked too, where transformers accepts nonsense (n_layer 0, rope_theta -1, eps 0; see
    config_from_hf). A bad value is one CheckpointError naming the file and the key.
    """

    def __init__(self, data: dict, where: str, prefix: str = ""):
        self.data, self.where, self.prefix = data, where, prefix

    def __contains__(self, key: str) -> bool:
        return self.data.get(key) is not None

    def error(self, key: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.where}: {self.prefix}{key} {problem}")

    def value(self, key: str, default, nullable: bool):
        """The raw value, or default when the key is absent (or null, for a nullable key)."""
        if key in self.data and (self.data[key] is not None or not nullable):
            return self.data[key]
        if default is REQUIRED:
            raise CheckpointError(f"{self.where}: missing required key {self.prefix + key!r}")
        return default

    def refuse(self, key: str, value, expected: str):
        raise self.error(key, f"must be {expected}, got {json.dumps(value)[:80]}")

    def integer(self, key: str, default=REQUIRED, *, minimum: int = 1, nullable: bool = False) -> int:
        """A JSON integer >= minimum and < 2**63: every count and size here is an int64 in transformers' torch, and a
        larger one would not even convert to a float (10**400 / 2.0 is an OverflowError)."""
        value = self.value(key, default, nullable)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.refuse(key, value, f"an integer >= {minimum}")
        if value >= 2**63:
            self.refuse(key, value, "an integer < 2**63")
        return value

    def number(self, key: str, default=REQUIRED, *, above: float | None = None, below: float | None = None) -> float:
        """A finite number, > above and < below when given. An int too large for a float is not finite here."""
        value = self.value(key, default, nullable=False)
        try:
            ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        except OverflowError:
            ok = False
        if not ok or (above is not None and not value > above):
            self.refuse(key, value, "a finite number" + ("" if above is None else f" > {above:g}"))
        if below is not None and not value < below:
            self.refuse(key, value, f"a number < {below:g}")
        return float(value)

    def boolean(self, key: str, default=REQUIRED) -> bool:
        value = self.value(key, default, nullable=False)
        if not isinstance(value, bool):
            self.refuse(key, value, "true or false")
        return value

    def string(self, key: str, default=REQUIRED) -> str:
        value = self.value(key, default, nullable=False)
        if not isinstance(value, str):
            self.refuse(key, value, "a string")
        return value

    def one_of(self, key: str, choices: tuple):
        """One of `choices`, compared with its type too (so 1 is not True). Example: early_stopping, (True, False,
        "never")."""
        value = self.value(key, REQUIRED, nullable=False)
        if not any(type(value) is type(c) and value == c for c in choices):
            self.refuse(key, value, " or ".join(json.dumps(c) for c in choices))
        return value

    def mapping(self, key: str) -> "JsonFields | None":
        """A nested JSON object (rope_parameters) as JsonFields whose errors name `key.inner`; None when absent."""
        value = self.value(key, None, nullable=True)
        if value is not None and not isinstance(value, dict):
            self.refuse(key, value, "a JSON object")
        return None if value is None else JsonFields(value, self.where, f"{self.prefix}{key}.")

    def token_ids(self, key: str, vocab_size: int, ignored: list, several: bool = False) -> tuple[int, ...]:
        """A special token id field (an int or null; with `several`, a list of ints too) -> the ids inside the
        vocabulary.

        An id outside it is not an error: transformers loads such files with a warning (every GPT2Config(vocab_size=N)
        keeps eos_token_id 50256) and simply never meets the id. It is left out here and described in `ignored`,
        which the caller turns into one warning for the file.
        """
        value = self.value(key, None, nullable=True)
        ids = [] if value is None else value if several and isinstance(value, list) else [value]
        if any(isinstance(i, bool) or not isinstance(i, int) for i in ids):
            self.refuse(key, value, "a token id (an integer)" + (", a list of them" if several else "") + " or null")
        ignored += [f"{self.prefix}{key} {i}" for i in ids if not 0 <= i < vocab_size]
        return tuple(i for i in ids if 0 <= i < vocab_size)


def warn_ignored_ids(where: str, ignored: list, vocab_size: int) -> None:
    """One warning per file (so once per model load) for the special ids outside the vocabulary that it names."""
    if ignored:
        warnings.warn(f"{where}: ignoring {', '.join(ignored)}: outside the vocabulary of {vocab_size} tokens, so no "
                      f"generated token can be one (transformers loads such files too, and never meets the id)",
                      stacklevel=2)


def require_multiple(total: int, total_name: str, parts: int, parts_name: str, where: str):
    """Refuse a count that does not split evenly into parts (parts was checked >= 1 when read)."""
    if total % parts:
        raise CheckpointError(f"{where}: {total_name}={total} is not a multiple of {parts_name}={parts}")


def config_from_hf(hf: dict, where: str = "config.json") -> ModelConfig:
    """A Hugging Face config.json dict -> ModelConfig, reading every field that changes the computation, each
    through a typed getter of JsonFields (see it for the rules) so that a bad value names the file and the key."""
    f = JsonFields(hf, where)
    model_type = hf.get("model_type")
    if model_type not in SUPPORTED:
        archs = hf.get("architectures")
        raise CheckpointError(f"{where}: unknown architecture model_type={model_type!r} (architectures={archs}); "
                              f"nanollm loads {' and '.join(SUPPORTED)}")
    return gpt2_config(f) if model_type == "gpt2" else llama_config(f)


def special_ids(f: JsonFields, vocab_size: int) -> dict:
    """bos_token_id and eos_token_ids for ModelConfig; ids outside the vocabulary are dropped with one warning."""
    ignored = []
    bos = f.token_ids("bos_token_id", vocab_size, ignored)
    eos = f.token_ids("eos_token_id", vocab_size, ignored, several=True)
    warn_ignored_ids(f.where, ignored, vocab_size)
    return dict(bos_token_id=bos[0] if bos else None, eos_token_ids=eos)


def gpt2_config(f: JsonFields) -> ModelConfig:
    act = f.string("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(f"{f.where}: activation_function={act!r} is not supported (GPT-2 uses gelu_new)")
    for key, standard in (("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True)):
        if f.boolean(key, standard) != standard:
            raise CheckpointError(f"{f.where}: {key}={json.dumps(not standard)} is not supported (GPT-2 scales "
                                  f"attention by 1/sqrt(head size) alone)")
    C, nh, V = f.integer("n_embd"), f.integer("n_head"), f.integer("vocab_size")
    require_multiple(C, "n_embd", nh, "n_head", f.where)
    return build_config(
        f, arch="gpt2", vocab_size=V, n_layer=f.integer("n_layer"), n_head=nh, n_kv_head=nh, n_embd=C,
        head_dim=C // nh, n_hidden=f.integer("n_inner", 4 * C, nullable=True), max_seq_len=f.integer("n_positions"),
        norm_eps=f.number("layer_norm_epsilon", 1e-5, above=0, below=FLOAT32_MAX),
        tie_embeddings=f.boolean("tie_word_embeddings", True),
        attn_bias=True, mlp_bias=True, **special_ids(f, V),
    )


def llama_config(f: JsonFields) -> ModelConfig:
    act = f.string("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{f.where}: hidden_act={act!r} is not supported (Llama uses silu)")
    C, nh, V = f.integer("hidden_size"), f.integer("num_attention_heads"), f.integer("vocab_size")
    n_kv = f.integer("num_key_value_heads", nh, nullable=True)
    require_multiple(nh, "num_attention_heads", n_kv, "num_key_value_heads", f.where)
    if "head_dim" not in f:  # the default head size divides the width among the heads
        require_multiple(C, "hidden_size", nh, "num_attention_heads", f.where)
    hs = f.integer("head_dim", C // nh, nullable=True)
    if hs % 2:
        raise CheckpointError(f"{f.where}: head_dim={hs} is odd; RoPE rotates pairs of dimensions (head_dim is "
                              f"hidden_size / num_attention_heads when config.json does not set it)")
    theta, scaling = rope_settings(f)
    return build_config(
        f, arch="llama", vocab_size=V, n_layer=f.integer("num_hidden_layers"), n_head=nh, n_kv_head=n_kv, n_embd=C,
        head_dim=hs, n_hidden=f.integer("intermediate_size"), max_seq_len=f.integer("max_position_embeddings"),
        norm_eps=f.number("rms_norm_eps", 1e-6, above=0, below=FLOAT32_MAX),
        tie_embeddings=f.boolean("tie_word_embeddings", False),
        attn_bias=f.boolean("attention_bias", False), mlp_bias=f.boolean("mlp_bias", False), rope_theta=theta,
        rope_scaling=scaling, **special_ids(f, V),
    )


def rope_settings(f: JsonFields) -> tuple[float, RopeScaling | None]:
    """rope_theta and Llama 3 scaling. transformers >= 5 writes `rope_parameters` (theta inside); older files write
    rope_theta + rope_scaling. transformers 5 accepts a theta or factor <= 0 or NaN with at most a logged warning
    (its RoPE validation only warns); the frequencies would then be NaN or infinite, so here they are errors."""
    rope = f.mapping("rope_parameters") or f.mapping("rope_scaling") or JsonFields({}, f.where)
    theta = rope.number("rope_theta", above=0) if "rope_theta" in rope else f.number("rope_theta", 10000.0, above=0)
    type_key = "rope_type" if "rope_type" in rope else "type"
    rope_type = rope.string(type_key, "default")
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise rope.error(type_key, f"is {rope_type!r}, which is not supported (default and llama3 are)")
    low, high = rope.number("low_freq_factor", above=0), rope.number("high_freq_factor", above=0)
    if not high > low:  # the blend between the two divides by high - low (transformers warns; here it is an error)
        raise rope.error("high_freq_factor", f"must be > low_freq_factor, got {high:g} <= {low:g}")
    return theta, RopeScaling(factor=rope.number("factor", above=0), low_freq_factor=low, high_freq_factor=high,
                              original_max_position_embeddings=rope.integer("original_max_position_embeddings"))


def build_config(f: JsonFields, **fields) -> ModelConfig:
    """ModelConfig's own checks (say n_head % n_kv_head) come back as a CheckpointError naming the file."""
    try:
        return ModelConfig(**fields)
    except ValueError as e:
        raise CheckpointError(f"{f.where}: {e}") from None


def check_rope(cfg: ModelConfig, where: str) -> None:
    """Positive but extreme settings (rope_theta 1e-300, factor 1e-300) still give frequencies beyond float32: every
    angle would be inf and every logit NaN. Refused naming the keys, instead of as NaN logits later. Called once the
    tensors have confirmed head_dim: the frequencies are a (head_dim / 2,) array, and a config alone may claim 2**40.
    """
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        finite = np.isfinite(rope_frequencies(cfg)).all()
    if not finite:
        raise CheckpointError(f"{where}: rope_theta={cfg.rope_theta:g}"
                              + (f" with rope factor {cfg.rope_scaling.factor:g}" if cfg.rope_scaling else "")
                              + " gives RoPE frequencies beyond float32's range")


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
    # Every tensor becomes float32 (F16/BF16 are upcast copies, Llama's are transposed copies): refuse a checkpoint
    # larger than memory before the first copy, rather than fail, or be killed, halfway through.
    check_fits(4 * sum(math.prod(src.ckpt.info(name).shape) for name in src.ckpt.keys()),
               f"{path}: the weights as float32")
    if cfg.arch == "gpt2":
        return cfg, gpt2_weights(cfg, src)
    weights = llama_weights(cfg, src)
    check_rope(cfg, str(path / "config.json"))
    return cfg, weights
