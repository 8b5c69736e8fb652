"""Choosing the next token from logits: temperature, top-k, top-p, then a draw.

Each step is a small function over one row of logits (V,). The draw takes its uniform random number `u` as an
argument instead of owning a random generator, so sampling is a pure function that a test can pin down.

The order is fixed: temperature -> top-k -> softmax -> top-p -> min-p -> inverse-CDF draw (transformers' order for
its warpers). `filtered_probs` is the pipeline; `sample_token` is it for one row with its draw. The processors that
run before temperature (penalties, logit bias) are in logits_processors.py.

These functions are the NumPy twin of kernels/sampling.cu: the generation loop (logits_processors.choose_tokens)
hands each step's logits to the backend's `sample`, which is this pipeline on the numpy backend and the kernel on the
kernel backends; given the same logits and the same `u` both return the same token (tests/test_kernels.py, on the
CPU emulator or a GPU when there is one).
"""

import numpy as np

NAN_LOGITS = "the model produced NaN logits: the weights or the input are corrupt"


def refuse_nan(maxima) -> None:
    """Raise if any row maximum is NaN. float or (B,) -> None

    np.max propagates NaN and np.argmax stops at the first NaN, so a row's max (or its value at the argmax) is NaN
    exactly when the row holds one: one value per row tells, instead of a second pass over the vocabulary.
    """
    if np.isnan(maxima).any():
        raise ValueError(NAN_LOGITS)


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    """logits / temperature, as logits * (1 / temperature) with the reciprocal rounded to float32. (V,) -> (V,)

    temperature must be > 0 (0 means greedy and never reaches here). A temperature so small that the result leaves
    float32's range gives infinite (or NaN, 0 * inf) entries: `overflowed` detects that; the callers go greedy.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is handled by the callers, see `overflowed`
        return logits * (1.0 / temperature)


def overflowed(logits: np.ndarray, z: np.ndarray) -> bool:
    """Whether z = apply_temperature(logits, T) left float32's range: the logits' max is finite, z's is not.
    (V,), (V,) -> bool

    softmax(z / T) tends to the argmax as T -> 0, and once z / T overflows nothing closer can be computed (softmax
    would give NaN), so such a temperature is greedy. Examples: T=1e-45 (1 / T = 1e45 > float32's 3.4e38: every z is
    +-inf or NaN), T=1e-38 with a largest logit of 5 (5e38 -> +inf) or of -5 (-5e38 -> -inf: every z is -inf).
    The logits were checked for NaN before, so a NaN in z is 0 * inf. kernels/sampling.cu applies the same rule,
    decided on max(logits) * (1/T), which is the same test since scaling by a positive number keeps the order.
    """
    return logits.max() > -np.inf and not np.isfinite(z.max())


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the k largest logits, -inf elsewhere; k=0 (or k >= V) keeps all. (V,) -> (V,)

    Ties with the k-th largest value are all kept, as transformers' TopKLogitsWarper does.
    Example: logits=[1, 3, 3, 2], k=2 -> [-inf, 3, 3, -inf]; k=3 -> [-inf, 3, 3, 2].
    """
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -k)[-k]  # the k-th largest value, without sorting the whole vocabulary
    return np.where(logits >= kth, logits, -np.inf).astype(logits.dtype, copy=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Max-subtracted softmax in float32. (V,) -> (V,)"""
    e = np.exp(logits - logits.max())
    return e / e.sum()


def top_p_filter(probs: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filter: keep the most probable tokens until their mass reaches p, zero the rest. (V,) -> (V,)

    The cut is a probability threshold: keep every token at least as probable as the one whose cumulative mass
    crosses p. That token is always kept, so at least one survives; tokens tied with it are kept too, which makes the
    rule independent of sort order (the GPU kernel finds the same threshold without sorting). p=1 keeps everything.
    Example: probs=[0.1, 0.5, 0.3, 0.1], p=0.7 -> sorted 0.5, 0.3 (mass 0.8 >= 0.7) -> [0, 0.5, 0.3, 0].
    """
    if p >= 1.0:
        return probs
    order = np.argsort(-probs, kind="stable")  # most probable first
    cumulative = np.cumsum(probs[order])  # (V,)
    crossing = min(int(np.searchsorted(cumulative, p)), len(order) - 1)  # first index whose cumulative >= p
    threshold = probs[order[crossing]]
    return np.where(probs >= threshold, probs, 0.0).astype(probs.dtype, copy=False)


def min_p_filter(probs: np.ndarray, min_p: float) -> np.ndarray:
    """Min-p: zero every token less probable than min_p times the most probable one. (V,) -> (V,)

    The rule compares ratios, so probs need not be normalised; the most probable token always survives. min_p=0 keeps
    all. Source: Nguyen et al. 2024, "Turning Up the Heat: Min-p Sampling"; transformers' MinPLogitsWarper.
    Example: probs=[0.5, 0.3, 0.15, 0.05], min_p=0.2 -> threshold 0.1 -> [0.5, 0.3, 0.15, 0].
    """
    if min_p <= 0.0:
        return probs
    return np.where(probs >= min_p * probs.max(), probs, 0.0).astype(probs.dtype, copy=False)


def draw(probs: np.ndarray, u: float) -> int:
    """Inverse-CDF draw: the first token whose cumulative probability exceeds u * total. (V,), u in [0, 1) -> id

    probs need not be normalised (filters leave them unnormalised). A token of probability 0 can never be drawn:
    the cumulative sum does not rise at it.
    Example: probs=[0.2, 0, 0.8], u=0.1 -> 0; u=0.2 -> 2 (0.2 is not > 0.2, and token 1 adds nothing).
    """
    cumulative = np.cumsum(probs, dtype=np.float64)  # float64: the running sum over a 100k vocabulary stays exact
    i = int(np.searchsorted(cumulative, u * cumulative[-1], side="right"))
    return min(i, len(probs) - 1)


def sample_token(logits: np.ndarray, u: float, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 min_p: float = 0.0) -> int:
    """The whole pipeline for one row. (V,) float32 logits, uniform u -> token id.

    temperature=0 is greedy, and so is a temperature too small for float32 (see `overflowed`: filtered_probs then
    puts all the mass on the first argmax, which the draw returns for any u). NaN logits raise.
    """
    if temperature == 0:
        refuse_nan(logits.max())
        return int(np.argmax(logits))  # the first maximum, as torch.argmax does
    return draw(filtered_probs(logits, temperature, top_k, top_p, min_p), u)


def filtered_probs(logits: np.ndarray, temperature: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
                   ) -> np.ndarray:
    """temperature -> top-k -> softmax -> top-p -> min-p: the unnormalised distribution draw() reads. (V,) -> (V,)

    temperature must be > 0; one too small for float32 (see `overflowed`) gives all the mass to the first argmax,
    as greedy would choose. NaN logits raise.
    """
    refuse_nan(logits.max())
    z = apply_temperature(logits, temperature)
    if overflowed(logits, z):
        probs = np.zeros_like(logits)
        probs[np.argmax(logits)] = 1.0
        return probs
    return min_p_filter(top_p_filter(softmax(top_k_filter(z, top_k)), top_p), min_p)
