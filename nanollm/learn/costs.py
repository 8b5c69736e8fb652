"""Lesson 13: the numbers inference is judged by: TTFT, TPOT, throughput, memory, each taken from a real run."""
import time

import numpy as np

from .decoding import PROMPT
from .lesson import demo_model, heading, say

NEW_TOKENS = 64
BATCH = 4


def weight_bytes(model) -> int:
    """Bytes of every weight array as the backend holds them (float32 on numpy; a tied head is counted once)."""
    arrays = [model.weights.tok_emb, model.weights.pos_emb, model.weights.norm_f_w, model.weights.norm_f_b,
              model.weights.lm_head] + [a for layer in model.weights.layers for a in vars(layer).values()]
    return sum(int(a.nbytes) for a in arrays if a is not None)


def run() -> None:
    model = demo_model()
    cfg = model.config
    ids = model.tokenizer.encode(PROMPT)
    out = model.generate(ids, max_new_tokens=NEW_TOKENS, temperature=0)
    s = out.stats
    heading(f"One request: a {s.prompt_tokens}-token prompt, {s.new_tokens} new tokens, greedy (out.stats)")
    print(f"  TTFT        {1e3 * s.ttft_s:9.2f} ms  the prefill of {s.prompt_tokens} tokens + one choice "
          f"({s.prefill_tokens_per_s:,.0f} prompt tokens/s)")
    print(f"  TPOT        {1e3 * s.tpot_s:9.2f} ms  mean time per later token (p50 {1e3 * s.tpot_p50_s:.2f}, p90 "
          f"{1e3 * s.tpot_p90_s:.2f}: the slow steps a reader notices)")
    print(f"  throughput  {s.tokens_per_s:9.0f} tokens/s = 1 / TPOT, for one sequence")
    max_len = s.prompt_tokens + NEW_TOKENS
    by_hand = 2 * cfg.n_layer * cfg.n_kv_head * max_len * cfg.head_dim * 4
    print(f"  KV cache    {s.kv_cache_bytes:9,} bytes = 2 (k, v) x {cfg.n_layer} layers x {cfg.n_kv_head} heads x "
          f"{max_len} positions x {cfg.head_dim} x 4 bytes = {by_hand:,}")
    weights = weight_bytes(model)
    print(f"  weights     {weights:9,} bytes (float32), read whole at every decode step: "
          f"{weights / s.tpot_s / 1e9:.1f} GB/s")
    print(f"  peak memory {s.peak_memory_bytes / 2**20:9.0f} MiB resident (the whole Python process)")
    say(f"At {weights / 1e6:.1f} MB the demo's weights can stay in the CPU's caches, and its small matrix products "
        "leave Python's per-op overhead as much of each step. A model too large for the caches (GPT-2 124M: about "
        "500 MB in float32) streams every weight from memory for each token: decode is memory-bound, and weights / "
        "TPOT approaches the memory's bandwidth.")

    heading(f"A batch of {BATCH} prompts in one generate call: one weight read serves {BATCH} tokens per step")
    prompts = [PROMPT] * BATCH
    start = time.perf_counter()
    results = model.generate(prompts, max_new_tokens=NEW_TOKENS, temperature=0)
    elapsed = time.perf_counter() - start
    per_sequence = np.mean([r.stats.tokens_per_s for r in results])
    total = sum(len(r.token_ids) for r in results)
    alone = s.new_tokens / (s.ttft_s + s.tpot_s * (s.new_tokens - 1))  # the single request, prefill included
    say(f"  each sequence: {per_sequence:,.0f} tokens/s (1 / its TPOT); the batch: {total} tokens in "
        f"{elapsed:.3f} s = {total / elapsed:,.0f} tokens/s, against {alone:,.0f} for one sequence alone")
    say("Total throughput against each sequence's own speed: the trade a server makes when it batches. "
        "Try: python -m nanollm.generate --stats \"prompt\"")
