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
import numpy as np

from .memory import check_fits
from .request import SamplingParams
from .sampling import filtered_probs, refuse_nan, softmax


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


def choose_tokens(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator, backend) -> np.ndarray:
    """Processed logits (B, V) -> int (B,) token ids, chosen by the backend's sampler: kernels/sampling.cu on the
    kernel backends, its NumPy twin on numpy (sampling.py's pipeline). Greedy is the argmax (temperature 0), and
    draws nothing from rng; sampling draws one seeded uniform number per row, the same on every backend, so a seed
    gives the same tokens everywhere. NaN logits are refused first, whoever samples."""
    refuse_nan(logits.max(axis=-1))  # (B,): NumPy's max propagates a NaN anywhere in the row
    u = np.zeros(len(logits)) if params.greedy else rng.random(len(logits))  # (B,) one uniform number per row
    return backend.sample(logits, u, params.temperature, params.top_k, params.top_p, params.min_p)  # (B,)


def distribution(row: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The unnormalised next-token distribution one processed row (V,) is drawn from. (V,) -> (V,)

    Greedy has no distribution of its own; it shows the softmax at temperature 1, whose top token greedy takes.
    """
    if params.greedy:
        refuse_nan(row.max())
        return softmax(row)
    return filtered_probs(row, params.temperature, params.top_k, params.top_p, params.min_p)


def top_probabilities(row: np.ndarray, params: SamplingParams, k: int) -> list[tuple[int, float]]:
    """The k most likely next tokens after every processor, with their normalised probabilities (--show-probs)."""
    probs = distribution(row, params)
    probs = probs / probs.sum()
    top = np.argsort(-probs, kind="stable")[:k]
    return [(int(i), float(probs[i])) for i in top]
