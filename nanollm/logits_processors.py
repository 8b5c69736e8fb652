"""Logits processors: what happens to the model's next-token logits before a token is chosen.

Every processor is a small function over a batch of logit rows (B, V). One order, the same as transformers'
`_get_logits_processor` where both define the step, then OpenAI's penalties and the samplers:

    1. logit bias            logits[id] += bias                                (OpenAI `logit_bias`)
    2. repetition penalty    seen: positive logit / r, negative logit * r      (transformers
                             RepetitionPenaltyLogitsProcessor; prompt and generated tokens)
    3. presence / frequency  logits -= presence * [count > 0] + frequency * count   (OpenAI; generated tokens)
    4. min_new_tokens        EOS logits = -inf until enough new tokens         (transformers
                             MinNewTokensLengthLogitsProcessor)
    5. then either greedy (argmax; temperature=0) or sampling.py's temperature -> top-k -> softmax -> top-p -> min-p
       -> inverse-CDF draw with a uniform number from a seeded generator, by the backend (`choose_tokens`).

A processor that is switched off costs nothing: `process_logits` skips it, and returns the model's own array when
every one is off (greedy decoding with no penalties does no per-step work here at all).
"""
from dataclasses import dataclass

import numpy as np

from .memory import check_fits
from .request import SamplingParams
from .sampling import (apply_temperature, min_p_filter, overflowed, refuse_nan, softmax, top_k_filter,
                       top_p_filter)


class TokenHistory:
    """Per sequence, which tokens were seen (prompt + generated) and how often each was generated.

    Kept as (B, V) arrays updated by one scatter per step, so the penalties never rescan the whole sequence.
    """

    def __init__(self, prompts: list[list[int]], vocab_size: int):
        B = len(prompts)
        check_fits(B * vocab_size * 5, f"the token history of {B} sequence(s) x {vocab_size} tokens")  # bool + int32
        self.seen = np.zeros((B, vocab_size), dtype=bool)  # (B, V) in prompt or generated: repetition penalty
        self.counts = np.zeros((B, vocab_size), dtype=np.int32)  # (B, V) times generated: presence/frequency
        for b, ids in enumerate(prompts):
            self.seen[b, ids] = True

    def add(self, tokens: np.ndarray):
        """Record one new token per row. int (B,)"""
        rows = np.arange(len(tokens))
        self.seen[rows, tokens] = True
        self.counts[rows, tokens] += 1

    def reorder(self, rows: np.ndarray):
        """Rows follow their beams (beam search picks each new row's parent). int (B,)"""
        self.seen, self.counts = self.seen[rows], self.counts[rows]


def apply_logit_bias(logits: np.ndarray, bias: dict) -> np.ndarray:
    """logits[:, id] += bias[id]. (B, V) -> (B, V) in place. Example: [[1, 2, 3]], {0: 5} -> [[6, 2, 3]].

    The ids were checked against the vocabulary once, when the request was resolved (generation.resolve_settings).
    """
    ids = np.fromiter(bias.keys(), dtype=np.int64, count=len(bias))
    logits[:, ids] += np.fromiter(bias.values(), dtype=np.float32, count=len(bias))
    return logits


def apply_repetition_penalty(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    """Make every seen token less likely whatever the sign of its logit. (B, V), bool (B, V) -> (B, V)

    Dividing a negative logit would raise it, so negative logits are multiplied instead (CTRL, Keskar et al. 2019,
    as transformers' RepetitionPenaltyLogitsProcessor). Example: penalty 2, seen logits [4, -4] -> [2, -8].
    """
    # A penalty far from 1 (1e-39) can leave float32's range: the logit saturates to +-inf, the limit of rewarding or
    # punishing that token without bound, and the sampler treats an infinite row as greedy (sampling.overflowed).
    with np.errstate(over="ignore"):
        penalised = np.where(logits < 0, logits * penalty, logits * (1.0 / penalty)).astype(np.float32)
    return np.where(seen, penalised, logits)


def apply_presence_frequency(logits: np.ndarray, counts: np.ndarray, presence: float, frequency: float
                             ) -> np.ndarray:
    """OpenAI's penalties over generated tokens: logits - presence * [count > 0] - frequency * count.

    (B, V), int (B, V) -> (B, V). Example: presence 1, frequency 0.5, a token generated twice loses 1 + 2 * 0.5 = 2.
    """
    penalty = frequency * counts + presence * (counts > 0)  # (B, V) float64 from the Python floats
    return logits - penalty.astype(np.float32)


def suppress(logits: np.ndarray, token_ids) -> np.ndarray:
    """Set the logits of token_ids to -inf, so they cannot be chosen. (B, V) -> (B, V) in place."""
    logits[:, list(token_ids)] = -np.inf
    return logits


def process_logits(logits: np.ndarray, params: SamplingParams, history: TokenHistory | None,
                   suppressed=()) -> np.ndarray:
    """Steps 1-4 of the module docstring. (B, V) -> (B, V); the input itself when no processor is on.

    suppressed: token ids to ban at this step (the EOS ids while fewer than min_new_tokens are generated).
    """
    if params.logit_bias or suppressed:
        logits = logits.copy()  # the in-place steps below must not write into the model's output buffer
    if params.logit_bias:
        logits = apply_logit_bias(logits, params.logit_bias)
    if params.repetition_penalty != 1.0:
        logits = apply_repetition_penalty(logits, history.seen, params.repetition_penalty)
    if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
        logits = apply_presence_frequency(logits, history.counts, params.presence_penalty, params.frequency_penalty)
    if suppressed:
        logits = suppress(logits, suppressed)
    return logits


def draw_uniforms(params: SamplingParams, rng: np.random.Generator, batch: int) -> np.ndarray:
    """One uniform number in [0, 1) per row for the draw (B,); zeros for greedy, which draws nothing from rng, so a
    seed's numbers do not depend on how many greedy steps came before."""
    return np.zeros(batch) if params.greedy else rng.random(batch)


def choose_tokens(logits: np.ndarray, params: SamplingParams, u: np.ndarray, backend) -> np.ndarray:
    """Processed logits (B, V), uniforms u (B,) -> int (B,) token ids, chosen by the backend's sampler:
    kernels/sampling.cu on the kernel backends, its NumPy twin on numpy (sampling.py's pipeline). Greedy is the
    argmax (temperature 0). The same u on every backend gives the same tokens. NaN logits are refused first."""
    refuse_nan(logits.max(axis=-1))  # (B,): NumPy's max propagates a NaN anywhere in the row
    return backend.sample(logits, u, params.temperature, params.top_k, params.top_p, params.min_p)  # (B,)


@dataclass
class Choice:
    """Every stage of one token choice, for one sequence at one step: what --show-probs prints. Each stage is the
    output of the very function the loop uses (process_logits, then sampling.py's pipeline), so what a learner sees
    is what happened, and a cut token is marked cut rather than shown with probability 0. (V,) arrays throughout.
    """

    step: int  # 1 for the first new token
    raw: np.ndarray  # the model's logits
    processed: np.ndarray  # after logit bias, penalties and EOS suppression (raw itself when none is on)
    params: SamplingParams
    scaled: np.ndarray | None = None  # processed / temperature (None when greedy)
    after_top_k: np.ndarray | None = None  # scaled with -inf where top-k cut
    probs: np.ndarray | None = None  # softmax of after_top_k
    after_top_p: np.ndarray | None = None  # probs with 0 where top-p cut
    final: np.ndarray | None = None  # after min-p: the unnormalised distribution the draw reads
    u: float | None = None  # the uniform number drawn (None when greedy)
    token: int = -1  # the token chosen

    @property
    def top_p_crossing(self) -> int | None:
        """The token at which the cumulative probability (most probable first) reached top_p: the last one kept."""
        if self.probs is None or self.params.top_p >= 1.0:
            return None
        kept = np.flatnonzero(self.after_top_p > 0)
        return int(kept[np.argmin(self.probs[kept])])

    def cut(self, stage: str) -> np.ndarray:
        """Token ids the stage ("top_k", "top_p", "min_p") removed that were still in before it."""
        before, after = {"top_k": (np.isfinite(self.scaled), np.isfinite(self.after_top_k)),
                         "top_p": (self.probs > 0, self.after_top_p > 0),
                         "min_p": (self.after_top_p > 0, self.final > 0)}[stage]
        return np.flatnonzero(before & ~after)


def explain_choice(step: int, raw: np.ndarray, processed: np.ndarray, params: SamplingParams, u: float,
                   token: int) -> Choice:
    """The stages of one row's choice, recomputed with sampling.py's own functions in their order (a temperature too
    small for float32 is greedy, as in filtered_probs: then only the argmax survives)."""
    choice = Choice(step, raw, processed, params, token=int(token))
    if params.greedy:
        return choice
    choice.u = float(u)
    choice.scaled = apply_temperature(processed, params.temperature)
    if overflowed(processed, choice.scaled):
        choice.scaled = np.where(np.arange(len(processed)) == np.argmax(processed), 0.0, -np.inf).astype(np.float32)
    choice.after_top_k = top_k_filter(choice.scaled, params.top_k)
    choice.probs = softmax(choice.after_top_k)
    choice.after_top_p = top_p_filter(choice.probs, params.top_p)
    choice.final = min_p_filter(choice.after_top_p, params.min_p)
    return choice
