"""Lesson 11: beam search keeps the K most probable sequences instead of one; its scores recomputed by hand."""
import numpy as np

from ..beam_search import log_softmax
from .lesson import demo_model, heading, say

PROMPT = "The for statement"
NEW_TOKENS = 8
BEAMS = 4


def sequence_log_prob(model, prompt: list[int], new: list[int]) -> float:
    """sum of log p(token | everything before it) over the new tokens, from one full pass. -> a number <= 0"""
    logp = log_softmax(model.forward([prompt + new])[0])  # (T, V): row t scores the token at t + 1
    return float(sum(logp[len(prompt) - 1 + n, token] for n, token in enumerate(new)))


def run() -> None:
    model = demo_model()
    tok = model.tokenizer
    ids = tok.encode(PROMPT)
    options = dict(max_new_tokens=NEW_TOKENS, temperature=0, repetition_penalty=1.0)
    greedy = model.generate(ids, **options)
    out = model.generate(ids, num_beams=BEAMS, return_beams=True, **options)
    heading(f"generate({PROMPT!r}, num_beams={BEAMS}, max_new_tokens={NEW_TOKENS}): every finished beam, best first")
    for beam in out.beams:
        say(f"  score {beam.score:8.4f}  {beam.text!r}")
    say("A beam's score is its summed log-probability / length ** length_penalty (1 here): the mean log p per "
        "token.")
    heading("The best beam's score, recomputed from one forward pass and log_softmax")
    best = out.beams[0]
    total = sequence_log_prob(model, ids, best.token_ids)
    say(f"  sum log p = {total:.4f}, / {len(best.token_ids)} tokens = {total / len(best.token_ids):.4f} "
        f"(beam search said {best.score:.4f})")
    heading("Greedy, scored the same way")
    greedy_total = sequence_log_prob(model, ids, greedy.token_ids)
    say(f"  {greedy.text!r}: sum log p = {greedy_total:.4f}, mean {greedy_total / len(greedy.token_ids):.4f}")
    gain = np.exp(total - greedy_total)
    say(f"Greedy commits to the best next token; beams keep {BEAMS} candidates each step, so a token that looked "
        f"worse first can lead to a better whole: here the best beam is {gain:.2f}x as probable as greedy's "
        f"sequence.")
    say("Each step scores num_beams x V candidates and reorders the KV cache to follow each beam's parent "
        "(cache.reorder). Beam search cannot stream: the winner is known only at the end.")
