"""Random-weight GPT-2 and Llama checkpoints written by transformers itself: the reference for logits and generation.

`build_checkpoint(directory, arch, **options)` writes `config.json` + safetensors with `save_pretrained(...,
safe_serialization=True)` and returns the float32 transformers model those files describe, so a test compares nanollm
with transformers on exactly the same bytes.
"""
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass(frozen=True)
class Options:
    """One checkpoint's shape. Defaults are a tiny model; tests draw the fields with hypothesis."""

    arch: str = "gpt2"  # "gpt2" or "llama"
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int = 4  # Llama only (GPT-2 has no grouped-query heads)
    head_dim: int = 8
    vocab_size: int = 97
    n_positions: int = 160
    tied: bool = True
    rope_theta: float = 10000.0
    llama3_scaling: bool = False
    attention_bias: bool = False
    storage: str = "F32"  # dtype the safetensors files hold: F32, F16 or BF16
    sharded: bool = False
    init_std: float = 0.15  # larger than transformers' 0.02 so logits spread out and argmax has no near-ties
    seed: int = 0
    class_special_ids: bool = False  # True: bos/eos left at the config class's defaults (GPT2Config: 50256, whatever
    # vocab_size is, as every GPT2Config(vocab_size=N) writes them); False: bos 1, eos 2


def hf_config(o: Options):
    C = o.n_head * o.head_dim
    special = {} if o.class_special_ids else dict(bos_token_id=1, eos_token_id=2, pad_token_id=None)
    if o.arch == "gpt2":
        return GPT2Config(vocab_size=o.vocab_size, n_positions=o.n_positions, n_embd=C, n_layer=o.n_layer,
                          n_head=o.n_head, tie_word_embeddings=o.tied, initializer_range=o.init_std, **special)
    rope = {"rope_type": "default", "rope_theta": o.rope_theta}
    if o.llama3_scaling:
        rope = {"rope_type": "llama3", "rope_theta": o.rope_theta, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    return LlamaConfig(vocab_size=o.vocab_size, hidden_size=C, intermediate_size=3 * C, num_hidden_layers=o.n_layer,
                       num_attention_heads=o.n_head, num_key_value_heads=o.n_kv_head, head_dim=o.head_dim,
                       max_position_embeddings=o.n_positions, rope_parameters=rope, tie_word_embeddings=o.tied,
                       attention_bias=o.attention_bias, initializer_range=o.init_std, rms_norm_eps=1e-5, **special)


def build_checkpoint(directory, o: Options):
    """Write the checkpoint to directory; return the float32 transformers model reading those same bytes."""
    torch.manual_seed(o.seed)
    cfg = hf_config(o)
    model = (GPT2LMHeadModel if o.arch == "gpt2" else LlamaForCausalLM)(cfg)
    with torch.no_grad():  # norm weights start at exactly 1 and biases at 0: randomise them so they are tested
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    model = model.to(DTYPES[o.storage]).eval()
    shard = dict(max_shard_size="30KB") if o.sharded else {}
    model.save_pretrained(directory, safe_serialization=True, **shard)
    # The reference reads the stored (possibly rounded) weights back and computes in float32, as nanollm does.
    reference = type(model).from_pretrained(directory, dtype=torch.float32).eval()
    return Path(directory), reference


def cached_step(model, token, out):
    """One decode step of `model` on its own cache, the one `out` (the step before's output) holds, in whichever API
    the installed transformers has: `cache` since it deprecated `past_key_values` (a FutureWarning now), which older
    versions, such as a GPU machine's preinstalled one (`make gpu-check`), take instead."""
    if hasattr(out, "cache"):
        return model(token, cache=out.cache, use_cache=True)
    return model(token, past_key_values=out.past_key_values, use_cache=True)
