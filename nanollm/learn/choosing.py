"""Lessons 7, 8 and 9: logits become probabilities (temperature), some are cut (top-k, top-p, min-p), one is drawn.

The example is a common tutorial's (Raschka, "Build a Large Language Model (From Scratch)", chapter 5): a 9-word
vocabulary and the logits a model gave for the word after "every effort moves you". Every number printed here is
computed by sampling.py's own functions.
"""
import numpy as np

from ..sampling import (apply_temperature, draw, filtered_probs, min_p_filter, sample_token, softmax, top_k_filter,
                        top_p_filter)
from .lesson import demo_model, heading, numbers, piece, say

WORDS = ("closer", "every", "effort", "forward", "inches", "moves", "pizza", "toward", "you")
LOGITS = np.array([4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79], dtype=np.float32)  # (V,) V = 9
TEMPERATURES = (1.0, 0.1, 5.0)
SMALL = np.array([0.1, 0.2, 0.3, 0.8], dtype=np.float32)
TOP_K, TOP_P, MIN_P = 3, 0.9, 0.1
DRAWS = 10_000


def kept(probs: np.ndarray) -> str:
    """The words a filter left, with their probabilities renormalised to sum to 1: 'forward 0.6154, toward 0.3846'."""
    order = np.argsort(-probs, kind="stable")
    total = probs.sum()
    return ", ".join(f"{WORDS[i]} {probs[i] / total:.4f}" for i in order if probs[i] > 0)


def run_temperature() -> None:
    say("A 9-word vocabulary; the model's logits for the next word after \"every effort moves you\":")
    heading("softmax(apply_temperature(logits, T)) for T = 1, 0.1, 5")
    table = {t: softmax(apply_temperature(LOGITS, t)) for t in TEMPERATURES}  # each (V,)
    say(f"  {'word':8s} {'logit':>6s}" + "".join(f"   T={t:<4g}" for t in TEMPERATURES))
    for i, word in enumerate(WORDS):
        say(f"  {word:8s} {LOGITS[i]:6.2f}" + "".join(f"   {table[t][i]:.4f}" for t in TEMPERATURES))
    say(f"T < 1 sharpens (T=0.1: forward {table[0.1][3]:.4f}), T > 1 flattens (T=5: the largest is "
        f"{table[5.0].max():.4f}, the smallest {table[5.0].min():.4f}). T = 0 is greedy: the argmax, never a "
        f"division by 0 (sample_token).")
    heading("Softmax is exp(x) / sum(exp(x)), subtracting the max first so exp cannot overflow")
    say(f"softmax([0.1, 0.2, 0.3, 0.8]) = {numbers(softmax(SMALL), 3)}")
    say(f"Tutorials that print other values for this are wrong. One slip that gives such a table: x / sum(x) = "
        f"{numbers(SMALL / SMALL.sum(), 3)}, which is not softmax (no exponential): softmax depends only on the "
        f"differences between logits, so [1.1, 1.2, 1.3, 1.8] gives {numbers(softmax(SMALL + 1), 3)} too.")


def run_filters() -> None:
    probs = softmax(LOGITS)  # (V,) temperature 1
    order = np.argsort(-probs, kind="stable")
    say("Probabilities at T = 1, most probable first: "
        + ", ".join(f"{WORDS[i]} {probs[i]:.4f}" for i in order[:5]) + ", ...")
    heading(f"top-k {TOP_K}: top_k_filter sets every logit but the {TOP_K} largest to -inf, then softmax")
    top_k = softmax(top_k_filter(LOGITS, TOP_K))
    say(f"  {numbers(top_k)}")
    say(f"  kept: {kept(top_k)}")
    heading(f"top-p {TOP_P}: top_p_filter keeps the most probable words until their mass reaches p")
    cumulative = np.cumsum(probs[order])  # (V,) most probable first
    for rank, i in enumerate(order[:3]):
        say(f"  {WORDS[i]:8s} {probs[i]:.4f}   cumulative {cumulative[rank]:.4f}"
            + ("   <- crosses p: kept" if cumulative[rank] >= TOP_P > cumulative[rank] - probs[i] else ""))
    top_p = top_p_filter(probs, TOP_P)
    say(f"  kept (transformers' rule, nanollm's): {kept(top_p)}; mass {top_p.sum():.4f} >= {TOP_P}")
    dropped = np.where(np.cumsum(probs[order]) <= TOP_P, probs[order], 0.0)  # the other rule, sorted order
    say(f"  dropping the word that crosses p instead (keep while cumulative <= p): "
        f"{', '.join(WORDS[i] for i, p in zip(order, dropped) if p > 0)}; mass {dropped.sum():.4f} < {TOP_P}")
    say("  That rule keeps less than p, and keeps nothing when the top word alone is above p. transformers' "
        "TopPLogitsWarper keeps the smallest set whose mass reaches p, so the crossing word stays.")
    heading(f"min-p {MIN_P}: min_p_filter keeps words at least {MIN_P} x the top probability")
    min_p = min_p_filter(probs, MIN_P)
    say(f"  threshold {MIN_P} x {probs.max():.4f} = {MIN_P * probs.max():.4f}; kept: {kept(min_p)}")
    heading("The pipeline, in transformers' order: temperature -> top-k -> softmax -> top-p -> min-p")
    both = filtered_probs(LOGITS, 1.0, top_k=TOP_K, top_p=TOP_P)
    say(f"  filtered_probs(logits, 1.0, top_k={TOP_K}, top_p={TOP_P}): {kept(both)} (top-p sees top-k's "
        f"renormalised probabilities)")


def run_draw(seed: int = 7) -> None:
    probs = softmax(top_k_filter(LOGITS, TOP_K))  # (V,)
    cdf = np.cumsum(probs)  # (V,) in vocabulary order, not sorted
    say(f"After top-k {TOP_K}: {kept(probs)}. draw(probs, u) walks the cumulative sum in vocabulary order and "
        f"returns the first word whose cumulative probability exceeds u:")
    low = 0.0
    for i in np.flatnonzero(probs):
        say(f"  {WORDS[i]:8s} [{low:.4f}, {cdf[i]:.4f})")
        low = cdf[i]
    say("  " + ", ".join(f"u = {u} -> {WORDS[draw(probs, u)]}" for u in (0.05, 0.5, 0.7, 0.99)))
    heading(f"{DRAWS:,} draws with u from np.random.default_rng(0): how often each word came out")
    counts = np.bincount([draw(probs, u) for u in np.random.default_rng(0).random(DRAWS)], minlength=len(WORDS))
    for i in np.flatnonzero(probs):
        say(f"  {WORDS[i]:8s} drawn {counts[i] / DRAWS:.4f}   probability {probs[i]:.4f}")

    heading(f"In the model: generate(seed={seed}, temperature=0.8, top_k=40) redone by hand")
    model, options = demo_model(), dict(temperature=0.8, top_k=40, repetition_penalty=1.0)
    ids = model.tokenizer.encode("The for statement")
    out = model.generate(ids, max_new_tokens=8, seed=seed, **options)
    rng = np.random.default_rng(seed)  # the loop's generator: one uniform number per sequence per step
    cache = model.new_cache(batch_size=1, max_len=len(ids) + 8)
    logits = model.step(np.array([ids]), cache)[0, -1]  # (V,)
    mine = []
    for step in range(8):
        u = rng.random(1)[0]
        mine.append(sample_token(logits, u, options["temperature"], options["top_k"]))
        say(f"  step {step + 1}: u = {u:.4f} -> {piece(model.tokenizer, mine[-1])}")
        logits = model.step(np.array([[mine[-1]]]), cache)[0, -1]  # (V,)
    say(f"the same tokens as model.generate: {mine == out.token_ids}. The seed fixes every u, so the text is "
        f"reproducible; a different seed draws different u's.")
