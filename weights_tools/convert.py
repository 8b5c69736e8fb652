"""Hugging Face checkpoints -> nanollm's config and named weights, for every family nanollm runs.

This file is where families differ (nanollm/transformer.py has one forward pass for all of them): each family's
config.json keys become ModelConfig fields (nanollm/config.py lists which family sets which), and its tensor names
become LayerWeights. It also owns every layout change (nanollm/weights.py states the convention: a linear weight is
(in, out), applied as x @ w):

  GPT-2 (GPT2LMHeadModel)  Conv1D weights are already stored (in, out): no transpose. c_attn already holds q|k|v side
                           by side. `attn.bias` / `attn.masked_bias` are causal-mask buffers, not weights: skipped.
                           Names carry a `transformer.` prefix in most checkpoints but not in the hub's own `gpt2`.
  Llama and its heirs      nn.Linear weights are (out, in): transposed. q, k and v are concatenated into one (in, out)
  (Mistral, Qwen2/3,       matrix so attention does one matmul (Phi-3 stores them so already, as `qkv_proj`; its
  Phi-3, Gemma 1/2/3,      `gate_up_proj` holds gate then up, split here). Heads are already in the rotate-half RoPE
  OLMo-2)                  layout. Gemma's RMSNorm scales by (1 + w): the 1 is added to every norm weight here, so
                           the model's one RMSNorm (x * w) serves it. The names of the norms around each branch
                           differ: see `norm_names`.
  phi, StableLM            Llama's layout with LayerNorm biases; phi names its projections dense, fc1, fc2.
  GPT-NeoX (Pythia),       One fused query_key_value, grouped by key/value head (for each: its query heads, its key,
  Falcon                   its value): reordered to q|k|v (`ungroup_qkv`). Names under gpt_neox. / transformer.;
                           Pythia's output projection is embed_out.
  GPT-J                    q_proj, k_proj, v_proj apart, under transformer.h.i.attn; the rotated dims of each q and k
                           head reordered from interleaved RoPE pairs to rotate-half (`to_rotate_half`).
  All five                 skip the buffers older files saved (RoPE's inv_freq, causal masks: SKIPPABLE).

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
import sys
import warnings
from pathlib import Path

import numpy as np

from nanollm.config import Llama3Scaling, LinearScaling, LongRopeScaling, ModelConfig, Rope
from nanollm.files import read_bytes
from nanollm.memory import check_fits
from nanollm.weights import LayerWeights, ModelWeights
from nanollm.rope import frequencies

from . import checkpoint  # the module, not its names: see weights_tools/__init__.py

# config.json's model_type -> the family. Gemma 3's text-only checkpoints say gemma3_text (the multimodal ones, gemma3,
# hold a vision tower nanollm does not run).
SUPPORTED = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "gemma3_text", "olmo2",
             "gpt_neox", "gptj", "falcon", "phi", "stablelm")
GEMMA = ("gemma", "gemma2", "gemma3_text")
# GELU's names in config.json -> its form, by the math of transformers' activations.py (ACT2CLS): "gelu" and
# "gelu_python" are the exact x * Phi(x) (torch's erf); the others are all 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715
# x^3))), gelu_fast written as x * 0.7978845608 * (1 + 0.044715 x x): the same up to float32 rounding. Any other
# activation (quick_gelu, relu, gelu_10, ...) is refused by name.
GELU_FORMS = {"gelu": "erf", "gelu_python": "erf", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh",
              "gelu_python_tanh": "tanh", "gelu_fast": "tanh", "gelu_accurate": "tanh"}
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

    def error(self, key, problem: str) -> CheckpointError:
        name = f"{self.prefix}[{key}]" if isinstance(key, int) else f"{self.prefix}{key}"
        return CheckpointError(f"{self.where}: {name} {problem}")

    def value(self, key: str, default, nullable: bool):
        """The raw value, or default when the key is absent (or null, for a nullable key)."""
        if key in self.data and (self.data[key] is not None or not nullable):
            return self.data[key]
        if default is REQUIRED:
            raise CheckpointError(f"{self.where}: missing required key {self.prefix + key!r}")
        return default

    def refuse(self, key: str, value, expected: str):
        raise self.error(key, f"must be {expected}, got {json.dumps(value)[:80]}")

    def integer(self, key: str, default=REQUIRED, *, minimum: int = 1, nullable: bool = False) -> int | None:
        """A JSON integer >= minimum and < 2**63: every count and size here is an int64 in transformers' torch, and a
        larger one would not even convert to a float (10**400 / 2.0 is an OverflowError). None only as the default
        of a nullable key (Mistral v0.3's "sliding_window": null)."""
        value = self.value(key, default, nullable)
        if value is None and nullable and default is None:
            return None
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

    def numbers(self, key: str, length: int) -> tuple[float, ...]:
        """A list of `length` finite numbers > 0 (LongRoPE's short_factor and long_factor)."""
        value = self.value(key, REQUIRED, nullable=False)
        if not isinstance(value, list) or len(value) != length:
            self.refuse(key, value, f"a list of {length} numbers")
        items = JsonFields(dict(enumerate(value)), self.where, f"{self.prefix}{key}")
        return tuple(items.number(i, above=0) for i in range(length))

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
                              f"nanollm loads {', '.join(SUPPORTED)}")
    if model_type == "gpt2":
        return gpt2_config(f)
    if model_type == "gptj":
        return gptj_config(f)
    if model_type in ("gpt_neox", "falcon", "phi", "stablelm"):
        return classic_config(f, model_type)
    return llama_family_config(f, model_type)


def special_ids(f: JsonFields, vocab_size: int) -> dict:
    """bos_token_id and eos_token_ids for ModelConfig; ids outside the vocabulary are dropped with one warning."""
    ignored = []
    bos = f.token_ids("bos_token_id", vocab_size, ignored)
    eos = f.token_ids("eos_token_id", vocab_size, ignored, several=True)
    warn_ignored_ids(f.where, ignored, vocab_size)
    return dict(bos_token_id=bos[0] if bos else None, eos_token_ids=eos)


def gelu_form(f: JsonFields, key: str, default: str) -> str:
    """The GELU a config.json names -> "tanh" or "erf" (GELU_FORMS); any other activation is refused by name."""
    act = f.string(key, default)
    if act not in GELU_FORMS:
        raise CheckpointError(f"{f.where}: {key}={act!r} is not supported (the MLP's activation is a GELU: "
                              f"{', '.join(GELU_FORMS)})")
    return GELU_FORMS[act]


def gpt2_config(f: JsonFields) -> ModelConfig:
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
        tie_embeddings=f.boolean("tie_word_embeddings", True), positions="learned", norm="layer", mlp="gelu",
        gelu=gelu_form(f, "activation_function", "gelu_new"), qkv_bias=True, out_bias=True, mlp_bias=True,
        **special_ids(f, V),
    )


def llama_family_config(f: JsonFields, family: str) -> ModelConfig:
    """Llama's config.json keys, which every later family shares, plus what the family adds (see nanollm/config.py)."""
    C, nh, V = f.integer("hidden_size"), f.integer("num_attention_heads"), f.integer("vocab_size")
    n_kv = f.integer("num_key_value_heads", nh, nullable=True)
    require_multiple(nh, "num_attention_heads", n_kv, "num_key_value_heads", f.where)
    default_hs = {"qwen3": 128, "gemma": 256, "gemma2": 256, "gemma3_text": 256}.get(family)  # transformers' own
    if "head_dim" not in f and default_hs is None:  # the default head size divides the width among the heads
        require_multiple(C, "hidden_size", nh, "num_attention_heads", f.where)
    hs = f.integer("head_dim", default_hs or C // nh, nullable=True)
    n_layer = f.integer("num_hidden_layers")
    gemma = family in GEMMA
    bias = f.boolean("attention_bias", False)  # q, k, v and o together (Llama, Qwen3, Gemma, OLMo-2)
    fields = dict(
        arch=family, vocab_size=V, n_layer=n_layer, n_head=nh, n_kv_head=n_kv, n_embd=C, head_dim=hs,
        n_hidden=f.integer("intermediate_size"), max_seq_len=f.integer("max_position_embeddings"),
        norm_eps=f.number("rms_norm_eps", 1e-5 if family in ("phi3", "olmo2") else 1e-6, above=0, below=FLOAT32_MAX),
        tie_embeddings=f.boolean("tie_word_embeddings", gemma), mlp=mlp_kind(f, family), qkv_bias=bias,
        out_bias=bias, mlp_bias=f.boolean("mlp_bias", False), **special_ids(f, V),
    )
    if family == "qwen2":  # Qwen2 has biases on q, k and v, fixed in its code (not in config.json), none on o
        fields.update(qkv_bias=True, out_bias=False)
    if family in ("qwen3", "gemma3_text"):
        fields.update(qk_norm="head")
    if family == "olmo2":
        fields.update(norm_placement="post", qk_norm="full")
    if gemma:
        fields.update(embed_scale=math.sqrt(C))  # float32 in the forward pass, as transformers' float32 run
    if family in ("gemma2", "gemma3_text"):
        fields.update(norm_placement="sandwich", attn_scale=f.number("query_pre_attn_scalar", 256, above=0) ** -0.5,
                      attn_softcap=softcap(f, "attn_logit_softcapping", 50.0 if family == "gemma2" else None),
                      final_softcap=softcap(f, "final_logit_softcapping", 30.0 if family == "gemma2" else None))
        if family == "gemma3_text" and f.data.get("use_bidirectional_attention"):
            raise f.error("use_bidirectional_attention", "is true: nanollm runs causal language models only")
    window, layer_types = sliding_layers(f, family, n_layer)
    fields.update(sliding_window=window, layer_types=layer_types, **rope_fields(f, family, hs))
    return build_config(f, **fields)


def mlp_kind(f: JsonFields, family: str) -> str:
    """SwiGLU (silu) for every family but Gemma's GeGLU (GELU, tanh form), read from the activation key."""
    if family in GEMMA:
        key = "hidden_activation" if family != "gemma" else "hidden_act"
        act = f.string(key, "gelu_pytorch_tanh")
        # transformers runs Gemma 1's legacy "gelu" as the tanh form too (GemmaConfig says so when it loads one)
        if act in ("gelu_pytorch_tanh", "gelu_new") or (family == "gemma" and act == "gelu"):
            return "geglu"
        raise f.error(key, f"is {act!r}; Gemma's MLP is GeGLU with the tanh form of GELU (gelu_pytorch_tanh)")
    act = f.string("hidden_act", "silu")
    if act != "silu":
        raise f.error("hidden_act", f"is {act!r}, which is not supported ({family} uses silu)")
    return "swiglu"


def gptj_config(f: JsonFields) -> ModelConfig:
    """GPT-J keeps GPT-2's keys and adds RoPE on the first rotary_dim dims of each head (64 of 256), with the
    original interleaved pairs (permuted at load: llama_family_weights), base 10000 fixed in its code, and a parallel
    residual with one LayerNorm. Biases on the MLP and the output projection only."""
    C, nh, V = f.integer("n_embd"), f.integer("n_head"), f.integer("vocab_size")
    require_multiple(C, "n_embd", nh, "n_head", f.where)
    hs, rotary_dim = C // nh, f.integer("rotary_dim", 64)
    if rotary_dim > hs or rotary_dim % 2:  # transformers' sin/cos table would not fit the head: a shape error
        raise f.error("rotary_dim", f"is {rotary_dim}: RoPE rotates an even number of dims, 2 .. head size {hs}")
    return build_config(
        f, arch="gptj", vocab_size=V, n_layer=f.integer("n_layer"), n_head=nh, n_kv_head=nh, n_embd=C, head_dim=hs,
        n_hidden=f.integer("n_inner", 4 * C, nullable=True), max_seq_len=f.integer("n_positions", 2048),
        norm_eps=f.number("layer_norm_epsilon", 1e-5, above=0, below=FLOAT32_MAX),
        tie_embeddings=f.boolean("tie_word_embeddings", False), norm="layer", mlp="gelu",
        gelu=gelu_form(f, "activation_function", "gelu_new"), mlp_bias=True, parallel_residual=True, shared_norm=True,
        lm_head_bias=True, rope=Rope(theta=10000.0, rotary_dim=rotary_dim), **special_ids(f, V),
    )


# transformers' defaults for the classic families' keys that differ among them: (the epsilon's key, context, tied)
CLASSIC_DEFAULTS = {"gpt_neox": ("layer_norm_eps", 2048, False), "falcon": ("layer_norm_epsilon", 2048, True),
                    "phi": ("layer_norm_eps", 2048, False), "stablelm": ("layer_norm_eps", 4096, False)}


def classic_config(f: JsonFields, family: str) -> ModelConfig:
    """GPT-NeoX (Pythia), Falcon, phi and StableLM: Llama's size keys with LayerNorm (and its bias), head size
    hidden_size / num_attention_heads, and what each family adds (its own reader below)."""
    C, nh, V = f.integer("hidden_size"), f.integer("num_attention_heads"), f.integer("vocab_size")
    require_multiple(C, "hidden_size", nh, "num_attention_heads", f.where)
    eps_key, context, tied = CLASSIC_DEFAULTS[family]
    fields = dict(arch=family, vocab_size=V, n_layer=f.integer("num_hidden_layers"), n_head=nh, n_embd=C,
                  head_dim=C // nh, max_seq_len=f.integer("max_position_embeddings", context),
                  norm_eps=f.number(eps_key, 1e-5, above=0, below=FLOAT32_MAX),
                  tie_embeddings=f.boolean("tie_word_embeddings", tied), norm="layer", **special_ids(f, V))
    family_fields = {"gpt_neox": gpt_neox_fields, "falcon": falcon_fields, "phi": phi_fields,
                     "stablelm": stablelm_fields}[family](f, C, nh)
    return build_config(f, **fields, **family_fields, **rope_fields(f, family, C // nh))


def gpt_neox_fields(f: JsonFields, C: int, nh: int) -> dict:
    """GPT-NeoX (Pythia): exact GELU, biases everywhere (attention_bias for q/k/v and dense), a parallel residual
    with two norms unless use_parallel_residual is false (rotary_pct and rotary_emb_base: rope_fields)."""
    bias = f.boolean("attention_bias", True)
    return dict(n_kv_head=nh, n_hidden=f.integer("intermediate_size"), mlp="gelu",
                gelu=gelu_form(f, "hidden_act", "gelu"), qkv_bias=bias, out_bias=bias, mlp_bias=True,
                parallel_residual=f.boolean("use_parallel_residual", True))


def falcon_fields(f: JsonFields, C: int, nh: int) -> dict:
    """Falcon: exact GELU, `bias` on every linear layer or none, and three attention layouts (see ungroup_qkv):
    multi-query (7B: one key/value head), grouped (new_decoder_architecture, 40B: num_kv_heads), or one key/value
    head per query head. What transformers' FalconDecoderLayer cannot run (it fails with an AttributeError or an
    UnboundLocalError), and Falcon-RW's ALiBi, are refused by name."""
    if f.boolean("alibi", False):
        raise f.error("alibi", "is true: ALiBi attention biases (Falcon-RW) are not supported; nanollm's positions "
                               "are learned or RoPE")
    new_arch, parallel = f.boolean("new_decoder_architecture", False), f.boolean("parallel_attn", True)
    norms = falcon_norm_count(f)
    if new_arch:
        n_kv = f.integer("num_kv_heads", nh, nullable=True)
        require_multiple(nh, "num_attention_heads", n_kv, "num_kv_heads", f.where)
        if not parallel:
            raise f.error("parallel_attn", "is false with new_decoder_architecture: transformers' Falcon runs that "
                                           "only in parallel")
    else:
        multi_query = f.boolean("multi_query", True)
        n_kv = 1 if multi_query else nh
        if not multi_query and f.integer("num_kv_heads", nh, nullable=True) != nh:
            raise f.error("num_kv_heads", f"must equal num_attention_heads={nh} without multi_query or "
                                          f"new_decoder_architecture (one key/value head per query head)")
        if parallel and norms == 2:
            raise f.error("num_ln_in_parallel_attn", "is 2 without new_decoder_architecture: transformers' Falcon "
                                                     "has no such layer")
    bias = f.boolean("bias", False)
    return dict(n_kv_head=n_kv, n_hidden=f.integer("ffn_hidden_size", 4 * C, nullable=True), mlp="gelu",
                gelu=gelu_form(f, "activation", "gelu"), qkv_bias=bias, out_bias=bias, mlp_bias=bias,
                parallel_residual=new_arch or parallel, shared_norm=(new_arch or parallel) and norms == 1)


def falcon_norm_count(f: JsonFields) -> int:
    """Falcon's num_ln_in_parallel_attn: 2 (ln_attn and ln_mlp: Falcon-40B, 180B) or 1 (Falcon2-11B), null meaning 2
    with new_decoder_architecture (transformers' FalconDecoderLayer)."""
    norms = f.integer("num_ln_in_parallel_attn", None, nullable=True)
    if norms not in (None, 1, 2):
        f.refuse("num_ln_in_parallel_attn", norms, "1, 2 or null")
    return 2 if norms is None and f.boolean("new_decoder_architecture", False) else norms or 1


def phi_fields(f: JsonFields, C: int, nh: int) -> dict:
    """phi-1/1.5/2: the tanh GELU, biases everywhere (the output projection too), a parallel residual with one norm,
    and with qk_layernorm a LayerNorm of each head's q and k (one (hs,) weight and bias shared by the heads)."""
    n_kv = f.integer("num_key_value_heads", nh, nullable=True)
    require_multiple(nh, "num_attention_heads", n_kv, "num_key_value_heads", f.where)
    return dict(n_kv_head=n_kv, n_hidden=f.integer("intermediate_size"), mlp="gelu",
                gelu=gelu_form(f, "hidden_act", "gelu_new"), qkv_bias=True, out_bias=True, mlp_bias=True,
                lm_head_bias=True, parallel_residual=True, shared_norm=True,
                qk_norm="head" if f.boolean("qk_layernorm", False) else None)


def stablelm_fields(f: JsonFields, C: int, nh: int) -> dict:
    """StableLM (2): Llama's SwiGLU MLP with LayerNorm, q/k/v biases with use_qkv_bias (2-1.6B), a parallel residual
    with one norm with use_parallel_residual (2-12B). qk_layernorm (2-12B) gives every head its own LayerNorm weights,
    which nanollm's one (hs,) weight per q/k norm cannot hold: refused."""
    if f.boolean("qk_layernorm", False):
        raise f.error("qk_layernorm", "is true: a LayerNorm with its own weights for each head (StableLM-2-12B) is "
                                      "not supported (nanollm's q/k norm shares one weight among the heads)")
    n_kv = f.integer("num_key_value_heads", 32)  # transformers' default, whatever num_attention_heads is
    require_multiple(nh, "num_attention_heads", n_kv, "num_key_value_heads", f.where)
    if f.string("hidden_act", "silu") != "silu":
        raise f.error("hidden_act", f"is {f.data['hidden_act']!r}, which is not supported (StableLM uses silu)")
    parallel = f.boolean("use_parallel_residual", False)
    return dict(n_kv_head=n_kv, n_hidden=f.integer("intermediate_size"), qkv_bias=f.boolean("use_qkv_bias", False),
                parallel_residual=parallel, shared_norm=parallel)


def softcap(f: JsonFields, key: str, default: float | None) -> float | None:
    """Gemma 2's soft-capping values: a number > 0, or null for none."""
    if key in f.data and f.data[key] is None:
        return None
    return f.number(key, default, above=0) if key in f.data or default is not None else None


def sliding_layers(f: JsonFields, family: str, n_layer: int) -> tuple[int | None, tuple[str, ...]]:
    """(sliding_window, layer_types) as transformers decides them for the family:
      Mistral, Phi-3   every layer sliding when sliding_window is set (v0.1: 4096, v0.3: null)
      Qwen2, Qwen3     only with use_sliding_window, from layer max_window_layers on (off in released models)
      Gemma 2          every other layer sliding (the even ones), Gemma 3 five of every six (sliding_window_pattern)
    A `layer_types` list in the file (transformers 5 writes one) decides instead, for the families that read it."""
    if family not in ("mistral", "phi3", "qwen2", "qwen3", "gemma2", "gemma3_text"):
        return None, ()
    window = f.integer("sliding_window", 4096 if family in ("gemma2", "gemma3_text") else None, nullable=True)
    if family in ("qwen2", "qwen3") and not f.boolean("use_sliding_window", False):
        window = None
    if window is None:
        return None, ()
    if family in ("mistral", "phi3"):
        return window, ("sliding",) * n_layer
    if "layer_types" in f:
        return window, read_layer_types(f, n_layer)
    if family in ("qwen2", "qwen3"):
        first = f.integer("max_window_layers", 28, minimum=0)
        return window, tuple("sliding" if i >= first else "full" for i in range(n_layer))
    every = 2 if family == "gemma2" else f.integer("sliding_window_pattern", 6)
    return window, tuple("sliding" if (i + 1) % every else "full" for i in range(n_layer))


def read_layer_types(f: JsonFields, n_layer: int) -> tuple[str, ...]:
    """["sliding_attention", "full_attention", ...] -> ("sliding", "full", ...), one per layer."""
    value = f.data["layer_types"]
    names = {"sliding_attention": "sliding", "full_attention": "full"}
    if not isinstance(value, list) or len(value) != n_layer or not all(v in names for v in value):
        f.refuse("layer_types", value, f"a list of {n_layer} 'sliding_attention' / 'full_attention'")
    return tuple(names[v] for v in value)


def rope_fields(f: JsonFields, family: str, hs: int) -> dict:
    """rope (and Gemma 3's rope_local) from config.json.

    transformers >= 5 writes `rope_parameters` (theta inside; for Gemma 3 one dict per layer type); older files write
    rope_theta + rope_scaling (+ partial_rotary_factor, Phi-3's original_max_position_embeddings, Gemma 3's
    rope_local_base_freq) at the top level. transformers 5 accepts a theta or factor <= 0 or NaN with at most a
    logged warning (its RoPE validation only warns); the frequencies would then be NaN or infinite, so here they are
    errors.
    """
    params = f.mapping("rope_parameters")
    if family != "gemma3_text":
        theta_key = "rotary_emb_base" if family == "gpt_neox" else "rope_theta"
        return dict(rope=read_rope(params or f.mapping("rope_scaling") or JsonFields({}, f.where), f, hs,
                                   theta_key=theta_key, partial=PARTIAL_ROTARY.get(family, ("partial_rotary_factor",
                                                                                           1.0))))
    if params is not None and ("full_attention" in params or "sliding_attention" in params):
        full, local = params.mapping("full_attention"), params.mapping("sliding_attention")
        return dict(rope=read_rope(full or JsonFields({}, f.where), f, hs, 1e6),
                    rope_local=read_rope(local or JsonFields({}, f.where), f, hs, 10000.0, theta_key=None))
    local_theta = f.number("rope_local_base_freq", 10000.0, above=0)  # older files: scaling is the global layers'
    return dict(rope=read_rope(params or f.mapping("rope_scaling") or JsonFields({}, f.where), f, hs, 1e6),
                rope_local=Rope(theta=local_theta, rotary_dim=hs))


# The share of each head that RoPE rotates: the top-level key of older files (transformers 5 writes
# rope_parameters.partial_rotary_factor) and transformers' default. Falcon rotates the whole head whatever the file
# says (its RoPE ignores the key): None.
PARTIAL_ROTARY = {"gpt_neox": ("rotary_pct", 0.25), "phi": ("partial_rotary_factor", 0.5),
                  "stablelm": ("partial_rotary_factor", 0.25), "falcon": None}


def read_rope(rope: JsonFields, f: JsonFields, hs: int, theta_default: float = 10000.0,
              theta_key: str | None = "rope_theta", partial: tuple[str, float] | None = ("partial_rotary_factor", 1.0)
              ) -> Rope:
    """One Rope from its dict (`rope`), falling back on the top-level keys of older files (`f`): theta_key, and
    partial (the key of the share of each head that rotates, and its default)."""
    if "rope_theta" in rope:
        theta = rope.number("rope_theta", above=0)
    else:
        theta = f.number(theta_key, theta_default, above=0) if theta_key else theta_default
    if partial is None:  # Falcon: the whole head
        where, key, share = f, None, 1.0
    else:
        where, key = (rope, "partial_rotary_factor") if "partial_rotary_factor" in rope else (f, partial[0])
        share = where.number(key, partial[1], above=0)
    rotary_dim = int(hs * share)  # as transformers: int(head_dim * partial_rotary_factor)
    if share == 1 and hs % 2:
        raise CheckpointError(f"{f.where}: head_dim={hs} is odd; RoPE rotates pairs of dimensions (head_dim is "
                              f"hidden_size / num_attention_heads when config.json does not set it)")
    if share > 1 or rotary_dim < 2 or rotary_dim % 2:
        raise where.error(key, f"is {share:g}: {hs} x {share:g} must be an even number of dims, 2 .. {hs}")
    type_key = "rope_type" if "rope_type" in rope else "type"
    rope_type = rope.string(type_key, "default")
    if rope_type in ("su", "yarn") and f.data.get("model_type") == "phi3":
        rope_type = "longrope"  # Phi-3's first files called it so; transformers reads them as longrope
    if rope_type == "default":
        scaling = None
    elif rope_type == "linear":
        scaling = LinearScaling(factor=rope.number("factor", above=0))
    elif rope_type == "llama3":
        low, high = rope.number("low_freq_factor", above=0), rope.number("high_freq_factor", above=0)
        if not high > low:  # the blend between the two divides by high - low (transformers warns; here an error)
            raise rope.error("high_freq_factor", f"must be > low_freq_factor, got {high:g} <= {low:g}")
        scaling = Llama3Scaling(factor=rope.number("factor", above=0), low_freq_factor=low, high_freq_factor=high,
                                original_max_position_embeddings=rope.integer("original_max_position_embeddings"))
    elif rope_type == "longrope":
        scaling = long_rope(rope, f, rotary_dim)
    else:
        raise rope.error(type_key, f"is {rope_type!r}, which is not supported (default, linear, llama3 and longrope "
                                   f"are)")
    return Rope(theta=theta, rotary_dim=rotary_dim, scaling=scaling)


def long_rope(rope: JsonFields, f: JsonFields, rotary_dim: int) -> LongRopeScaling:
    """LongRoPE's factors, and its attention factor as transformers derives it when the file gives none: from
    factor = max_position_embeddings / original_max_position_embeddings (Phi-3 stores the original context so),
    sqrt(1 + ln(factor) / ln(original)), or 1 when factor <= 1."""
    original = (rope.integer("original_max_position_embeddings") if "original_max_position_embeddings" in rope
                else f.integer("original_max_position_embeddings"))
    if "attention_factor" in rope:
        attention = rope.number("attention_factor", above=0)
    else:
        factor = rope.number("factor", above=0) if "factor" in rope else (
            f.integer("max_position_embeddings") / original)
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    half = rotary_dim // 2
    return LongRopeScaling(short_factor=rope.numbers("short_factor", half),
                           long_factor=rope.numbers("long_factor", half),
                           original_max_position_embeddings=original, attention_factor=attention)


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
    LongRoPE is checked with both its factor sets.
    """
    for rope in {cfg.rope, cfg.rope_local} - {None}:
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            finite = all(np.isfinite(frequencies(rope, seq_len)).all() for seq_len in (1, cfg.max_seq_len))
        if not finite:
            factor = getattr(rope.scaling, "factor", None)
            raise CheckpointError(f"{where}: rope_theta={rope.theta:g}"
                                  + (f" with rope factor {factor:g}" if factor is not None else "")
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
        if full not in self.ckpt:  # name it as this checkpoint would have: with its prefix, or bare (lm_head)
            bare = f" (or {name!r})" if self.prefix else ""
            raise CheckpointError(f"{self.where}: missing tensor {self.prefix + name!r}{bare}")
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


def output_projection(cfg: ModelConfig, src: TensorSource, name: str = "lm_head"):
    """lm_head (C, V), or None when tied to the token embedding (some files still save a copy: not needed)."""
    if cfg.tie_embeddings:
        src.ignore(name + ".weight")
        return None
    return src.take(name + ".weight", (cfg.n_embd, cfg.vocab_size), transpose=True)


def gpt2_weights(cfg: ModelConfig, src: TensorSource) -> ModelWeights:
    C, H, V = cfg.n_embd, cfg.n_hidden, cfg.vocab_size
    layers = []
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        layers.append(LayerWeights(
            attn_norm_w=src.take(p + "ln_1.weight", (C,)), attn_norm_b=src.take(p + "ln_1.bias", (C,)),
            w_qkv=src.take(p + "attn.c_attn.weight", (C, 3 * C)), b_qkv=src.take(p + "attn.c_attn.bias", (3 * C,)),
            w_o=src.take(p + "attn.c_proj.weight", (C, C)), b_o=src.take(p + "attn.c_proj.bias", (C,)),
            mlp_norm_w=src.take(p + "ln_2.weight", (C,)), mlp_norm_b=src.take(p + "ln_2.bias", (C,)),
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


# The norms around each branch, by where they sit -> their tensor names. The same name means different things:
# Llama's post_attention_layernorm normalises the MLP's input, Gemma 2/3's and OLMo-2's the attention's output.
NORM_NAMES = {
    "pre": dict(attn_norm="input_layernorm", mlp_norm="post_attention_layernorm"),
    "sandwich": dict(attn_norm="input_layernorm", attn_post_norm="post_attention_layernorm",
                     mlp_norm="pre_feedforward_layernorm", mlp_post_norm="post_feedforward_layernorm"),
    "post": dict(attn_post_norm="post_attention_layernorm", mlp_post_norm="post_feedforward_layernorm"),
}

# Every family after GPT-2 fills the same slots from its own tensor names: Llama's, which most keep, or the family's
# below (a layer's tensors are named after its prefix, `{i}` standing for the layer). q, k and v are stored apart
# (q, k, v), as one q|k|v tensor (qkv: Phi-3) or as one tensor grouped by key/value head (grouped_qkv: see
# ungroup_qkv). GPT-J's and Falcon's names start with `transformer.`, which TensorSource adds (as for GPT-2).
LLAMA_NAMES = dict(embed="model.embed_tokens", layer="model.layers.{i}.", q="self_attn.q_proj", k="self_attn.k_proj",
                   v="self_attn.v_proj", o="self_attn.o_proj", gate="mlp.gate_proj", up="mlp.up_proj",
                   down="mlp.down_proj", q_norm="self_attn.q_norm", k_norm="self_attn.k_norm", norm_f="model.norm",
                   lm_head="lm_head")
TENSOR_NAMES = {
    "phi3": dict(LLAMA_NAMES, qkv="self_attn.qkv_proj", gate_up="mlp.gate_up_proj"),
    "phi": dict(LLAMA_NAMES, o="self_attn.dense", up="mlp.fc1", down="mlp.fc2", q_norm="self_attn.q_layernorm",
                k_norm="self_attn.k_layernorm", norm_f="model.final_layernorm"),
    "gpt_neox": dict(embed="gpt_neox.embed_in", layer="gpt_neox.layers.{i}.", grouped_qkv="attention.query_key_value",
                     o="attention.dense", up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h",
                     norm_f="gpt_neox.final_layer_norm", lm_head="embed_out"),
    "gptj": dict(embed="wte", layer="h.{i}.", q="attn.q_proj", k="attn.k_proj", v="attn.v_proj", o="attn.out_proj",
                 up="mlp.fc_in", down="mlp.fc_out", norm_f="ln_f", lm_head="lm_head"),
    "falcon": dict(embed="word_embeddings", layer="h.{i}.", grouped_qkv="self_attention.query_key_value",
                   o="self_attention.dense", up="mlp.dense_h_to_4h", down="mlp.dense_4h_to_h", norm_f="ln_f",
                   lm_head="lm_head"),
}
# Buffers older files saved beside the weights, recomputed by every reader: RoPE's frequencies, GPT-NeoX's and
# GPT-J's causal masks (attention.bias, attention.masked_bias; attn.bias, attn.masked_bias).
SKIPPABLE = (".rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias", ".attn.bias", ".attn.masked_bias")


def norm_names(cfg: ModelConfig) -> dict:
    """The norms of each layer -> their tensor names. With shared_norm (GPT-J, phi, Falcon-7B, StableLM-2-12B) there
    is no mlp_norm: the MLP reads the attention's normalised input."""
    if cfg.arch == "gptj":
        return dict(attn_norm="ln_1")
    if cfg.shared_norm:
        return dict(attn_norm="input_layernorm")
    if cfg.arch == "falcon" and cfg.parallel_residual:  # new_decoder_architecture with two norms (Falcon-40B)
        return dict(attn_norm="ln_attn", mlp_norm="ln_mlp")
    return NORM_NAMES[cfg.norm_placement]


def ungroup_qkv(a: np.ndarray, n_kv: int, hs: int) -> np.ndarray:
    """A fused projection's outputs grouped by key/value head -> nanollm's q|k|v. (..., (nh + 2*n_kv) * hs) -> same.

    GPT-NeoX's and Falcon's query_key_value hold, for each key/value head in turn, the g = nh / n_kv query heads
    that read it, then its key, then its value (transformers' `_split_heads`):
      GPT-NeoX, Falcon without multi_query  n_kv = nh, g = 1: (q0 k0 v0)(q1 k1 v1)...
      Falcon-7B (multi_query)               n_kv = 1: (q0 q1 ... k v), already q|k|v
      Falcon-40B (new_decoder_architecture) (q0 .. q_{g-1} k0 v0)(q_g .. q_{2g-1} k1 v1)...
    Example, nh = n_kv = 2, hs = 1: [q0 k0 v0 q1 k1 v1] -> [q0 q1 k0 k1 v0 v1]. Works on weights (C, out) and biases.
    """
    lead = a.shape[:-1]
    groups = a.reshape(*lead, n_kv, -1, hs)  # (..., n_kv, g + 2, hs)
    q, k, v = groups[..., :-2, :], groups[..., -2, :], groups[..., -1, :]  # (..., n_kv, g, hs), (..., n_kv, hs) x2
    return np.concatenate([t.reshape(*lead, -1) for t in (q, k, v)], axis=-1)


def to_rotate_half(a: np.ndarray, n_heads: int, rotary_dim: int) -> np.ndarray:
    """Outputs (..., n_heads * hs) with RoPE's interleaved pairs -> rotate-half pairs, in the first rotary_dim dims
    of each head (the rest stay). Within them, (re0, im0, re1, im1, ...) -> (re0, re1, ..., im0, im1, ...).

    GPT-J (like Meta's original Llama and llama2.c) rotates pairs (2j, 2j+1); nanollm's rope op, as Hugging Face's
    `rotate_half`, rotates (j, j + r/2). Reordering the q and k outputs alike leaves every q.k unchanged, so the
    one op computes GPT-J's attention (weights_tools/llama2c.py explains it at length; its to_rotate_half_order is
    this with rotary_dim = hs, on (out, in) rows). Example, one head, rotary_dim 4 of hs 6: [a0 a1 b0 b1 c d] ->
    [a0 b0 a1 b1 c d].
    """
    lead = a.shape[:-1]
    heads = a.reshape(*lead, n_heads, -1)  # (..., n, hs)
    pairs = heads[..., :rotary_dim].reshape(*lead, n_heads, rotary_dim // 2, 2)  # (..., n, r/2, 2): (re, im)
    rotated = pairs.swapaxes(-1, -2).reshape(*lead, n_heads, rotary_dim)  # (..., n, r): re0 re1 ... im0 im1 ...
    return np.concatenate([rotated, heads[..., rotary_dim:]], axis=-1).reshape(a.shape)


def llama_family_weights(cfg: ModelConfig, src: TensorSource) -> ModelWeights:
    """Every family after GPT-2: the slots of LayerWeights under the family's tensor names (TENSOR_NAMES, Llama's by
    default) and norms (norm_names), with the layout changes each needs:
    Phi-3's fused projections split, GPT-NeoX's and Falcon's grouped q/k/v ungrouped, GPT-J's RoPE pairs reordered,
    Gemma's (1 + w) norms folded."""
    names, norms = TENSOR_NAMES.get(cfg.arch, LLAMA_NAMES), norm_names(cfg)
    C, H, V, hs = cfg.n_embd, cfg.n_hidden, cfg.vocab_size, cfg.head_dim
    q_dim, kv_dim = cfg.n_head * hs, cfg.n_kv_head * hs
    offset = 1.0 if cfg.arch in GEMMA else 0.0  # Gemma's RMSNorm scales by (1 + w): folded into w here

    def norm(name: str, width: int = C):
        """(weight, bias) of a norm: the bias is LayerNorm's only."""
        return (src.take(name + ".weight", (width,)) + np.float32(offset),
                src.take(name + ".bias", (width,)) if cfg.norm == "layer" else None)

    def linear(name: str, n_in: int, n_out: int, bias: bool):
        """(weight (in, out), bias (out,) or None) of an nn.Linear, stored (out, in)."""
        return (src.take(name + ".weight", (n_in, n_out), transpose=True),
                src.take(name + ".bias", (n_out,)) if bias else None)

    def qkv(p: str):
        if "grouped_qkv" in names:
            w, b = linear(p + names["grouped_qkv"], C, cfg.qkv_dim, cfg.qkv_bias)
            return ungroup_qkv(w, cfg.n_kv_head, hs), None if b is None else ungroup_qkv(b, cfg.n_kv_head, hs)
        if "qkv" in names:  # stored fused, q|k|v
            return linear(p + names["qkv"], C, cfg.qkv_dim, cfg.qkv_bias)
        parts = [linear(p + names[x], C, width, cfg.qkv_bias) for x, width in zip("qkv", (q_dim, kv_dim, kv_dim))]
        return (np.concatenate([w for w, _ in parts], axis=1),  # (C, q_dim + 2*kv_dim)
                np.concatenate([b for _, b in parts]) if cfg.qkv_bias else None)

    def rope_pairs(a):
        """GPT-J's q and k outputs, from interleaved RoPE pairs to rotate-half (to_rotate_half); v kept."""
        if cfg.arch != "gptj" or a is None:
            return a
        r = cfg.rope.rotary_dim
        q, k, v = a[..., :q_dim], a[..., q_dim : q_dim + kv_dim], a[..., q_dim + kv_dim :]
        return np.concatenate([to_rotate_half(q, cfg.n_head, r), to_rotate_half(k, cfg.n_kv_head, r), v], axis=-1)

    def gate_up(p: str):
        if "gate_up" in names:  # stored fused: gate then up
            both = src.take(p + names["gate_up"] + ".weight", (C, 2 * H), transpose=True)  # (C, 2H)
            return both[:, :H].copy(), both[:, H:].copy()
        gate = src.take(p + names["gate"] + ".weight", (C, H), transpose=True) if cfg.mlp != "gelu" else None
        return gate, src.take(p + names["up"] + ".weight", (C, H), transpose=True)

    q_norm_width, k_norm_width = (hs, hs) if cfg.qk_norm == "head" else (q_dim, kv_dim)
    none = (None, None)
    layers = []
    for i in range(cfg.n_layer):
        p = names["layer"].format(i=i)
        gate, up = gate_up(p)
        w_qkv, b_qkv = qkv(p)
        n = {slot: norm(p + name) for slot, name in norms.items()}
        (attn_norm_w, attn_norm_b), (mlp_norm_w, mlp_norm_b) = n.get("attn_norm", none), n.get("mlp_norm", none)
        q_norm, k_norm = (norm(p + names["q_norm"], q_norm_width), norm(p + names["k_norm"], k_norm_width)) \
            if cfg.qk_norm else (none, none)
        w_o, b_o = linear(p + names["o"], q_dim, C, cfg.out_bias)
        w_down, b_down = linear(p + names["down"], H, C, cfg.mlp_bias)
        layers.append(LayerWeights(
            attn_norm_w=attn_norm_w, attn_norm_b=attn_norm_b, w_qkv=rope_pairs(w_qkv), b_qkv=rope_pairs(b_qkv),
            w_o=w_o, b_o=b_o, mlp_norm_w=mlp_norm_w, mlp_norm_b=mlp_norm_b, w_up=up,
            b_up=src.take(p + names["up"] + ".bias", (H,)) if cfg.mlp_bias else None, w_gate=gate,
            w_down=w_down, b_down=b_down,
            attn_post_norm_w=n.get("attn_post_norm", none)[0], mlp_post_norm_w=n.get("mlp_post_norm", none)[0],
            q_norm_w=q_norm[0], q_norm_b=q_norm[1], k_norm_w=k_norm[0], k_norm_b=k_norm[1],
        ))
    if cfg.mlp_bias and cfg.mlp != "gelu":
        for i in range(cfg.n_layer):  # SwiGLU's gate bias has no slot in LayerWeights: refuse rather than drop it
            if names["layer"].format(i=i) + names["gate"] + ".bias" in src:
                raise CheckpointError(f"{src.where}: gate_proj biases are not supported")
    norm_f_w, norm_f_b = norm(names["norm_f"])
    w = ModelWeights(
        tok_emb=src.take(names["embed"] + ".weight", (V, C)), pos_emb=None, layers=layers, norm_f_w=norm_f_w,
        norm_f_b=norm_f_b, lm_head=output_projection(cfg, src, names["lm_head"]),
        b_lm_head=src.take(names["lm_head"] + ".bias", (V,)) if cfg.lm_head_bias else None,
    )
    src.check_all_used(skippable=SKIPPABLE)
    return w


def load_hf_checkpoint(path) -> tuple[ModelConfig, ModelWeights]:
    """A Hugging Face model directory (config.json + safetensors or pytorch_model.bin weights, single or sharded,
    weights_tools/checkpoint.py) -> (config, float32 weights)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a model directory")
    cfg = config_from_hf(read_json(path / "config.json"), where=str(path / "config.json"))
    src = TensorSource(checkpoint.open_weights(path), where=str(path))
    # Every tensor becomes float32 (F16/BF16 are upcast copies, Llama's are transposed copies): refuse a checkpoint
    # larger than memory before the first copy, rather than fail, or be killed, halfway through.
    check_fits(4 * sum(math.prod(src.ckpt.info(name).shape) for name in src.ckpt.keys()),
               f"{path}: the weights as float32")
    if cfg.arch == "gpt2":
        return cfg, gpt2_weights(cfg, src)
    weights = llama_family_weights(cfg, src)
    check_rope(cfg, str(path / "config.json"))
    return cfg, weights


if __name__ == "__main__":  # python -m weights_tools.convert DIR OUT: a safetensors copy (weights_tools/checkpoint.py)
    sys.exit(checkpoint.main())
