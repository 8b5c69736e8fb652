"""The NumPy backend: the reference implementation of every op the model calls.

Each method is the plain-math twin of a CUDA kernel in `kernels/` (named in its docstring); the GPU and emulator
backends are tested against these. Everything stays float32: reductions and softmax included. A NumPy float64 scalar
would silently promote float32 arrays to float64 under NumPy 2, so constants here are Python floats, which do not.

Shape notation (see README): B batch, T query positions, S key positions, C model width, nh query heads,
n_kv key/value heads, hs head size, V vocabulary.
"""
import math

import numpy as np

from ..paged_cache import check_paged_args, check_paged_write, last_slot_places
from ..sampling import draw, filtered_probs, refuse_nan

# erfc(z) ~ t exp(-z^2 + P(t)) with t = 1 / (1 + z/2), z >= 0; P's coefficients from the constant term up to t^9.
# Numerical Recipes in C, 2nd ed. (1992), section 6.2, erfcc: a Chebyshev fit with "fractional error everywhere less
# than 1.2e-7", that is relative, so also in the far tail where erfc is tiny (used by gelu_exact).
ERFC_COEFFS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
               -0.82215223, 0.17087277)


class NumpyBackend:
    name = "numpy"
    max_head_dim = None  # any head size: the kernel backends hold a head in a warp's registers, 256 at most
    records_steps = False  # the cpu backend records a decode step's kernel calls to replay them (replayed_step.py)

    # -- moving data ---------------------------------------------------------------------------------------------

    def asarray(self, a, dtype=np.float32) -> np.ndarray:
        """Host array -> backend array (a no-op here; an upload on the GPU)."""
        return np.ascontiguousarray(a, dtype=dtype)

    def weight(self, a) -> np.ndarray:
        """A checkpoint tensor -> where the backend keeps weights (float32 here; float16 matrices on the GPU)."""
        return self.asarray(a)

    def tied_table(self, table) -> np.ndarray:
        """The embedding table (V, C) of a model whose output projection is its transpose (the checkpoint's tensor,
        in place of `weight`), stored as this backend reads it best. Column-major here, so that the projection
        `table.T` is a row-major (C, V) matrix: OpenBLAS streams x @ w with a row-major w 10-25% faster than with the
        transposed view of a row-major table (GPT-2's head: 24 vs 20 GB/s), and every decode step reads the whole
        projection, while the embedding gathers one row per token (C scattered reads, nothing beside a step). One copy
        in memory either way.
        """
        return np.asfortranarray(table, dtype=np.float32)  # (V, C), column-major

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def zeros(self, shape, dtype=np.float32) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    # -- the ops -------------------------------------------------------------------------------------------------

    def embedding(self, table, ids, scale: float = 1.0):
        """Row gather, times scale (Gemma: sqrt(C)). (V, C), int (B, T) -> (B, T, C).
        Kernel: embedding_gather in kernels/elementwise.cu."""
        rows = table[ids]  # (B, T, C)
        return rows if scale == 1.0 else rows * np.float32(scale)

    def linear(self, x, w, b=None):
        """x @ w + b. (..., in), (in, out), (out,) -> (..., out).  On every backend a BLAS matmul, not a kernel.

        Flattening the leading axes gives BLAS one matrix product instead of one per batch row. The form is chosen
        by shape, as measured (`make bench`): OpenBLAS's matrix product of 2 or 3 rows streams a large matrix at
        about a third of its matrix-vector product's speed, below the memory limit both should reach, so 2 or 3
        rows (a small batch's decode step) times a matrix of 1 MiB or more are one matrix-vector product each
        (GPT-2's matrices, one thread: 58 ms as products of 2 rows, 37 ms as 2 x 2 matrix-vector products). From 4
        rows on, or for a small matrix (where the cost is the call, not the bytes), the one product is as fast.
        """
        rows = x.reshape(-1, x.shape[-1])  # (R, in)
        by_row = 1 < len(rows) <= 3 and w.nbytes >= 2**20
        y = np.stack([row @ w for row in rows]) if by_row else rows @ w  # (R, out)
        y = y.reshape(*x.shape[:-1], w.shape[1])
        if b is not None:
            y += b
        return y

    def write_slots(self, buffer, x, start: int):
        """x (B, n, T, hs) into slots start .. start+T-1 of buffer (B, n, S, hs) (a KV cache layer's keys or values).
        Kernel: write_slots in kernels/attention_cpu.cpp (the cpu backend's)."""
        buffer[:, :, start : start + x.shape[2]] = x

    def paged_write(self, pool, x, block_tables, lengths):
        """x (B, n_kv, T, hs), each sequence's keys (or values) of its last T slots, into the pool
        (n_blocks, n_kv, bs, hs) at the slots paged_attention reads them from, through the block tables.
        Kernel: write_slots in kernels/attention_cpu.cpp (the cpu backend's)."""
        tables, lengths = check_paged_write(x.shape, pool.shape, block_tables, lengths)
        blocks, rows = last_slot_places(tables, lengths, x.shape[2], pool.shape[2])  # (B, T) x2
        pool[blocks, :, rows] = x.transpose(0, 2, 1, 3)  # pool[blocks, :, rows] is (B, T, n_kv, hs)

    def add(self, x, y):
        """Residual add. (B, T, C), (B, T, C) -> (B, T, C).  Kernel: residual_add in kernels/elementwise.cu."""
        return x + y

    def layer_norm(self, x, w, b, eps: float):
        """(x - mean) / sqrt(var + eps) * w + b over the last axis. (..., C) -> (..., C).  Kernel: kernels/norms.cu."""
        xc = x - mean_last(x)  # (..., C) the one new array: the rest is computed in place in it
        var = mean_last(np.square(xc))  # (..., 1) two passes: no cancellation from E[x^2] - E[x]^2
        xc *= 1.0 / np.sqrt(var + eps)
        xc *= w
        xc += b
        return xc  # (..., C)

    def rms_norm(self, x, w, eps: float):
        """x / sqrt(mean(x^2) + eps) * w over the last axis. (..., C) -> (..., C).  Kernel: kernels/norms.cu."""
        y = np.square(x)  # (..., C) the one new array: mean(x^2) is read from it, then it becomes the output
        ms = mean_last(y)  # (..., 1)
        np.multiply(x, 1.0 / np.sqrt(ms + eps), out=y)
        y *= w
        return y  # (..., C)

    def gelu(self, x):
        """GELU, tanh approximation (GPT-2's "gelu_new"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
        (...) -> (...).  Kernel: gelu in kernels/elementwise.cu.

        Written as in-place steps on one array: in a prefill each temporary of a (T, H) array is fresh memory the
        OS must map and zero, which took longer than the math (GPT-2, T=128: 2.9 ms a call as one expression).
        """
        c = math.sqrt(2.0 / math.pi)
        y = np.square(x)  # (...) x^2
        y *= 0.044715 * c
        y += c
        y *= x  # sqrt(2/pi) (x + 0.044715 x^3)
        np.tanh(y, out=y)
        y += 1.0
        y *= x
        y *= 0.5
        return y

    def gelu_exact(self, x):
        """GELU, exact form (Pythia's and Falcon's "gelu"): x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)). (...) -> (...).
        Kernel: gelu_exact in kernels/elementwise.cu.

        NumPy has no erf, so Phi comes from Numerical Recipes' erfc (ERFC_COEFFS): h = Phi(-|x|) = erfc(|x| / sqrt 2)
        / 2, and Phi(x) = 1 - h for x >= 0, h itself for x < 0. Using h itself, not 1 + erf(x / sqrt 2), which cancels
        for negative x, keeps the negative tail to float32's relative precision too. Measured against math.erf in
        float64 (tests/test_kernels.py): at most 1.1e-7 * max(1, |x|) off, and 6.2e-7 relative where |gelu| > 1e-3;
        further out the relative error grows with the rounding of x^2 in exp(-x^2 / 2), 6e-8 * x^2 / 2 (2.2e-6 at
        |x| <= 11, where gelu is -2e-27).
        Written in place in the output and one scratch array t, like gelu: Horner's rule in t needs t and the
        running sum at once, so one array cannot hold both. -inf gives NaN (-inf * 0), as gelu and torch do: an
        infinite activation means the model has overflowed, and the sampler refuses a NaN loudly.
        """
        t = np.abs(x)  # (...) becomes t = 1 / (1 + z/2), z = |x| / sqrt 2
        t *= 0.5 / math.sqrt(2.0)
        t += 1.0
        np.reciprocal(t, out=t)
        y = t * ERFC_COEFFS[-1]  # (...) P(t) by Horner's rule
        for c in reversed(ERFC_COEFFS[1:-1]):
            y += c
            y *= t
        y += ERFC_COEFFS[0]
        np.exp(y, out=y)
        y *= t  # t exp(P(t))
        with np.errstate(over="ignore"):  # |x| > 1.8e19: x^2 = inf, and exp(-inf) = 0 is the right limit
            np.square(x, out=t)
        t *= -0.5
        np.exp(t, out=t)  # exp(-z^2)
        y *= t
        y *= 0.5  # h = erfc(z) / 2 = Phi(-|x|)
        np.copysign(y, x, out=y)  # -h where x's sign bit is set (x < 0 and -0), h elsewhere
        np.signbit(x, out=t)  # 1.0 where the sign bit is set, else 0.0
        np.subtract(1.0, t, out=t)
        np.subtract(t, y, out=y)  # Phi(x): 1 - h for x >= +0, 0 - (-h) = h for x <= -0 (never 1 - (1 - h))
        y *= x
        return y

    def silu_mul(self, gate, up):
        """SwiGLU's gating: silu(gate) * up = gate / (1 + exp(-gate)) * up. (..., H), (..., H) -> (..., H).
        In place in one new array, as gelu.  Kernel: silu_mul in elementwise.cu."""
        y = np.negative(gate)  # (..., H)
        np.exp(y, out=y)
        y += 1.0
        np.divide(gate, y, out=y)
        y *= up
        return y

    def gelu_mul(self, gate, up):
        """GeGLU's gating (Gemma): gelu(gate) * up, GELU's tanh form. (..., H), (..., H) -> (..., H).
        Kernel: gelu_mul in elementwise.cu."""
        y = self.gelu(gate)
        y *= up
        return y

    def softcap(self, x, cap: float):
        """cap * tanh(x / cap): squashes x smoothly into (-cap, cap) (Gemma 2's final logits). (...) -> (...).
        Kernel: softcap in elementwise.cu."""
        return np.tanh(x * np.float32(1.0 / cap)) * np.float32(cap)

    def rope(self, x, cos, sin):
        """Rotary position embedding in the Hugging Face layout. (B, n, T, hs), (B, T, r/2) x2 -> (B, n, T, hs).

        The first r = 2 * cos.shape[-1] dimensions of each head rotate, the other hs - r pass through unchanged
        (r = hs for most models; Phi-4-mini rotates 3/4 of each head: partial_rotary_factor).
        Hugging Face checkpoints pair dimension i with i + r/2 ("rotate_half"), not (2i, 2i+1) as the original Meta
        code and llama2.c do; their converter permuted q/k weights so the two are equivalent.
        Kernel: rope in kernels/elementwise.cu.
        """
        half = cos.shape[-1]
        x1, x2 = x[..., :half], x[..., half : 2 * half]  # (B, n, T, r/2) x2: the pairs (i, i + r/2)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, r/2): the same rotation for every head
        y = np.empty_like(x)  # (B, n, T, hs)
        y1, y2 = y[..., :half], y[..., half : 2 * half]
        np.multiply(x1, cos, out=y1)
        y1 -= x2 * sin  # x1 cos - x2 sin
        np.multiply(x2, cos, out=y2)
        y2 += x1 * sin  # x2 cos + x1 sin
        y[..., 2 * half :] = x[..., 2 * half :]  # the dimensions past r pass through
        return y

    def softmax(self, x, axis=-1):
        """Max-subtracted softmax in float32; a row that is entirely -inf gives zeros, not NaN.

        (..., S) -> (..., S).  Kernel: kernels/softmax.cu.
        """
        return softmax_in_place(np.array(x, dtype=np.float32), axis)

    def attention(self, q, k, v, q_start: int, key_mask=None, *, scale: float | None = None,
                  softcap: float | None = None, window: int | None = None):
        """Causal grouped-query attention. (B, nh, T, hs), (B, n_kv, S, hs) x2 -> (B, nh, T, hs).

        Query t sits at key slot q_start + t and sees slots 0 .. q_start + t (prefill: q_start = 0, S = T; decode:
        T = 1, S = q_start + 1). key_mask (B, S) bool marks real keys; False hides padding from every query.
        Query head h reads key/value head h // (nh / n_kv), as Hugging Face's repeat_kv does, so the nh/n_kv query
        heads of a group are folded into the query axis and share one matmul with their K and V.
        What the families change: scale (default 1/sqrt(hs); Gemma 2/3: query_pre_attn_scalar ** -0.5); softcap
        (Gemma 2: each score becomes softcap * tanh(score / softcap) before the mask); window (Mistral, Gemma 2/3
        sliding layers: query t sees only the last `window` slots, q_start + t - window < j).
        Kernels: kernels/attention.cu (prefill: tiled online softmax; decode: split over S).
        """
        B, nh, T, hs = q.shape
        n_kv, S = k.shape[1], k.shape[2]
        g = nh // n_kv
        scale = 1.0 / math.sqrt(hs) if scale is None else scale
        qg = q.reshape(B, n_kv, g * T, hs)  # (B, n_kv, g*T, hs)
        att = qg @ k.transpose(0, 1, 3, 2)  # (B, n_kv, g*T, hs) x (B, n_kv, hs, S) -> (B, n_kv, g*T, S)
        att *= np.float32(scale)
        if softcap is not None:
            att = self.softcap(att, softcap)  # (B, n_kv, g*T, S)
        att = att.reshape(B, n_kv, g, T, S)  # -> (B, n_kv, g, T, S)
        distance = q_start + np.arange(T)[:, None] - np.arange(S)  # (T, S) query slot - key slot
        visible = (distance >= 0) & (distance < (S if window is None else window))  # (T, S) causal, windowed
        if key_mask is not None:
            visible = visible & key_mask[:, None, None, None, :]  # (B, 1, 1, T, S)
        if not visible.all():  # a decode step without padding or window sees every key: nothing to hide
            np.copyto(att, -np.inf, where=~visible)  # (B, n_kv, g, T, S) hidden keys get no weight
        att = softmax_in_place(att)  # (B, n_kv, g, T, S)
        y = att.reshape(B, n_kv, g * T, S) @ v  # (B, n_kv, g*T, S) x (B, n_kv, S, hs) -> (B, n_kv, g*T, hs)
        return y.reshape(B, nh, T, hs)

    def sample(self, logits, u, temperature: float, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
               ) -> np.ndarray:
        """One token per row: temperature, top-k, softmax, top-p, min-p, inverse-CDF draw. (B, V), u (B,) -> int64 (B,)

        Row b is nanollm.sampling's pipeline: the first argmax when temperature is 0 (as torch.argmax), else
        draw(filtered_probs(logits[b], temperature, top_k, top_p, min_p), u[b]). u holds one uniform number in
        [0, 1) per row, so the result is a pure function of its arguments. NaN logits are a ValueError.
        Kernel: sample_rows in kernels/sampling.cu (the same token, except where float32 rounding sits on a boundary:
        its header says exactly when).
        """
        if temperature == 0:
            ids = logits.argmax(axis=-1)  # (B,)
            refuse_nan(logits[np.arange(len(ids)), ids])  # (B,) each row's value at its argmax is NaN if it holds one
            return ids.astype(np.int64)
        rows = [filtered_probs(row, temperature, top_k, top_p, min_p) for row in logits]  # B x (V,) unnormalised
        return np.array([draw(probs, u[b]) for b, probs in enumerate(rows)], dtype=np.int64)  # (B,)

    def paged_attention(self, q, k_pool, v_pool, block_tables, lengths, *, scale: float | None = None,
                        softcap: float | None = None, window: int | None = None):
        """Attention of a ragged batch over a paged KV cache (nanollm/paged_cache.py).
        (B, nh, T, hs), (n_blocks, n_kv, bs, hs) x2, int (B, max_blocks), int (B,) -> (B, nh, T, hs)

        Sequence b holds lengths[b] slots; slot j is row j % bs of block block_tables[b, j // bs]. Its T queries are
        its last T slots (a decode step: T = 1, the token just written; a prefill: its T new tokens), causal, with
        attention's scale, softcap and window. Written as gather, then attend: every sequence's slots are copied
        into one contiguous (B, n_kv, S, hs), S the longest length, each right-aligned (its last slot at S - 1, the
        slots before its first hidden by the key mask, as left padding is), and `attention` runs on them unchanged,
        once for the whole batch. Paging changes where keys lie, not the math, and written this way it cannot change
        the math here: equality with attention over a contiguous cache holds by construction, and the kernel, which
        reads the keys in place through the table, is tested against this. The copy is the cost the kernel avoids.
        Kernel: kernels/paged_attention.cu.
        """
        T = q.shape[2]
        tables, lengths = check_paged_args(q.shape, k_pool.shape, v_pool.shape, block_tables, lengths)
        bs, S = k_pool.shape[2], int(lengths.max())
        slot = np.arange(S) - (S - lengths[:, None])  # (B, S) each column's slot in its sequence; < 0: padding
        real = slot >= 0  # (B, S)
        slot = np.where(real, slot, 0)  # padding reads slot 0 (every sequence has one), then is hidden
        blocks = np.take_along_axis(tables, slot // bs, axis=1)  # (B, S) the pool block of each slot
        k = k_pool[blocks, :, slot % bs].transpose(0, 2, 1, 3)  # (B, S, n_kv, hs) -> (B, n_kv, S, hs)
        v = v_pool[blocks, :, slot % bs].transpose(0, 2, 1, 3)  # (B, n_kv, S, hs)
        return self.attention(q, k, v, S - T, None if real.all() else real, scale=scale, softcap=softcap,
                              window=window)  # (B, nh, T, hs): queries at columns S-T .. S-1


def mean_last(x: np.ndarray) -> np.ndarray:
    """x.mean(axis=-1, keepdims=True), the same float32 sum and division, without np.mean's Python wrapper (a decode
    step makes 50 of these, each a few microseconds of the wrapper around a sum of 768 numbers). (..., C) -> (..., 1)"""
    total = np.add.reduce(x, axis=-1, keepdims=True)  # (..., 1)
    total /= x.shape[-1]
    return total


def softmax_in_place(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """softmax of a float32 array, computed in x itself (attention's scores are a fresh array it may overwrite).

    Max-subtracted, so every exp is in (0, 1]; a row that is entirely -inf (every key hidden) gives zeros, not NaN.
    """
    m = x.max(axis=axis, keepdims=True)  # (..., 1)
    m[~np.isfinite(m)] = 0.0  # fully masked row: exp(-inf - 0) = 0 everywhere
    x -= m
    np.exp(x, out=x)  # (..., S)
    s = x.sum(axis=axis, keepdims=True)  # (..., 1)
    s[s == 0.0] = 1.0  # the fully masked row stays zeros
    x /= s
    return x
