"""The generation loop: prefill the prompt once, then decode one token per step against the KV cache.

    prompt ids --prefill--> cache filled, logits of the last position --sample--> token
    token --decode step (T=1)--> cache grows by one, next logits --sample--> token ... until a stop condition

The prefix is never recomputed: each decode step costs one position's worth of work plus attention over the cache.
`iter_generate` yields each token as it is chosen (the CLI streams from it); `generate` collects the result.
"""
import resource
import time
from dataclasses import dataclass, field

import numpy as np

from .sampling import check_sampling_args, sample_token


@dataclass
class GenerationStats:
    prompt_tokens: int
    new_tokens: int = 0
    ttft_s: float = 0.0  # time to first token: prompt in -> first new token chosen (prefill + one sample)
    tpot_s: float = 0.0  # mean time per output token after the first (the decode steps)
    tokens_per_s: float = 0.0  # decode throughput, 1 / tpot_s
    prefill_tokens_per_s: float = 0.0  # prompt_tokens / ttft_s
    kv_cache_bytes: int = 0
    peak_memory_bytes: int = 0  # peak resident set size of the process so far

    def as_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class GenerationResult:
    text: str | None  # the new text (None when the model has no tokenizer)
    token_ids: list[int]  # new tokens only
    stats: GenerationStats
    finish_reason: str = "length"  # "length" (max_new_tokens reached) or "eos"
    prompt_ids: list[int] = field(default_factory=list)


def encode_prompt(model, prompt) -> list[int]:
    """A string (needs the model's tokenizer) or a list of token ids -> validated prompt ids."""
    if isinstance(prompt, str):
        if model.tokenizer is None:
            raise ValueError("this model has no tokenizer files: pass the prompt as token ids")
        ids = model.tokenizer.encode_prompt(prompt)
        if not ids:
            raise ValueError("the prompt is empty")
    else:
        ids = [int(t) for t in prompt]
    return model.check_ids(ids)[0].tolist()


def eos_ids(model) -> set[int]:
    """End-of-sequence ids: generation_config.json when present, else config.json (as transformers does)."""
    eos = model.generation_defaults.get("eos_token_id", model.config.eos_token_ids)
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def sampling_settings(model, temperature, top_k, top_p) -> tuple[float, int, float]:
    """Unset arguments follow the model's generation_config.json as transformers does: greedy unless do_sample."""
    g = model.generation_defaults
    sampling = g.get("do_sample", False)
    if temperature is None:
        temperature = float(g.get("temperature", 1.0)) if sampling else 0.0
    if top_k is None:
        top_k = int(g.get("top_k", 50) or 0) if sampling else 0
    if top_p is None:
        top_p = float(g.get("top_p", 1.0)) if sampling else 1.0
    check_sampling_args(temperature, top_k, top_p)
    return temperature, top_k, top_p


def iter_generate(model, prompt, max_new_tokens=64, temperature=None, top_k=None, top_p=None, seed=None,
                  stats: GenerationStats | None = None):
    """Yield each new token id as it is chosen. `stats` (if given) is filled in as the loop runs."""
    if int(max_new_tokens) != max_new_tokens or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens}")
    temperature, top_k, top_p = sampling_settings(model, temperature, top_k, top_p)
    ids = encode_prompt(model, prompt)
    total = len(ids) + max_new_tokens
    if total > model.config.max_seq_len:
        raise ValueError(f"prompt of {len(ids)} tokens + {max_new_tokens} new tokens = {total} exceeds the model's "
                         f"context of {model.config.max_seq_len} tokens")
    stats = stats if stats is not None else GenerationStats(prompt_tokens=len(ids))
    stats.prompt_tokens = len(ids)
    if max_new_tokens == 0:
        return
    rng = np.random.default_rng(seed)
    stop = eos_ids(model)
    cache = model.new_cache(batch_size=1, max_len=total)
    stats.kv_cache_bytes = cache.nbytes

    t_start = time.perf_counter()
    logits = model.step(np.asarray([ids]), cache)[0, -1]  # prefill: (V,) logits of the last prompt position
    for n in range(max_new_tokens):
        token = sample_token(logits, rng.random(), temperature, top_k, top_p)
        now = time.perf_counter()
        if n == 0:
            stats.ttft_s, t_first = now - t_start, now
            stats.prefill_tokens_per_s = len(ids) / stats.ttft_s
        stats.new_tokens = n + 1
        if n > 0:
            stats.tpot_s = (now - t_first) / n
            stats.tokens_per_s = 1.0 / stats.tpot_s if stats.tpot_s > 0 else 0.0
        stats.peak_memory_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        yield token
        if token in stop or n + 1 == max_new_tokens:
            return
        logits = model.step(np.asarray([[token]]), cache)[0, -1]  # decode: one position against the cache


def generate(model, prompt, max_new_tokens=64, temperature=None, top_k=None, top_p=None, seed=None
             ) -> GenerationResult:
    """Generate up to max_new_tokens after prompt (string or token ids). temperature=0 is greedy."""
    stats = GenerationStats(prompt_tokens=0)
    tokens = list(iter_generate(model, prompt, max_new_tokens, temperature, top_k, top_p, seed, stats))
    finish = "eos" if tokens and tokens[-1] in eos_ids(model) else "length"
    text = model.tokenizer.decode(tokens) if model.tokenizer is not None else None
    return GenerationResult(text=text, token_ids=tokens, stats=stats, finish_reason=finish,
                            prompt_ids=encode_prompt(model, prompt))
