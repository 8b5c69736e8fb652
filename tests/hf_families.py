"""Random-weight checkpoints of every family nanollm runs, written by transformers from its own config classes.

Each strategy draws a shrunk configuration with the keys and values of the family's real config.json (Qwen2.5's
q/k/v biases and rope_theta 1e6, Phi-3.5's LongRoPE factors and Phi-4-mini's partial rotary factor, Gemma's head
size 256 and multi-query heads, Gemma 2's soft-capping, Gemma 3's sliding/full layer pattern and two RoPE bases, ...),
and of the classic families (Pythia's rotary_pct and two-norm parallel residual, GPT-J's interleaved partial RoPE,
Falcon's three attention layouts, phi-2's partial_rotary_factor 0.4 and output bias, StableLM-2's options).
Windows are a few tokens long so the tests' prompts pass them. `build_family` writes the checkpoint in the family's
real storage dtype with save_pretrained and returns the float32, eager-attention transformers model reading the same
bytes: the reference for logits and greedy generation. transformers 5 writes RoPE's settings as rope_parameters;
`released=True` rewrites them as the released config.json files of the classic families have them (Pythia's
rotary_pct and rotary_emb_base, phi-2's partial_rotary_factor and rope_theta at the top level), before either reads it.
"""
import json
from pathlib import Path

import torch
from hypothesis import strategies as st
from transformers import AutoConfig, AutoModelForCausalLM

from tests.hf_models import DTYPES

SPECIAL = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
FAMILIES = ("qwen2", "qwen3", "mistral", "phi3", "gemma", "gemma2", "gemma3_text", "olmo2")
CLASSIC_FAMILIES = ("gpt_neox", "gptj", "falcon", "phi", "stablelm")


@st.composite
def shape(draw, head_dims=(8, 16), kv_groups=(1, 2), min_layers=1):
    """The sizes every family shares; heads of a group share a key/value head (grouped-query attention)."""
    n_kv = draw(st.sampled_from([1, 2]))
    return dict(num_hidden_layers=draw(st.integers(min_layers, min_layers + 1)), num_key_value_heads=n_kv,
                num_attention_heads=n_kv * draw(st.sampled_from(kv_groups)),
                hidden_size=draw(st.sampled_from([32, 48])),
                intermediate_size=draw(st.sampled_from([40, 64])), vocab_size=draw(st.integers(60, 120)),
                max_position_embeddings=128, head_dim=draw(st.sampled_from(head_dims)), **SPECIAL)


def rope(theta, **scaling):
    return {"rope_type": "default", "rope_theta": theta, **scaling}


@st.composite
def qwen2(draw):
    """Qwen2 / Qwen2.5: q/k/v biases (fixed in the code), theta 1e6; the sliding window is off in the released models
    (use_sliding_window false) and starts at layer max_window_layers when on."""
    s = draw(shape())
    s.pop("head_dim")  # Qwen2 derives it: hidden_size / num_attention_heads
    sliding = draw(st.booleans())
    return dict(s, rope_parameters=rope(1e6), rms_norm_eps=1e-6, tie_word_embeddings=draw(st.booleans()),
                use_sliding_window=sliding, sliding_window=draw(st.sampled_from([5, 9])), max_window_layers=1)


@st.composite
def qwen3(draw):
    """Qwen3: head_dim on its own (not hidden / heads), RMSNorm of each head's q and k."""
    return dict(draw(shape(head_dims=(8, 16, 24))), rope_parameters=rope(1e6), rms_norm_eps=1e-6,
                tie_word_embeddings=draw(st.booleans()), attention_bias=False)


@st.composite
def mistral(draw):
    """Mistral: v0.1 slides a 4096-key window over every layer (shrunk here), v0.3 has none (null)."""
    return dict(draw(shape()), rope_parameters=rope(draw(st.sampled_from([1e4, 1e6]))),
                sliding_window=draw(st.sampled_from([4, 7, None])), tie_word_embeddings=False)


@st.composite
def phi3(draw):
    """Phi-3 / 3.5 / 4-mini: fused qkv_proj and gate_up_proj; mini-4k's window; LongRoPE (3.5, 4-mini) with its
    short and long factor sets (the long one once a sequence passes original_max_position_embeddings, 16 here);
    Phi-4-mini rotates only part of each head (partial_rotary_factor 0.75)."""
    s = draw(shape(head_dims=(16,)))
    hs = s["hidden_size"] // s["num_attention_heads"]
    s.pop("head_dim")  # Phi-3 derives it
    partial = draw(st.sampled_from([1.0, 0.75, 0.5])) if hs % 8 == 0 else 1.0
    half = int(hs * partial) // 2
    longrope = draw(st.booleans())
    factors = st.lists(st.floats(1.0, 4.0), min_size=half, max_size=half)
    rope_parameters = rope(1e4, partial_rotary_factor=partial)
    if longrope:
        rope_parameters.update(rope_type="longrope", short_factor=draw(factors), long_factor=draw(factors))
    return dict(s, rope_parameters=rope_parameters, original_max_position_embeddings=16,
                sliding_window=draw(st.sampled_from([6, None])), rms_norm_eps=1e-5, tie_word_embeddings=False)


@st.composite
def gemma(draw):
    """Gemma: GeGLU, embeddings times sqrt(hidden), RMSNorm (1 + w), head size 256, multi-query on 2B, tied head."""
    return dict(draw(shape(head_dims=(16, 256), kv_groups=(1, 4))), hidden_act="gelu_pytorch_tanh",
                rope_parameters=rope(1e4), rms_norm_eps=1e-6, tie_word_embeddings=True)


@st.composite
def gemma2(draw):
    """Gemma 2: four norms per layer, soft-capping of attention scores (50) and final logits (30), the attention
    scale from query_pre_attn_scalar, a sliding window on every other layer."""
    return dict(draw(shape(head_dims=(16, 32), min_layers=2)), hidden_activation="gelu_pytorch_tanh",
                rope_parameters=rope(1e4), query_pre_attn_scalar=draw(st.sampled_from([16, 24])),
                attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=draw(st.sampled_from([4, 7])),
                tie_word_embeddings=True)


@st.composite
def gemma3_text(draw):
    """Gemma 3 (text): q/k norm, sliding layers with their own RoPE base (1e4) between full layers (1e6, with
    linear scaling on the larger models), the pattern given by layer_types."""
    s = draw(shape(head_dims=(16, 256), min_layers=2))
    layer_types = draw(st.lists(st.sampled_from(["sliding_attention", "full_attention"]),
                                min_size=s["num_hidden_layers"], max_size=s["num_hidden_layers"]))
    full = rope(1e6, rope_type="linear", factor=8.0) if draw(st.booleans()) else rope(1e6)
    return dict(s, hidden_activation="gelu_pytorch_tanh", layer_types=layer_types,
                rope_parameters={"full_attention": full, "sliding_attention": rope(1e4)},
                query_pre_attn_scalar=draw(st.sampled_from([16, 256])), sliding_window=draw(st.sampled_from([4, 7])),
                tie_word_embeddings=True)


@st.composite
def olmo2(draw):
    """OLMo-2: norms after attention and MLP (before the residual add) instead of before; q/k norm over the whole
    projection width."""
    s = draw(shape())
    s.pop("head_dim")
    return dict(s, rope_parameters=rope(5e5), rms_norm_eps=1e-6, tie_word_embeddings=False, attention_bias=False)


def classic_shape(draw, head_sizes=(8, 16)):
    """The sizes of the classic families, whose head size is hidden_size / num_attention_heads."""
    hs, nh = draw(st.sampled_from(head_sizes)), draw(st.sampled_from([2, 4]))
    return dict(hidden_size=hs * nh, num_attention_heads=nh, num_hidden_layers=draw(st.integers(1, 2)),
                vocab_size=draw(st.integers(60, 120)), max_position_embeddings=128, **SPECIAL)


@st.composite
def gpt_neox(draw):
    """Pythia (GPT-NeoX): RoPE on a quarter of each head (rotary_pct 0.25; GPT-NeoX-20B too, 1.0 in some fine-tunes),
    parallel residual with two norms (use_parallel_residual true; false in some), exact GELU (gelu_fast: 20B)."""
    return dict(classic_shape(draw), intermediate_size=draw(st.sampled_from([40, 64])),
                rotary_pct=draw(st.sampled_from([0.25, 0.5, 1.0])), rotary_emb_base=10000,
                use_parallel_residual=draw(st.booleans()), hidden_act=draw(st.sampled_from(["gelu", "gelu_fast"])),
                attention_bias=draw(st.booleans()), layer_norm_eps=1e-5, tie_word_embeddings=False)


@st.composite
def gptj(draw):
    """GPT-J: GPT-2's keys, RoPE with interleaved pairs on the first rotary_dim dims of each head (64 of 256)."""
    s = classic_shape(draw)
    hs = s["hidden_size"] // s["num_attention_heads"]
    return dict(n_embd=s["hidden_size"], n_head=s["num_attention_heads"], n_layer=s["num_hidden_layers"],
                vocab_size=s["vocab_size"], n_positions=128, rotary_dim=draw(st.sampled_from([2, 4, hs // 2, hs])),
                n_inner=draw(st.sampled_from([40, None])), activation_function="gelu_new", layer_norm_epsilon=1e-5,
                tie_word_embeddings=False, **SPECIAL)


@st.composite
def falcon(draw):
    """Falcon's layouts: 7B (multi_query, one shared norm, parallel), 40B/180B (new_decoder_architecture: grouped
    key/value heads, ln_attn and ln_mlp), Falcon2-11B (new_decoder_architecture, num_ln_in_parallel_attn 1), and
    one key/value head per query head in sequence (Falcon-RW's layout, without its ALiBi)."""
    s = classic_shape(draw)
    variant = draw(st.sampled_from(["7b", "40b", "11b", "sequential"]))
    layout = {"7b": dict(multi_query=True, parallel_attn=True),
              "40b": dict(new_decoder_architecture=True, num_kv_heads=draw(st.sampled_from([1, 2]))),
              "11b": dict(new_decoder_architecture=True, num_kv_heads=2, num_ln_in_parallel_attn=1),
              "sequential": dict(multi_query=False, parallel_attn=False)}[variant]
    return dict(s, **layout, alibi=False, bias=draw(st.booleans()), ffn_hidden_size=draw(st.sampled_from([40, 64])),
                activation="gelu", rope_theta=draw(st.sampled_from([1e4, 5e5])), layer_norm_epsilon=1e-5,
                tie_word_embeddings=draw(st.booleans()))


@st.composite
def phi(draw):
    """phi-2: RoPE on 0.4 of each head (32 of 80; head sizes here where 0.4 of it is even), biases everywhere, the
    output projection's included, one norm for the parallel branches; qk_layernorm (false in the released phi)."""
    return dict(classic_shape(draw, head_sizes=(10, 16, 20)), intermediate_size=draw(st.sampled_from([40, 64])),
                partial_rotary_factor=0.4, rope_theta=10000.0, hidden_act="gelu_new", layer_norm_eps=1e-5,
                qk_layernorm=draw(st.booleans()), tie_word_embeddings=False)


@st.composite
def stablelm(draw):
    """StableLM-2: SwiGLU with LayerNorm, RoPE on a quarter of each head, q/k/v biases (1.6B), a parallel residual
    with one norm and grouped key/value heads (12B, whose per-head q/k norms nanollm refuses)."""
    s = classic_shape(draw)
    return dict(s, num_key_value_heads=draw(st.sampled_from([1, s["num_attention_heads"]])),
                intermediate_size=draw(st.sampled_from([40, 64])), partial_rotary_factor=0.25, rope_theta=10000.0,
                use_qkv_bias=draw(st.booleans()), use_parallel_residual=draw(st.booleans()), qk_layernorm=False,
                hidden_act="silu", layer_norm_eps=1e-5, tie_word_embeddings=False)


STRATEGIES = {"qwen2": qwen2, "qwen3": qwen3, "mistral": mistral, "phi3": phi3, "gemma": gemma, "gemma2": gemma2,
              "gemma3_text": gemma3_text, "olmo2": olmo2, "gpt_neox": gpt_neox, "gptj": gptj, "falcon": falcon,
              "phi": phi, "stablelm": stablelm}
# What the released checkpoints hold (GPT-J: its float16 branch; phi-2: float16): bfloat16 for all the others.
STORAGE = {"olmo2": "F32", "gpt_neox": "F16", "gptj": "F16", "phi": "F16"}


# The top-level keys of the released config.json files for RoPE's base and the share of each head it rotates.
RELEASED_ROPE_KEYS = {"gpt_neox": ("rotary_emb_base", "rotary_pct"), "falcon": ("rope_theta", None),
                      "phi": ("rope_theta", "partial_rotary_factor"),
                      "stablelm": ("rope_theta", "partial_rotary_factor")}


def as_released(directory: Path, family: str) -> None:
    """Rewrite config.json's rope_parameters as the top-level keys of the family's released files."""
    path = directory / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    rope = config.pop("rope_parameters")
    theta_key, share_key = RELEASED_ROPE_KEYS[family]
    config[theta_key] = rope["rope_theta"]
    if share_key is not None:
        config[share_key] = rope["partial_rotary_factor"]
    path.write_text(json.dumps(config), encoding="utf-8")


def build_family(directory, family: str, config: dict, seed: int = 0, released: bool = False):
    """Write the checkpoint (family's storage dtype) -> (directory, float32 eager transformers model on its bytes).
    released: config.json with the released files' RoPE keys (RELEASED_ROPE_KEYS), for the families listed there."""
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(family, **config)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    with torch.no_grad():  # spread the logits (no near-ties for argmax) and randomise norms, biases, scales
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0.0, 0.15)
    model = model.to(DTYPES[STORAGE.get(family, "BF16")]).eval()
    model.save_pretrained(directory, safe_serialization=True)
    if released:
        as_released(Path(directory), family)
    reference = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager")
    return Path(directory), reference.eval()
