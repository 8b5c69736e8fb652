"""Beam search: keep the num_beams most probable partial sequences instead of one, and return the best finished one.

Each step, every running beam proposes every next token; a candidate's score is its beam's summed log-probability
plus the token's log-probability. Of the num_beams * V candidates the best 2 * num_beams are kept (more than
num_beams, so that after candidates ending in EOS leave, num_beams can still run):

  - a candidate among the top num_beams that ends in EOS (or reaches max_new_tokens) is *finished*: it joins the
    pool of the num_beams best finished hypotheses with score  sum log p / (new length) ** length_penalty;
  - the num_beams best candidates that did not finish are the next step's running beams.

length_penalty > 0 favours longer sequences (the division by a larger length shrinks a negative score), < 0 shorter.
Search ends when every running candidate hits max_new_tokens, or once the pool is full and
  early_stopping=True:    immediately;
  early_stopping=False:   the best running beam, scored at its current length, cannot beat the worst finished one;
  early_stopping="never": the same test, but with length_penalty > 0 scored at the longest possible length.

Not supported, and refused by `generate` rather than ignored: streaming (the best beam is known only at the end),
stop strings (transformers' StopStringCriteria ends a beam there but keeps the string; cutting it out would leave a
beam scored on tokens it no longer shows, so here beams end only by EOS or length), and show_probs (one
distribution per step and sequence; beam search has num_beams of them).

This follows transformers' `GenerationMixin._beam_search` (v4.50+, the vectorised rewrite) step for step, so the
ids are the same; its logits processors (repetition penalty, logit bias, min_new_tokens) act on the log-probs there,
as here. Reference: the transformers source and https://huggingface.co/blog/how-to-generate.
"""
import time
from dataclasses import dataclass

import numpy as np

from .logits_processors import TokenHistory, process_logits
from .memory import check_fits
from .request import GenerationResult, GenerationSettings, GenerationStats, record_timing
from .sampling import refuse_nan

NEG = np.float32(-1.0e9)  # transformers' "impossible" score: finite so that sums and sorts stay well defined


@dataclass
class Beam:
    token_ids: list[int]  # new tokens (the EOS that finished it included)
    score: float  # sum of log-probabilities / len(token_ids) ** length_penalty
    text: str | None = None


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p = z - max - log(sum(exp(z - max))) per row, in float32. (B, V) -> (B, V)"""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def length_divisor(length: int, length_penalty: float) -> np.float32:
    """length ** length_penalty as float32, the divisor of a beam's summed log-probability. A penalty so large that
    the power leaves float32 gives inf (every score then 0, as in torch's float arithmetic) instead of Python's
    OverflowError. Example: (4, 0.5) -> 2.0; (4, 1e3) -> inf."""
    with np.errstate(over="ignore"):
        return np.float32(np.float64(length) ** length_penalty)


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, largest first. (N,) -> (k,)"""
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def beam_search(model, prompt_ids: list[int], s: GenerationSettings) -> tuple[list[Beam], GenerationStats]:
    """All num_beams finished hypotheses, best first, and the run's timing."""
    if not s.sampling.greedy:
        raise ValueError("beam search here is deterministic: pass temperature=0 (beam sampling is not implemented)")
    K, L, new = s.num_beams, len(prompt_ids), s.max_new_tokens
    stats = GenerationStats(prompt_tokens=L, batch_size=K)
    if new == 0:
        return [], record_timing(stats, None, [], L)
    V = model.config.vocab_size
    # Candidates kept per step: enough that num_beams survive any EOS, but no more than exist (K * V; transformers'
    # topk fails there instead, e.g. for a 2-token vocabulary whose tokens are both EOS).
    keep = min(max(2, 1 + len(s.eos_ids)) * K, K * V)
    eos = np.array(sorted(s.eos_ids), dtype=np.int64)
    t_start = time.perf_counter()
    # The beams' cache first: it is the largest allocation and checks that memory suffices (num_beams is a flag).
    cache = model.new_cache(batch_size=K, max_len=L + new)
    # Each step also holds about eight (K, V) float32-sized arrays at once: the logits, log_softmax's temporaries, the
    # log-probs, the candidate scores and argpartition's int64 indices. A large vocabulary makes these the larger part.
    check_fits(8 * 4 * K * V, f"beam search's score tables for num_beams={K} x {V} tokens")
    history = TokenHistory([prompt_ids] * K, V) if s.sampling.uses_history else None

    # Prefill once, then give every beam a copy of the prompt's cache.
    one = model.new_cache(batch_size=1, max_len=L)
    logits = np.repeat(model.step(np.asarray([prompt_ids]), one)[:, -1], K, axis=0)  # (K, V)
    cache.copy_prefix(one)
    stats.kv_cache_bytes = cache.nbytes

    running_scores = np.full(K, NEG, dtype=np.float32)  # (K,) only beam 0 is real at the start: no duplicates
    running_scores[0] = 0.0
    running = np.zeros((K, 0), dtype=np.int64)  # (K, n) tokens of each running beam
    finished: list[Beam] = []  # at most K, best first
    improvable = True
    times = []
    for n in range(new):
        suppressed = s.eos_ids if n < s.min_new_tokens else ()
        refuse_nan(logits.max(axis=-1))  # (K,): a NaN would sort anywhere and silently pick the beams
        logp = process_logits(log_softmax(logits), s.sampling, history, suppressed)  # (K, V)
        candidates = (logp + running_scores[:, None]).reshape(-1)  # (K*V,) score of beam i extended by token j
        top = top_indices(candidates, keep)  # (keep,)
        top_scores, parent, token = candidates[top], top // V, top % V  # (keep,) each
        hits = np.isin(token, eos) | (n + 1 == new)  # (keep,) candidates that finish here

        # Finished candidates among the first K ranks join the pool, scored with the length penalty.
        lengthened = top_scores / length_divisor(n + 1, s.length_penalty)  # (keep,)
        for r in np.flatnonzero(hits[:K]):
            finished.append(Beam([*running[parent[r]].tolist(), int(token[r])], float(lengthened[r])))
        finished = sorted(finished, key=lambda b: -b.score)[:K]  # stable: earlier hypotheses win exact ties

        # The K best unfinished candidates run on.
        alive = top_indices(top_scores + hits * NEG, K)  # (K,) positions in `top`
        running_scores = (top_scores + hits * NEG)[alive].astype(np.float32)
        parents = parent[alive]  # (K,) which beam each new beam extends
        running = np.concatenate([running[parents], token[alive, None]], axis=1)  # (K, n+1)
        times.append(time.perf_counter())

        # Can search stop? (transformers' _check_early_stop_heuristic and _beam_search_has_unfinished_sequences)
        full = len(finished) == K
        best_len = new if (s.early_stopping == "never" and s.length_penalty > 0) else n + 1
        best_possible = running_scores[0] / length_divisor(best_len, s.length_penalty)
        worst_finished = finished[-1].score if full else float(NEG)
        improvable = improvable and bool(best_possible > worst_finished)
        if not improvable or (full and s.early_stopping is True) or hits.all():
            break

        if not np.array_equal(parents, np.arange(K)):  # each beam's cache follows its parent's
            cache.reorder(parents)
        if history is not None:
            history.reorder(parents)
            history.add(running[:, -1])
        logits = model.step(running[:, -1:], cache)[:, -1]  # (K, V)

    stats.new_tokens = len(finished[0].token_ids) if finished else 0
    return finished, record_timing(stats, t_start, times, L)  # times: one per step, all beams at once


def beam_search_result(model, prompt_ids: list[int], s: GenerationSettings, return_beams: bool = False
                       ) -> GenerationResult:
    """The best beam as a GenerationResult (text without its EOS); every beam too with return_beams."""
    beams, stats = beam_search(model, prompt_ids, s)
    tok = model.tokenizer
    for beam in beams:
        if tok is not None:
            ids = beam.token_ids[:-1] if beam.token_ids and beam.token_ids[-1] in s.eos_ids else beam.token_ids
            beam.text = tok.decode(ids)
    best = beams[0] if beams else Beam([], 0.0, "" if tok is not None else None)
    reason = "eos" if best.token_ids and best.token_ids[-1] in s.eos_ids else "length"
    return GenerationResult(text=best.text, token_ids=best.token_ids, stats=stats, finish_reason=reason,
                            prompt_ids=list(prompt_ids), beams=beams if return_beams else None)
