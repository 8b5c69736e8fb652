"""Lesson 14: speculative decoding: k proposed tokens checked in one pass, and why that pass costs about one step."""
import time

import numpy as np

from .costs import weight_bytes
from .decoding import GREEDY_PROMPT
from .lesson import demo_model, heading, say

PROMPT = GREEDY_PROMPT  # greedy loops on it with repetition_penalty=1 (lesson 6): prompt lookup finds the loop
NEW_TOKENS = 60
K = 4  # proposals per verification
POSITIONS = (1, 2, 5, 9)  # positions in one pass against the cache
REPEATS = 30
RATES = (0.5, 0.8, 0.9)  # acceptance rates for the table
LOOKAHEADS = (1, 2, 4, 8)  # k for the table


def pass_time(model, ids: list[int], positions: int) -> float:
    """Median seconds of one pass of `positions` tokens against a cache holding ids (medians: a busy machine)."""
    times = []
    for _ in range(REPEATS):
        cache = model.new_cache(batch_size=1, max_len=len(ids) + positions)
        model.step(np.array([ids]), cache)
        start = time.perf_counter()
        model.step(np.array([ids[:positions]]), cache, last_only=False)  # (1, positions, V)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def tokens_per_pass(a: float, k: int) -> float:
    """Expected tokens one verification gains when each proposal is kept with probability a (Leviathan et al. 2023,
    eq. 1): 1 + a + a^2 + ... + a^k = (1 - a^(k+1)) / (1 - a); the 1 is the model's own token, always gained."""
    return (1 - a ** (k + 1)) / (1 - a)


def run() -> None:
    model = demo_model()
    ids = model.tokenizer.encode(PROMPT)
    heading("1. A pass over k positions reads the weights once, as a step of one does")
    say(f"Every pass reads all {weight_bytes(model):,} bytes of weights; each position adds one multiply-add (2 "
        "FLOPs) per 4-byte weight. Decode of one position does ~0.5 FLOP per byte read, far below what a processor "
        "computes per byte memory delivers (lesson 13): a pass of a few positions waits on the same read, and takes "
        "about as long.")
    one = pass_time(model, ids, 1)
    for n in POSITIONS:
        t = pass_time(model, ids, n)
        say(f"  {n} position{'s' if n > 1 else ' '} against the cache: {1e3 * t:6.3f} ms ({t / one:4.2f}x one)")
    say("These ratios are this machine's. On a model too large for the caches (GPT-2 124M: 500 MB) the memory read "
        "dominates and they stay near 1; on this tiny one each op's fixed cost does, and a matrix product of a few "
        "rows can cost more than one row (some BLAS libraries switch kernels or threads for it).")

    heading(f"2. Prompt lookup: propose the {K} tokens that followed the last 2 tokens earlier in the text")
    plain_start = time.perf_counter()
    plain = model.generate(ids, max_new_tokens=NEW_TOKENS, temperature=0, repetition_penalty=1.0)
    plain_s = time.perf_counter() - plain_start
    passes = []
    fast_start = time.perf_counter()
    fast = model.generate(ids, max_new_tokens=NEW_TOKENS, temperature=0, repetition_penalty=1.0,
                          prompt_lookup_num_tokens=K, on_verify=passes.append)
    fast_s = time.perf_counter() - fast_start
    s = fast.stats
    say(f"same tokens as greedy: {fast.token_ids == plain.token_ids}")
    say(f"proposed {s.proposed_tokens}, accepted {s.accepted_tokens} (acceptance rate {s.acceptance_rate:.2f}): "
        f"{NEW_TOKENS - 1} tokens after the first in {len(passes)} verification passes instead of {NEW_TOKENS - 1} "
        f"decode steps. Time: {1e3 * fast_s:.1f} ms against {1e3 * plain_s:.1f} ms for plain greedy, a gain only "
        f"where section 1's pass of {K + 1} positions costs about one step.")
    for v in passes[:4]:
        say(f"  pass {v.step}: proposed {v.proposed}, kept {v.accepted}, then the model's own {v.token}")
    say("A rejected proposal costs its slot in the pass, and the cache forgets it (KVCache.truncate): the next "
        "pass starts from the last token the model agreed with.")

    heading("3. What the acceptance rate a buys: expected tokens per pass, 1 + a + ... + a^k")
    for a in RATES:
        print(f"  a = {a:.1f}  " + "  ".join(f"k={k}: {tokens_per_pass(a, k):.2f}" for k in LOOKAHEADS))
    say("Each pass costs about one step (section 1) plus the proposer's work: nearly nothing for prompt lookup, k "
        "steps of a small draft model for an assistant. So a larger k pays only while a stays high, and the speed-up "
        "is at most tokens per pass. With sampling, a proposal x is kept with probability min(1, p(x) / q(x)) and a "
        "rejection draws from max(0, p - q): every token is distributed exactly as plain sampling's.")
    say('Try: python -m nanollm.generate --prompt-lookup 4 --stats --repetition-penalty 1 "The for statement"')
