"""Every CUDA kernel in kernels/ against its NumPy twin, on the emulator and (where a GPU is visible) on CuPy.

Each property test draws shapes that are not multiples of the block size (including 1) and plants extreme values
(+-1e4, +-inf, NaN, -inf masks, ties, float16's largest and smallest values) in seeded random data; the NumPy
reference is NumpyBackend (or nanollm.sampling for the sampler). Every option of an op is drawn, and for attention
every combination of its options (scale, softcap, window) is a test case of its own.
Tolerances per dtype and kind of op (FLOAT32_RTOL, ATTENTION_RTOL, exact for gathers) are tests/kernel_harness.py's.
Shapes stay small because the emulator runs every CUDA thread as a fiber.
"""
import itertools
import math
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.backends import kernel_backend
from nanollm.backends.kernel_backend import attention_block
from nanollm.backends.numpy_backend import NumpyBackend
from nanollm.kernels import KERNELS_DIR, build
from nanollm.sampling import sample_token, softmax as ref_softmax, top_k_filter
from tests.kernel_harness import ATTENTION_RTOL, FLOAT32_RTOL, KERNEL_BACKENDS, assert_close, make_backend

REF = NumpyBackend()
EXAMPLES = settings(max_examples=12)
NEW_OPS_EXAMPLES = settings(max_examples=40)  # the ops issue 10 added or changed: cheap, so drawn more


@pytest.fixture(scope="module", params=KERNEL_BACKENDS)
def be(request):
    return make_backend(request.param)


def planted(rng, shape, extremes=(1e4, -1e4), p=0.1, scale=3.0):
    """Normal float32 data with a fraction p of entries replaced by extreme values and a few exact ties."""
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    flat = x.reshape(-1)
    if flat.size:
        hits = rng.random(flat.size) < p
        flat[hits] = rng.choice(np.array(extremes, dtype=np.float32), size=int(hits.sum()))
        ties = rng.integers(0, flat.size, size=max(1, flat.size // 8))
        flat[ties] = flat[ties[0]]  # a group of exactly equal values
    return x


# -- softmax ------------------------------------------------------------------------------------------------------


@EXAMPLES
@given(rows=st.integers(1, 5), cols=st.integers(1, 300), seed=st.integers(0, 2**32 - 1), masked_row=st.booleans())
def test_softmax_matches_numpy(be, rows, cols, seed, masked_row):
    rng = np.random.default_rng(seed)
    x = planted(rng, (rows, cols), extremes=(1e4, -1e4, -np.inf))
    if masked_row:
        x[rng.integers(rows)] = -np.inf  # fully masked: defined as zeros
    got = be.to_numpy(be.softmax(be.asarray(x)))
    assert_close(got, REF.softmax(x), FLOAT32_RTOL, "softmax")
    assert np.array_equal(got == 0, REF.softmax(x) == 0)  # masked entries are exactly zero on both sides


@EXAMPLES
@given(heads=st.integers(1, 3), T=st.integers(1, 9), q_start=st.integers(0, 40), extra=st.integers(0, 5),
       scale=st.sampled_from([1.0, 0.125, 2.5]), seed=st.integers(0, 2**32 - 1))
def test_softmax_scale_and_causal_mask(be, heads, T, q_start, extra, scale, seed):
    """Scaled scores under a causal mask, as a caller builds them: row r (query t = r % T at slot q_start + t) sees
    columns <= q_start + t of scale * x, the rest are -inf (rows with many -inf columns, and few visible ones)."""
    S = q_start + T + extra
    x = planted(np.random.default_rng(seed), (heads, T, S))
    visible = np.arange(S) <= q_start + np.arange(T)[:, None]  # (T, S)
    masked = np.where(visible, x * np.float32(scale), -np.inf).astype(np.float32)  # (heads, T, S)
    want = REF.softmax(masked)
    got = be.to_numpy(be.softmax(be.asarray(masked)))
    assert_close(got, want, FLOAT32_RTOL, "masked softmax")


def test_softmax_other_axis(be):
    """axis=0 is the same kernel on the transposed rows."""
    x = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
    got = be.to_numpy(be.softmax(be.asarray(x), axis=0))
    assert_close(got, REF.softmax(x, axis=0), FLOAT32_RTOL, "softmax axis 0")


def test_softmax_hand_example(be):
    """softmax([0, ln 3]) = [1/4, 3/4]; +1e4 beside 0 gives [1, 0] (exp(-1e4) underflows); all -inf gives zeros."""
    x = np.array([[0.0, math.log(3.0)], [1e4, 0.0], [-np.inf, -np.inf]], dtype=np.float32)
    got = be.to_numpy(be.softmax(be.asarray(x)))
    np.testing.assert_allclose(got, [[0.25, 0.75], [1.0, 0.0], [0.0, 0.0]], rtol=1e-6)


# -- norms ----------------------------------------------------------------------------------------------------------


@EXAMPLES
@given(rows=st.integers(1, 4), C=st.integers(1, 300), offset=st.floats(-10, 10), eps=st.sampled_from([1e-5, 1e-6]),
       seed=st.integers(0, 2**32 - 1))
def test_norms_match_numpy(be, rows, C, offset, eps, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, C)) * 2 + offset).astype(np.float32)
    w = rng.standard_normal(C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    got = be.to_numpy(be.layer_norm(be.asarray(x), be.asarray(w), be.asarray(b), eps))
    assert_close(got, REF.layer_norm(x, w, b, eps), FLOAT32_RTOL, "layer_norm")
    got = be.to_numpy(be.rms_norm(be.asarray(x), be.asarray(w), eps))
    assert_close(got, REF.rms_norm(x, w, eps), FLOAT32_RTOL, "rms_norm")


def test_norms_hand_example(be):
    """x = [1, 3]: mean 2, var 1 -> LayerNorm (eps 0) [-1, 1]; RMS = sqrt(5) -> RMSNorm [1, 3] / sqrt(5)."""
    x, ones, zeros = (np.array(a, dtype=np.float32) for a in ([[1.0, 3.0]], [1.0, 1.0], [0.0, 0.0]))
    ln = be.to_numpy(be.layer_norm(be.asarray(x), be.asarray(ones), be.asarray(zeros), 0.0))
    rms = be.to_numpy(be.rms_norm(be.asarray(x), be.asarray(ones), 0.0))
    np.testing.assert_allclose(ln, [[-1.0, 1.0]], rtol=1e-6)
    np.testing.assert_allclose(rms, [[1 / math.sqrt(5), 3 / math.sqrt(5)]], rtol=1e-6)


@NEW_OPS_EXAMPLES
@given(B=st.integers(1, 2), n=st.integers(1, 4), T=st.integers(1, 6), hs=st.sampled_from([1, 7, 64, 128, 256]),
       seed=st.integers(0, 2**32 - 1))
def test_qk_norms_match_numpy(be, B, n, T, hs, seed):
    """The q/k norms are rms_norm_rows on other rows: Qwen3 and Gemma 3 normalise each head, given as the strided
    (B, n, T, hs) view of the fused projection that model.attention slices (weight (hs,)); OLMo-2 normalises the
    whole projection width (rows of n*hs, weight (n*hs,))."""
    rng = np.random.default_rng(seed)
    proj = planted(rng, (B, T, 2 * n, hs))
    heads_be = be.asarray(proj).transpose(0, 2, 1, 3)[:, :n]  # (B, n, T, hs) view
    heads = np.ascontiguousarray(proj.transpose(0, 2, 1, 3)[:, :n])
    w = rng.standard_normal(hs).astype(np.float32)
    got = be.to_numpy(be.rms_norm(heads_be, be.asarray(w), 1e-6))
    assert_close(got, REF.rms_norm(heads, w, 1e-6), FLOAT32_RTOL, "per-head q/k norm")
    wide, w_wide = proj[:, :, :n].reshape(B, T, n * hs), rng.standard_normal(n * hs).astype(np.float32)
    got = be.to_numpy(be.rms_norm(be.asarray(wide), be.asarray(w_wide), 1e-6))
    assert_close(got, REF.rms_norm(wide, w_wide, 1e-6), FLOAT32_RTOL, "whole-width q/k norm")


# -- elementwise ----------------------------------------------------------------------------------------------------


@NEW_OPS_EXAMPLES
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 70)), cap=st.sampled_from([0.5, 5.0, 30.0]),
       seed=st.integers(0, 2**32 - 1))
def test_elementwise_match_numpy(be, shape, cap, seed):
    rng = np.random.default_rng(seed)
    x, y = planted(rng, shape), planted(rng, shape)
    assert_close(be.to_numpy(be.add(be.asarray(x), be.asarray(y))), REF.add(x, y), FLOAT32_RTOL, "residual_add")
    # For negative x, 1 + tanh(.) cancels: one float32 ulp of tanh (6e-8) becomes an absolute error of up to
    # |x| * 6e-8 in the output, whatever the kernel does; hence the input-scaled floor (times |up| for gelu_mul).
    gelu_floor = 1e-7 * float(np.abs(x).max())
    assert_close(be.to_numpy(be.gelu(be.asarray(x))), REF.gelu(x), FLOAT32_RTOL, "gelu", atol=gelu_floor)
    assert_close(be.to_numpy(be.gelu_mul(be.asarray(x), be.asarray(y))), REF.gelu_mul(x, y), FLOAT32_RTOL,
                 "gelu_mul", atol=1e-7 * float(np.abs(x * y).max()))
    # gelu_exact needs no such floor: the kernel's erfcf and the twin's erfc both avoid 1 + erf, so neither cancels.
    assert_close(be.to_numpy(be.gelu_exact(be.asarray(x))), REF.gelu_exact(x), FLOAT32_RTOL, "gelu_exact")
    with np.errstate(over="ignore"):  # exp(1e4) = inf in the reference: silu(-1e4) = -1e4 / inf = -0
        want = REF.silu_mul(x, y)
    assert_close(be.to_numpy(be.silu_mul(be.asarray(x), be.asarray(y))), want, FLOAT32_RTOL, "silu_mul")
    logits = planted(rng, shape, extremes=(1e4, -1e4, np.inf, -np.inf, np.nan))  # -inf: a masked logit
    assert_close(be.to_numpy(be.softcap(be.asarray(logits), cap)), REF.softcap(logits, cap), FLOAT32_RTOL,
                 f"softcap {cap}")


def test_gated_and_capped_hand_example(be):
    """gelu(10) = 10 (tanh saturates to 1), so gelu_mul(10, 2) = 20, and gelu(0) * 5 = 0. softcap with cap 2 maps
    0 -> 0, ln 3 -> 2 tanh(ln(3) / 2) = 2 * (3 - 1) / (3 + 1) = 1, 1e4 -> 2 and -inf -> -2: never past the cap."""
    gate, up = np.array([10.0, 0.0], np.float32), np.array([2.0, 5.0], np.float32)
    np.testing.assert_allclose(be.to_numpy(be.gelu_mul(be.asarray(gate), be.asarray(up))), [20.0, 0.0], rtol=1e-6)
    x = np.array([0.0, math.log(3.0), 1e4, -np.inf], np.float32)
    np.testing.assert_allclose(be.to_numpy(be.softcap(be.asarray(x), 2.0)), [0.0, 1.0, 2.0, -2.0], rtol=1e-6)


def gelu_exact_float64(x):
    """x Phi(x) in float64 from math.erfc: 0.5 x erfc(-x / sqrt 2). Not 1 + erf(x / sqrt 2): in float64 too that
    cancels, to 0 from x = -8.5 down, where the float32 twin still has digits to check."""
    x64 = np.asarray(x, dtype=np.float64)
    return 0.5 * x64 * np.vectorize(math.erfc)(-x64 / math.sqrt(2.0))


@NEW_OPS_EXAMPLES
@given(values=st.lists(st.one_of(st.floats(-16, 16, width=32), st.floats(-2.0**100, 2.0**100, width=32)), min_size=1,
                      max_size=200))  # mostly where Phi is neither 0 nor 1 in float32, and some far out
def test_gelu_exact_numpy_matches_float64_erf(values):
    """The NumPy twin against float64 math: absolute error at most 2e-7 * max(1, |x|), relative error at most
    1e-6 + 6e-8 * x^2 wherever Phi(x) is a normal float32.

    Why these numbers: the output's own rounding is 6e-8 relative and Numerical Recipes' erfc adds at most 1.2e-7
    relative (measured worst: 1.1e-7 * max(1, |x|) absolute, 6.2e-7 relative, at x = -3.2). In the negative tail
    the float32 rounding of x^2 (6e-8 * x^2 relative) becomes a relative error of 6e-8 * x^2 / 2 of exp(-x^2 / 2);
    the bound allows twice that. Below Phi(x) ~ 1e-37 (x < -13) float32 itself has no relative precision left."""
    x = np.array(values, dtype=np.float32)
    got, want = REF.gelu_exact(x), gelu_exact_float64(x)
    assert got.dtype == np.float32
    x64, err = x.astype(np.float64), np.abs(got - want)
    assert np.all(err <= 2e-7 * np.maximum(1.0, np.abs(x64))), (x[err.argmax()], got[err.argmax()])
    normal = np.abs(want) >= 1e-37 * np.maximum(1.0, np.abs(x64))
    rel = err[normal] / np.abs(want[normal])
    assert np.all(rel <= 1e-6 + 6e-8 * x64[normal] ** 2), (x[normal][rel.argmax()], rel.max())


def test_gelu_exact_hand_values(be):
    """gelu_exact(x) = x Phi(x), Phi the standard normal CDF: Phi(0) = 1/2 so 0 -> 0 keeping its sign; Phi(1) =
    0.8413447 and Phi(-1) = 1 - Phi(1) (printed tables); Phi(10) = 1 - 8e-24, 1 in float32, so 10 -> 10 exactly;
    -10 -> -10 * 7.6e-24 = -7.6e-23, still a float32 (no cancellation hides it); -1e4 -> -0.0 (Phi underflows).
    +inf -> +inf; -inf -> NaN (-inf * 0) as GPT-2's tanh gelu and torch give it: an overflowed activation stays
    visible. Same on the NumPy twin and the kernel; the input is left as it was and the output is float32."""
    x = np.array([0.0, -0.0, 1.0, -1.0, 10.0, -10.0, 1e4, -1e4, np.inf, -np.inf, np.nan], dtype=np.float32)
    before = x.copy()
    for backend in (REF, be):
        with np.errstate(invalid="ignore"):  # -inf * 0
            got = backend.to_numpy(backend.gelu_exact(backend.asarray(x)))
        assert got.dtype == np.float32
        assert x.tobytes() == before.tobytes()
        np.testing.assert_allclose(got[:8], [0.0, 0.0, 0.8413447460685429, -0.15865525393145707, 10.0,
                                             -7.619853024160593e-23, 1e4, 0.0], rtol=2e-6, atol=0)
        assert list(np.signbit(got[:2])) == [False, True]  # +0 -> +0, -0 -> -0
        assert got[4] == 10.0 and got[6] == 1e4 and got[7] == 0.0 and np.signbit(got[7])
        assert got[8] == np.inf and np.isnan(got[9]) and np.isnan(got[10])


def test_elementwise_refuses_inputs_of_different_shapes(be):
    """The kernels index every input by the output's index: a smaller input would be read past its end."""
    with pytest.raises(ValueError, match=r"gelu_mul takes inputs of one shape, got \(2, 3\), \(3,\)"):
        be.gelu_mul(be.zeros((2, 3)), be.zeros((3,)))


@NEW_OPS_EXAMPLES
@given(B=st.integers(1, 2), n=st.integers(1, 3), T=st.integers(1, 9), half=st.integers(1, 20),
       passed=st.integers(0, 9), fused=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_rope_matches_numpy(be, B, n, T, half, passed, fused, seed):
    """Partial rotary: the first r = 2*half dims of hs = r + passed rotate, the rest pass through (passed = 0: all
    rotate). cos/sin are any (B, T, r/2) tables, not only unit ones (LongRoPE scales them). x is contiguous, or
    (fused) a strided head slice of a (B, T, 2n, hs) projection as model.attention makes it."""
    rng = np.random.default_rng(seed)
    hs = 2 * half + passed
    angles = rng.uniform(-1e3, 1e3, size=(B, T, half))  # (B, T, r/2)
    amplitude = rng.uniform(0.5, 1.5)
    cos, sin = (np.cos(angles) * amplitude).astype(np.float32), (np.sin(angles) * amplitude).astype(np.float32)
    if fused:
        proj = be.asarray(planted(rng, (B, T, 2 * n, hs)))
        x_be = proj.transpose(0, 2, 1, 3)[:, n:]  # (B, n, T, hs) view: strides of the projection
    else:
        x_be = be.asarray(planted(rng, (B, n, T, hs)))
    x = be.to_numpy(x_be)
    got = be.to_numpy(be.rope(x_be, be.asarray(cos), be.asarray(sin)))
    assert_close(got, REF.rope(x, cos, sin), FLOAT32_RTOL, "rope")
    assert np.array_equal(got[..., 2 * half :], x[..., 2 * half :])  # passed through bit for bit


def test_rope_partial_hand_example(be):
    """hs = 6 with r = 4 (half = 2) at a quarter turn (cos 0, sin 1): dims (0, 2) and (1, 3) rotate,
    y0 = x0*0 - x2*1 = -3, y1 = -4, y2 = x2*0 + x0*1 = 1, y3 = 2; dims 4 and 5 pass: [-3, -4, 1, 2, 5, 6]."""
    x = np.arange(1.0, 7.0, dtype=np.float32).reshape(1, 1, 1, 6)
    cos, sin = np.zeros((1, 1, 2), np.float32), np.ones((1, 1, 2), np.float32)
    got = be.to_numpy(be.rope(be.asarray(x), be.asarray(cos), be.asarray(sin)))
    assert got.reshape(-1).tolist() == [-3.0, -4.0, 1.0, 2.0, 5.0, 6.0]


def test_rope_refuses_tables_that_do_not_fit(be):
    """cos/sin wider than half a head, or of another (B, T), would be read past their ends."""
    x = be.zeros((1, 2, 3, 8))
    for table in (be.zeros((1, 3, 5)), be.zeros((1, 2, 4)), be.zeros((2, 3, 4))):
        with pytest.raises(ValueError, match=r"rope takes cos and sin of shape \(B, T, r/2\) = \(1, 3, r/2\)"):
            be.rope(x, table, table)


@NEW_OPS_EXAMPLES
@given(V=st.integers(1, 50), C=st.integers(1, 70), shape=st.tuples(st.integers(1, 3), st.integers(1, 6)),
       scale=st.sampled_from([1.0, 0.5, math.sqrt(2048), 1e-3]), seed=st.integers(0, 2**32 - 1))
def test_embedding_matches_numpy(be, V, C, shape, scale, seed):
    """Rows times scale (Gemma: sqrt(C)) from float32 and float16 tables, with float16's extremes (65504, the
    smallest subnormal, +-inf, NaN) planted: bit-equal to the twin, one float32 multiply on each side."""
    rng = np.random.default_rng(seed)
    table = planted(rng, (V, C), extremes=(65504.0, -65504.0, 6e-8, np.inf, -np.inf, np.nan))
    ids = rng.integers(0, V, size=shape)
    for t in (table, table.astype(np.float16)):
        got = be.to_numpy(be.embedding(be.xp.asarray(t), ids, scale))
        want = np.asarray(REF.embedding(t, ids, scale), dtype=np.float32)  # scale 1 leaves the twin in float16
        assert got.dtype == np.float32 and np.array_equal(got, want, equal_nan=True), f"{t.dtype} table, {scale}"


def test_embedding_refuses_ids_outside_the_table(be):
    """An id past the table, or a negative one (NumPy's twin would wrap it around), is an IndexError naming the
    range, not a read outside the table."""
    table = be.asarray(np.zeros((5, 3)))
    for ids in ([[0, 5]], [[-1, 2]]):
        with pytest.raises(IndexError, match=r"token ids must lie in 0 \.\. 4"):
            be.embedding(table, np.array(ids))


def test_half_to_float_every_bit_pattern(be):
    """embedding_gather_f16 widens binary16 by hand: all 65536 patterns (subnormals, +-inf, NaN) must equal NumPy's."""
    table = np.arange(65536, dtype=np.uint16).view(np.float16).reshape(256, 256)
    got = be.to_numpy(be.embedding(be.xp.asarray(table), np.arange(256)[None]))[0]
    want = table.astype(np.float32)
    assert np.array_equal(got, want, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(want))  # -0.0 stays -0.0


# -- attention ------------------------------------------------------------------------------------------------------


def attention_inputs(rng, B, n_kv, g, T, S, hs, max_len, fused, peaked=False):
    """The arrays the model hands to attention: q_source is (B, nh, T, hs), or with `fused` the whole (B, T,
    nh + 2*n_kv, hs) projection that q_view slices strided; k and v are full KV-cache buffers, S slots filled.
    peaked: queries 10x larger, so scores reach the hundreds and each softmax is nearly one-hot."""
    nh = n_kv * g
    q_source = rng.standard_normal((B, T, nh + 2 * n_kv, hs) if fused else (B, nh, T, hs)).astype(np.float32)
    if peaked:
        q_source *= 10
    cache_k = np.zeros((B, n_kv, max_len, hs), np.float32)
    cache_v = np.zeros((B, n_kv, max_len, hs), np.float32)
    cache_k[:, :, :S] = rng.standard_normal((B, n_kv, S, hs)) * 2
    cache_v[:, :, :S] = rng.standard_normal((B, n_kv, S, hs))
    return q_source, cache_k, cache_v


def q_view(q_source, nh, fused):
    """(B, nh, T, hs): a strided slice of the fused projection, as model.attention makes it, or the array itself."""
    return q_source.transpose(0, 2, 1, 3)[:, :nh] if fused else q_source


def run_attention(be, q_source, nh, fused, cache_k, cache_v, S, q_start, key_mask, **options):
    """(kernel output, NumPy reference) with k/v passed as views of the cache buffers, as KVCache.update returns."""
    q_be = q_view(be.asarray(q_source), nh, fused)
    k_be, v_be = be.asarray(cache_k)[:, :, :S], be.asarray(cache_v)[:, :, :S]
    got = be.to_numpy(be.attention(q_be, k_be, v_be, q_start, key_mask, **options))
    q = np.ascontiguousarray(q_view(q_source, nh, fused))
    want = REF.attention(q, cache_k[:, :, :S], cache_v[:, :, :S], q_start, key_mask, **options)
    return got, want


# Every combination of the three options given or left at their default, each drawn from values that matter:
# scale 1.0 (no 1/sqrt(hs)) with peaked queries makes the largest scores; softcap 1.0 saturates most of them;
# windows of 1 (only the query's own slot), around the 32-key tile, and wider than any S drawn.
OPTION_SETS = list(itertools.product((False, True), repeat=3))
OPTION_VALUES = dict(scale=[0.05, 0.5, 1.0], softcap=[1.0, 5.0, 50.0], window=[1, 2, 7, 31, 32, 33, 70, 200])


def draw_options(data, given_options) -> dict:
    """{option: a drawn value} for each (scale, softcap, window) flag that is set; the rest keep the default."""
    return {name: data.draw(st.sampled_from(OPTION_VALUES[name]), label=name)
            for name, given_option in zip(("scale", "softcap", "window"), given_options) if given_option}


def options_id(given_options) -> str:
    return "+".join(n for n, on in zip(("scale", "softcap", "window"), given_options) if on) or "defaults"


@pytest.mark.parametrize("given_options", OPTION_SETS, ids=options_id)
@settings(max_examples=25)
@given(B=st.integers(1, 2), n_kv=st.integers(1, 2), g=st.sampled_from([1, 2, 3, 4]), T=st.integers(1, 40),
       cached=st.integers(0, 30), hs=st.sampled_from([1, 5, 33, 64, 65, 128, 129, 256]), masked=st.booleans(),
       fused=st.booleans(), peaked=st.booleans(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_prefill_attention_matches_numpy(be, given_options, B, n_kv, g, T, cached, hs, masked, fused, peaked, seed,
                                         data):
    """T queries after `cached` positions already in the cache (q_start = cached), GQA ratio g (MQA when n_kv = 1),
    keys spanning 1 .. 3 tiles of 32, every head-size bucket, optionally a padding mask that may hide every key a
    query sees (its window included): that query's output is 0 on both sides."""
    rng = np.random.default_rng(seed)
    S = cached + T
    q, ck, cv = attention_inputs(rng, B, n_kv, g, T, S, hs, S + 3, fused, peaked)
    key_mask = rng.random((B, S)) < 0.8 if masked else None
    if masked:
        key_mask[0, : min(S, 5)] = False  # left padding: the first queries of row 0 see nothing
    options = draw_options(data, given_options)
    got, want = run_attention(be, q, n_kv * g, fused, ck, cv, S, cached, key_mask, **options)
    assert_close(got, want, ATTENTION_RTOL, f"prefill attention {options}")


@pytest.mark.parametrize("given_options", OPTION_SETS, ids=options_id)
@settings(max_examples=25)
@given(B=st.integers(1, 2), n_kv=st.integers(1, 2), g=st.sampled_from([1, 2, 4]), S=st.integers(1, 150),
       pad=st.integers(0, 150), hs=st.sampled_from([8, 31, 64, 100, 256]), peaked=st.booleans(),
       seed=st.integers(0, 2**32 - 1), data=st.data())
def test_decode_attention_matches_numpy(be, given_options, B, n_kv, g, S, pad, hs, peaked, seed, data):
    """One query at slot S-1 against S cached keys: split into 32-key chunks when its window holds more than 32
    (LAUNCH_OPTIONS). Left padding of up to 150 slots masks whole chunks, whose (m = -inf, l = 0) partials the
    combine kernel must skip, and may hide every key the window leaves (the query's own slot too): output 0."""
    rng = np.random.default_rng(seed)
    q, ck, cv = attention_inputs(rng, B, n_kv, g, 1, S, hs, S + 1, False, peaked)
    key_mask = np.ones((B, S), dtype=bool)
    key_mask[-1, :pad] = False  # the last row is left-padded
    options = draw_options(data, given_options)
    got, want = run_attention(be, q, n_kv * g, False, ck, cv, S, S - 1, key_mask, **options)
    assert_close(got, want, ATTENTION_RTOL, f"decode attention {options}")


def test_decode_launches_only_the_chunks_inside_the_window(be, monkeypatch):
    """S = 200 keys, window 40, 32-key chunks: the query at slot 199 sees slots 160..199, so 2 chunks start
    (160..191 and 192..199) instead of the 7 that cover all 200 keys, and the answer is the twin's."""
    launches = []
    kernel = be._kernel

    def recording(file, name):
        launch = kernel(file, name)

        def recorded(grid, *args, **kwargs):
            launches.append((name, grid))
            return launch(grid, *args, **kwargs)

        return recorded

    monkeypatch.setattr(be, "_kernel", recording)
    q, ck, cv = attention_inputs(np.random.default_rng(5), 1, 1, 2, 1, 200, 64, 200, fused=False)
    got, want = run_attention(be, q, 2, False, ck, cv, 200, 199, None, window=40)
    assert_close(got, want, ATTENTION_RTOL, "windowed decode")
    assert launches == [("attention_decode_split_hs64", (1, 1, 2)), ("attention_decode_combine", (2, 1))]


def test_attention_largest_head_gemma2_options(be):
    """hs = 256 (the largest bucket, 8 dims per lane) with Gemma 2's options: softcap 50, scale 1/sqrt(256) given
    explicitly, a window of 40 over T = S = 90 (three key tiles, of which a late query skips the first)."""
    rng = np.random.default_rng(1)
    q, ck, cv = attention_inputs(rng, 1, 1, 2, 90, 90, 256, 90, fused=False)
    got, want = run_attention(be, q, 2, False, ck, cv, 90, 0, None, scale=1 / 16, softcap=50.0, window=40)
    assert_close(got, want, ATTENTION_RTOL, "attention hs=256")


def test_head_size_256_stays_within_48_kb_of_shared_memory(be):
    """32 warps asked for at hs = 256 would need (32*256 + 32*257) floats = 65 KB; the launcher caps the block at
    15 warps (15*256 + 32*257 floats = 48,256 bytes <= 49,152), and the emulator, like a GPU without the opt-in
    attribute, refuses any launch over 48 KB: so a wrong cap fails here."""
    assert attention_block(256, 40, 32) == (15, 48256)
    assert attention_block(64, 40, 32) == (32, (32 * 64 + 32 * 65) * 4)
    wide = make_backend(be.name, attention_warps=32)
    q, ck, cv = attention_inputs(np.random.default_rng(2), 1, 1, 4, 10, 10, 256, 10, fused=False)
    got, want = run_attention(wide, q, 4, False, ck, cv, 10, 0, None)
    assert_close(got, want, ATTENTION_RTOL, "attention hs=256, 15 warps")


def test_attention_hand_example(be):
    """Two keys with equal scores (q = 0): query 0 sees only key 0 -> v0; query 1 averages -> (v0 + v1) / 2."""
    q = np.zeros((1, 1, 2, 2), np.float32)
    k = np.ones((1, 1, 2, 2), np.float32)
    v = np.array([[[[2.0, 0.0], [0.0, 4.0]]]], np.float32)
    got = be.to_numpy(be.attention(be.asarray(q), be.asarray(k), be.asarray(v), 0))
    np.testing.assert_allclose(got, [[[[2.0, 0.0], [1.0, 2.0]]]], rtol=1e-6)


def test_attention_window_and_softcap_hand_example(be):
    """Window 2, equal scores: query 0 sees key 0 -> v0 = [2, 0]; query 1 keys 0, 1 -> [1, 2]; query 2 keys 1, 2
    (key 0 left the window) -> (v1 + v2) / 2 = [3, 5].
    Soft-cap ln 3: scores 0 and 1000 become 0 and ln(3) tanh(1000 / ln 3) = ln 3, so the weights are
    1 : 3 = [1/4, 3/4] and query 1 gets [4, 0] / 4 + 3 [0, 4] / 4 = [1, 3] (without the cap: [0, 4])."""
    q = np.zeros((1, 1, 3, 2), np.float32)
    k = np.ones((1, 1, 3, 2), np.float32)
    v = np.array([[[[2.0, 0.0], [0.0, 4.0], [6.0, 6.0]]]], np.float32)
    got = be.to_numpy(be.attention(be.asarray(q), be.asarray(k), be.asarray(v), 0, window=2))
    np.testing.assert_allclose(got, [[[[2.0, 0.0], [1.0, 2.0], [3.0, 5.0]]]], rtol=1e-6)
    q = np.array([[[[1.0, 0.0], [1.0, 0.0]]]], np.float32)
    k = np.array([[[[0.0, 0.0], [1000.0, 0.0]]]], np.float32)
    v = np.array([[[[4.0, 0.0], [0.0, 4.0]]]], np.float32)
    got = be.to_numpy(be.attention(be.asarray(q), be.asarray(k), be.asarray(v), 0, scale=1.0, softcap=math.log(3)))
    np.testing.assert_allclose(got, [[[[4.0, 0.0], [1.0, 3.0]]]], rtol=1e-6)


def test_attention_refuses_what_it_cannot_compute(be):
    """A head over 256 dims (no bucket holds it) and k/v whose shape does not match q (they would be read past
    their ends) are ValueErrors that say which."""
    q = be.zeros((1, 1, 1, 258))
    with pytest.raises(ValueError, match="head sizes up to 256"):
        be.attention(q, q, q, 0)
    q, k = be.zeros((1, 2, 3, 8)), be.zeros((1, 1, 3, 4))
    with pytest.raises(ValueError, match=r"k and v of shape \(B, n_kv, S, hs\) with q's B = 1 and hs = 8"):
        be.attention(q, k, k, 0)


# -- sampling -------------------------------------------------------------------------------------------------------


def near_boundary(row, u, temperature, top_k, top_p, min_p=0.0) -> bool:
    """True when float32 rounding may legitimately change the token (kernels/sampling.cu, "Tie rule"): the top-p
    mass p, or the draw target u * total, lies within 1e-5 of a boundary of the reference's cumulative sums, or a
    probability that top-p keeps lies within 1e-5 (relative) of the min-p threshold min_p * max prob."""
    z = top_k_filter(row * (1.0 / temperature), top_k)
    probs = ref_softmax(z).astype(np.float64)
    desc = np.cumsum(np.sort(probs)[::-1])
    if top_p < 1.0 and np.abs(desc - top_p).min() < 1e-5:
        return True
    top_p_kept = probs * (probs >= np.sort(probs)[::-1][min(np.searchsorted(desc, top_p), len(desc) - 1)])
    threshold = min_p * probs.max()
    if min_p > 0 and np.abs(top_p_kept[top_p_kept > 0] - threshold).min() < 1e-5 * probs.max():
        return True
    for kept in (probs, top_p_kept, top_p_kept * (top_p_kept >= threshold)):
        cumulative = np.cumsum(kept)
        if np.abs(cumulative - u * cumulative[-1]).min() < 1e-5 * cumulative[-1]:
            return True
    return False


@settings(max_examples=40)
@given(B=st.integers(1, 3), V=st.integers(1, 700), temperature=st.sampled_from([0.0, 0.7, 1.0, 1.5]),
       top_k=st.integers(0, 12), top_p=st.sampled_from([1.0, 0.95, 0.6, 0.2, 0.01]),
       u=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=3, max_size=3), seed=st.integers(0, 2**32 - 1))
def test_sampling_matches_reference_token(be, B, V, temperature, top_k, top_p, u, seed):
    """The fused kernel picks sample_token's token for the same u, unless float32 rounding sits on a boundary."""
    rng = np.random.default_rng(seed)
    logits = planted(rng, (B, V), extremes=(1e4, -1e4, -np.inf), p=0.05)
    logits[:, 0] = np.maximum(logits[:, 0], 0.0)  # never a row of only -inf (undefined on both sides)
    uniforms = np.array(u[:B])
    got = be.sample(be.asarray(logits), uniforms, temperature, top_k, top_p)
    for b in range(B):
        want = sample_token(logits[b], float(uniforms[b]), temperature, top_k, top_p)
        if got[b] != want:
            assert temperature > 0 and near_boundary(logits[b], uniforms[b], temperature, top_k, top_p), (
                f"row {b}: kernel token {got[b]}, reference {want}, not at a rounding boundary")


@settings(max_examples=60)
@given(B=st.integers(1, 3), V=st.integers(1, 700), temperature=st.sampled_from([0.0, 0.7, 1.0, 1.5]),
       top_k=st.integers(0, 12), top_p=st.sampled_from([1.0, 0.95, 0.6, 0.2]),
       min_p=st.sampled_from([0.0, 0.02, 0.1, 0.5, 1.0]), scale=st.sampled_from([0.5, 3.0]),
       u=st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=3, max_size=3), seed=st.integers(0, 2**32 - 1))
def test_sampling_matches_the_twin_with_min_p(be, B, V, temperature, top_k, top_p, min_p, scale, u, seed):
    """Every sampler generation uses, min-p included: the kernel picks NumpyBackend.sample's token for the same u,
    unless float32 rounding sits on a boundary (sampling.cu's rule, checked by near_boundary). The rows are spread
    (no huge logit, which test_sampling_matches_reference_token plants), so min-p and top-p cut inside them."""
    rng = np.random.default_rng(seed)
    logits = planted(rng, (B, V), extremes=(-1e4, -np.inf), p=0.05, scale=scale)
    logits[:, 0] = np.maximum(logits[:, 0], 0.0)  # never a row of only -inf (undefined on both sides)
    uniforms = np.array(u[:B])
    got = be.sample(be.asarray(logits), uniforms, temperature, top_k, top_p, min_p)
    want = REF.sample(logits, uniforms, temperature, top_k, top_p, min_p)
    assert got.dtype == want.dtype == np.int64 and got.shape == want.shape == (B,)
    for b in np.flatnonzero(got != want):
        assert temperature > 0 and near_boundary(logits[b], uniforms[b], temperature, top_k, top_p, min_p), (
            f"row {b}: kernel token {got[b]}, twin {want[b]}, not at a rounding boundary")


def test_sampling_min_p_hand_example(be):
    """probs [0.5, 0.3, 0.15, 0.05] (logits are their logs), min_p = 0.2: the threshold is 0.2 * 0.5 = 0.1, so
    token 3 goes (min_p_filter's docstring example). The cumulative mass is then 0.5, 0.8, 0.95: u = 0.99 draws
    0.99 * 0.95 = 0.9405 -> token 2, where without min-p it reaches 0.99 -> token 3; u = 0.6 -> 0.57 -> token 1."""
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]] * 2, dtype=np.float32))
    u = np.array([0.99, 0.6])
    for backend in (be, REF):
        assert backend.sample(backend.asarray(logits), u, 1.0, 0, 1.0, 0.2).tolist() == [2, 1]
        assert backend.sample(backend.asarray(logits), u, 1.0).tolist() == [3, 1]


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_sampling_refuses_nan_logits(be, temperature):
    """NaN logits are one ValueError on both sides, greedy or sampled: never a silently chosen token."""
    logits = np.zeros((2, 5), np.float32)
    logits[1, 3] = np.nan
    for backend in (be, REF):
        with pytest.raises(ValueError, match="NaN logits"):
            backend.sample(backend.asarray(logits), np.array([0.5, 0.5]), temperature)


def test_sampling_tie_rule(be):
    """Hand-derived: logits [1, 3, 3, 2] with top_k = 2 keep both 3s (ties with the k-th value stay), each with
    probability 1/2, and the draw walks ids in order: u < 0.5 -> id 1, u >= 0.5 -> id 2. Greedy takes the first
    maximum, id 1. With top_k = 0 and top_p = 0.5 the probabilities are e^1, e^3, e^3, e^2 over their sum: the
    first 3 alone has mass 0.422 < 0.5, so the threshold is e^3/sum and its tie is kept: again ids 1 and 2 at 1/2."""
    logits = np.array([[1.0, 3.0, 3.0, 2.0]] * 4, dtype=np.float32)
    u = np.array([0.0, 0.49, 0.5, 0.99])
    assert be.sample(be.asarray(logits), u, 1.0, 2, 1.0).tolist() == [1, 1, 2, 2]
    assert be.sample(be.asarray(logits), u, 1.0, 0, 0.5).tolist() == [1, 1, 2, 2]
    assert be.sample(be.asarray(logits), u, 0.0, 0, 1.0).tolist() == [1, 1, 1, 1]
    for b in range(4):  # and the reference agrees
        assert sample_token(logits[b], u[b], 1.0, 2, 1.0) == [1, 1, 2, 2][b]


@pytest.mark.parametrize("temperature, scale", [(1e-45, 1.0), (1e-38, 5.0), (1e-38, -5.0), (1e-30, 1e-3)])
def test_sampling_temperature_too_small_for_float32(be, temperature, scale):
    """Where logits / T leaves float32 (softmax would be NaN) both sides take the argmax, the T -> 0 limit; the
    last case stays in range and must sample as usual. Rows: all positive, all negative, mixed with a -inf."""
    rng = np.random.default_rng(3)
    logits = (rng.uniform(0.5, 1.0, (3, 50)) * scale).astype(np.float32)
    logits[2, 10] = -np.inf
    u = np.array([0.1, 0.5, 0.9])
    got = be.sample(be.asarray(logits), u, temperature, 0, 1.0)
    assert got.tolist() == [sample_token(logits[b], float(u[b]), temperature) for b in range(3)]


def test_sampling_large_vocabulary(be):
    """V = 5003 (many ids per thread in the draw) at several u, against the reference."""
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal((1, 5003)) * 2).astype(np.float32)
    for u in (0.0, 0.3, 0.77, 0.999):
        got = be.sample(be.asarray(logits), np.array([u]), 0.8, 0, 0.9)[0]
        assert got == sample_token(logits[0], u, 0.8, 0, 0.9)


# -- the kernel files themselves ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(KERNELS_DIR.glob("*.cu")), ids=lambda p: p.name)
def test_version_list_matches_kernels(path):
    """Each .cu header lists its numbered versions ("  1. name, name: idea"); that list must name exactly the
    kernels the file defines, so the documentation cannot drift from the code (STYLE.md, practice 8)."""
    text = path.read_text()
    defined = set(re.findall(r'extern "C" __global__ void (\w+)\(', text))
    listed = set()
    for names in re.findall(r"^//\s+\d+\.\s+((?:[\w ,+]|\n//)+):", text, flags=re.M):  # names may wrap lines
        listed |= set(re.findall(r"\w+", names))
    assert defined, f"{path.name} defines no kernel"
    assert listed == defined, f"{path.name}: header lists {sorted(listed)}, file defines {sorted(defined)}"


def test_launcher_constants_match_the_kernels_defines():
    """kernel_backend.py sizes shared memory, picks a head-size bucket and refuses head sizes from constants that
    attention.cu and common.cuh fix in their source: the two must agree, or a launch would reserve the wrong shared
    memory or run a kernel whose registers hold fewer dims than the head has."""
    source = (KERNELS_DIR / "attention.cu").read_text()
    defines = {}
    for text in (source, (KERNELS_DIR / "common.cuh").read_text()):
        defines.update((k, int(v)) for k, v in re.findall(r"^#define (\w+) (\d+)\b", text, flags=re.M))
    assert defines["TILE_KEYS"] == kernel_backend.TILE_KEYS
    assert defines["MAX_HEAD_DIM"] == kernel_backend.MAX_HEAD_DIM == max(kernel_backend.HEAD_DIM_BUCKETS)
    assert defines["WARP_SIZE"] == kernel_backend.WARP
    # each attention_<kind>_hs<D> entry point must instantiate its template for D / WARP_SIZE dims per lane
    entries = re.findall(r"void attention_(prefill|decode_split)_hs(\d+)\([^)]*\) \{[^}]*\};\s*\w+<(\w+) / WARP_SIZE>",
                         source)
    buckets = {kind: sorted(int(d) for k, d, _ in entries if k == kind) for kind in ("prefill", "decode_split")}
    assert buckets == {kind: sorted(kernel_backend.HEAD_DIM_BUCKETS) for kind in buckets}, entries
    for _, d, instantiated in entries:
        assert int(defines.get(instantiated, instantiated)) == int(d), f"attention_*_hs{d} instantiates {instantiated}"


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_nvcc_compiles_every_kernel_without_spills(arch):
    """Every kernel of every .cu file compiles with nvcc (through kernels/build.py, what `make kernels` runs) and
    ptxas reports 0 bytes of spill stores and loads."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH: the CUDA toolkit is needed to compile the kernels for a GPU")
    with tempfile.TemporaryDirectory() as out_dir:
        for source in sorted(KERNELS_DIR.glob("*.cu")):
            code, output = build.compile_nvcc(nvcc, source, arch, [], Path(out_dir))
            assert code == 0, f"{source.name} does not compile for {arch}:\n{output}"
            rows = build.parse_ptxas(output)
            defined = set(re.findall(r'extern "C" __global__ void (\w+)\(', source.read_text()))
            assert {r["kernel"] for r in rows} == defined, f"{source.name}: ptxas reported {rows}"
            spilled = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
            assert not spilled, f"{source.name} spills registers on {arch}: {spilled}"
