"""Lessons 5 and 6: prefill then decode against the KV cache (timed against recomputing), and greedy's loops."""
import time

import numpy as np

from ..kv_cache import kv_cache_bytes
from ..sampling import sample_token
from .lesson import demo_model, heading, max_difference, piece, say

PROMPT = ('The "for" statement is used to iterate over the elements of a sequence\n(such as a string, tuple or '
          "list) or other iterable object:\n\nThe expression list is evaluated once; it should yield an iterable\n"
          "object. An iterator is created for the")  # wrapped like the documentation the demo model learned from
NEW_TOKENS = 100
GREEDY_PROMPT = "The for statement"


def greedy(logits: np.ndarray) -> int:
    """sampling.sample_token at temperature 0: the first argmax, no random number used."""
    return sample_token(logits, 0.0, temperature=0.0)


def decode_with_cache(model, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """Greedy with the cache: one prefill, then one position per step. -> (new tokens, seconds of each step)."""
    cache = model.new_cache(batch_size=1, max_len=len(ids) + n)
    logits = model.step(np.array([ids]), cache)[0, -1]  # (V,): prefill, the prompt's last position
    tokens, times = [], []
    for _ in range(n):
        start = time.perf_counter()
        tokens.append(greedy(logits))
        logits = model.step(np.array([[tokens[-1]]]), cache)[0, -1]  # (V,): T = 1 against the cache
        times.append(time.perf_counter() - start)
    return tokens, times


def decode_recomputing(model, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """Greedy without keeping the cache: every step runs the whole sequence again (what --no-kv-cache does)."""
    cache = model.new_cache(batch_size=1, max_len=len(ids) + n)
    sequence = list(ids)
    logits = model.step(np.array([sequence]), cache)[0, -1]  # (V,)
    tokens, times = [], []
    for _ in range(n):
        start = time.perf_counter()
        tokens.append(greedy(logits))
        sequence.append(tokens[-1])
        cache.restart()  # forget every key and value: the next step computes them all again
        logits = model.step(np.array([sequence]), cache)[0, -1]  # (V,): T = the whole sequence
        times.append(time.perf_counter() - start)
    return tokens, times


def run_cache() -> None:
    model = demo_model()
    cfg, tok = model.config, model.tokenizer
    ids = tok.encode(PROMPT)
    heading(f"1. Prefill: the whole prompt ({len(ids)} tokens) in one pass")
    cache = model.new_cache(batch_size=1, max_len=len(ids) + 3)
    logits = model.step(np.array([ids]), cache)  # (1, 1, V): only the last position's logits are needed
    say(f"ids (1, {len(ids)}) -> logits {logits.shape}; the cache holds {cache.length} positions; each layer's k and "
        f"v buffer is {cache.k[0].shape} (B, n_kv, max_len, hs)")
    per_token = kv_cache_bytes(cfg, 1, 1)
    say(f"per token: 2 (k, v) x {cfg.n_layer} layers x {cfg.n_kv_head} heads x {cfg.head_dim} x 4 bytes = "
        f"{per_token:,} bytes")
    heading("2. Decode: one new token per step, T = 1; its keys and values join the cache")
    sequence = list(ids)
    for _ in range(3):
        token = greedy(logits[0, -1])
        sequence.append(token)
        logits = model.step(np.array([[token]]), cache)  # (1, 1, V)
        say(f"  chose {piece(tok, token):10s} -> step ids (1, 1), cache length {cache.length}")
    full = model.forward([sequence])[0, -1]  # (V,): recomputed from scratch
    say(f"The last step's logits vs a full pass over all {len(sequence)} tokens: max difference "
        f"{max_difference(logits[0, -1], full):.1e} (the same numbers, without recomputing the past)")

    heading(f"3. Timed: {NEW_TOKENS} greedy tokens with the cache, and recomputing everything each step")
    cached, cached_s = decode_with_cache(model, ids, NEW_TOKENS)
    again, again_s = decode_recomputing(model, ids, NEW_TOKENS)
    say(f"same tokens: {cached == again}")
    for name, s in (("cache", cached_s), ("recompute", again_s)):
        say(f"  {name:9s}: median of the first 10 steps {1e3 * np.median(s[:10]):6.2f} ms/token, of the last 10 "
            f"{1e3 * np.median(s[-10:]):6.2f} ms/token, total {sum(s):.3f} s")  # medians: a busy machine's spikes
    say(f"With the cache a step costs one position whatever the length; recomputing costs the whole sequence, "
        f"{len(ids)} to {len(ids) + NEW_TOKENS} positions here, and grows with it.")
    say("The same comparison for any model, time per token drawn over the context:")
    say("  python -m nanollm.generate --stats [--no-kv-cache] --plot steps.png \"...\"")


def find_loop(ids: list[int], longest: int = 20) -> tuple[int, int] | None:
    """(start, period) of the shortest cycle the sequence ends in, repeated at least twice, or None.

    Example: [5, 1, 2, 3, 1, 2, 3, 1, 2] -> (1, 3): from index 1 on, every token equals the one 3 before it.
    """
    for period in range(1, longest + 1):
        start = len(ids) - period
        while start > 0 and ids[start - 1] == ids[start - 1 + period]:
            start -= 1
        if len(ids) - start >= 2 * period:
            return start, period
    return None


def run_greedy() -> None:
    model = demo_model()
    tok, file_penalty = model.tokenizer, model.generation_defaults["repetition_penalty"]
    say(f"What nanollm read from the demo model's generation_config.json: {model.generation_defaults}")
    say("generate() follows it for what you do not pass, as transformers does (request.resolve_settings).")
    for penalty in (1.0, None):
        out = model.generate(GREEDY_PROMPT, max_new_tokens=60, temperature=0, repetition_penalty=penalty)
        label = "repetition_penalty=1 (off)" if penalty else f"the file's repetition_penalty={file_penalty}"
        heading(f"greedy, {label}")
        print(repr(out.text))
        loop = find_loop(out.token_ids)
        if loop is None:
            say("no repeating cycle at the end")
        else:
            start, period = loop
            cycle = "".join(tok.decode([i]) for i in out.token_ids[start : start + period])
            say(f"from new token {start} on, a cycle of {period} tokens repeats: {cycle!r}")
    print()
    say("Greedy takes the argmax, a pure function of the context: once the text repeats itself, the next choice "
        f"tends to repeat too. The penalty divides the positive logits of every token already seen by {file_penalty} "
        "(lesson 10), which breaks the cycle. Passing repetition_penalty=1 (--repetition-penalty 1) shows the raw "
        "model.")
