"""The cpu backend: kernels/linear_cpu.cpp, attention_cpu.cpp, norms_cpu.cpp, rope_cpu.cpp and activations_cpu.cpp
against their NumPy twins, the panel layout, and whole models against numpy. (replay_cpu.cpp: test_replayed_step.py)

Tolerance of the matrix product. The kernel sums each column in k order in float32; BLAS sums in blocks: neither is
the exact sum, and they differ from each other. Both must be within the classic bound of a float32 dot product of
length K (Higham, Accuracy and Stability of Numerical Algorithms, 3.1): |computed - exact| <= K u (|x| @ |w|), with
u = 2^-24, the exact value taken in float64. A kernel that dropped a term, or summed the wrong rows, fails it by
orders of magnitude. Decode attention: the kernel tests' ATTENTION_RTOL (tests/kernel_harness.py: scores summed in
another order, an online softmax). Norms, RoPE and activations: the kernel tests' FLOAT32_RTOL (sums in another
order; a multiply-add the compiler may fuse; the activations' exp is the kernel's own, a few ulp from NumPy's).
Whole models: logits within 1e-4 of the numpy backend's (max over B x T x V), as the emulator's forward test; greedy
tokens equal.
"""
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.backends import get_backend, huge_pages
from nanollm.backends.cpu_backend import CpuBackend, Panels, TiedTable
from nanollm.backends.cpu_kernels import load_kernel
from nanollm.backends.huge_pages import HUGE_PAGE, PanelMemory, huge_page_zeros
from nanollm.backends.numpy_backend import NumpyBackend
from nanollm.kv_cache import KVCache
from nanollm.model import Model
from nanollm.paged_runner import PagedRunner
from tests.kernel_harness import ATTENTION_RTOL, FLOAT32_RTOL, assert_close
from tests.test_paged_attention import OPTIONS, draw_case, paged_batch
from tests.test_backend_api import assert_same_api
from tests.test_backend_forward import random_weights, small_config

U = 2.0**-24  # float32's unit roundoff


@pytest.fixture(scope="module")
def cpu():
    return CpuBackend()


def within_dot_product_bound(got, x, w, b=None):
    """|got - exact| <= K u (|x| @ |w|) + (a bias adds one rounding of the result) u |exact|."""
    exact = x.astype(np.float64) @ w.astype(np.float64) + (0 if b is None else b.astype(np.float64))
    bound = x.shape[-1] * U * (np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64)) + 2 * U * np.abs(exact)
    excess = np.abs(got - exact) - bound
    assert excess.max(initial=-1) <= 1e-30, f"beyond the float32 dot-product bound by {excess.max():.3g}"


@settings(max_examples=60)
@given(rows=st.integers(1, 20), K=st.integers(1, 70), N=st.integers(1, 100), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_linear_matches_the_numpy_twin(cpu, rows, K, N, bias, seed):
    """Every row count around the kernel's groups of 8, every width around its panels of 32 (a narrower last one)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, K), dtype=np.float32)
    w = rng.standard_normal((K, N), dtype=np.float32)
    b = rng.standard_normal(N, dtype=np.float32) if bias else None
    got = cpu.linear(x, cpu.weight(w), b)
    assert got.dtype == np.float32 and got.shape == (rows, N)
    within_dot_product_bound(got, x, w, b)
    within_dot_product_bound(NumpyBackend().linear(x, w, b), x, w, b)  # the reference meets the same bound


def test_linear_keeps_leading_axes_and_leaves_inputs_alone(cpu):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 40), dtype=np.float32)  # (B, T, in)
    w = rng.standard_normal((40, 33), dtype=np.float32)
    x_before, panels = x.copy(), cpu.weight(w)
    got = cpu.linear(x, panels)  # (B, T, out)
    assert got.shape == (2, 3, 33)
    np.testing.assert_array_equal(x, x_before)
    assert_close(got, x @ w, 1e-5, "linear (B, T, in)")


def test_the_bound_has_teeth():
    """A product missing one term of its sum fails the check."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((3, 50), dtype=np.float32), rng.standard_normal((50, 7), dtype=np.float32)
    with pytest.raises(AssertionError, match="dot-product bound"):
        within_dot_product_bound(x[:, 1:] @ w[1:], x, w)


@given(K=st.integers(1, 40), N=st.integers(1, 80), seed=st.integers(0, 2**16))
def test_panels_hold_the_matrix_exactly(K, N, seed):
    """The packed matrix unpacks to itself, its rows (an embedding's gather) and columns are the matrix's own, and a
    tied table gives the embedding its rows and the output projection its transpose, from one copy."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((K, N), dtype=np.float32)
    p = Panels(a)
    assert p.data.shape == (-(-N // 32), K, 32) and p.shape == (K, N)
    np.testing.assert_array_equal(np.asarray(p), a)
    ids = rng.integers(0, K, (2, 5))
    np.testing.assert_array_equal(p[ids], a[ids])
    cols = rng.integers(0, N, (3,))
    np.testing.assert_array_equal(p.columns(cols), a[:, cols].T)
    tied = TiedTable(a)  # a as a (V, C) embedding table
    np.testing.assert_array_equal(tied[ids], a[ids])
    np.testing.assert_array_equal(np.asarray(tied.T), a.T)
    assert tied.nbytes == tied.T.nbytes  # no second copy


@settings(max_examples=60)
@given(lead=st.sampled_from([(1,), (3,), (2, 5), (1, 1, 1)]), C=st.integers(1, 300), offset=st.floats(-100, 100),
       eps=st.sampled_from([1e-5, 1e-6]), seed=st.integers(0, 2**32 - 1))
def test_norms_match_the_numpy_twins(cpu, lead, C, offset, eps, seed):
    """Any leading axes, widths that are not a multiple of the kernel's 16 running sums (1 included), rows far from
    zero mean (a one-pass variance would cancel there)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((*lead, C)) * 2 + offset).astype(np.float32)
    w, b = rng.standard_normal((2, C)).astype(np.float32)
    for got, want in ((cpu.layer_norm(x, w, b, eps), NumpyBackend().layer_norm(x, w, b, eps)),
                      (cpu.rms_norm(x, w, eps), NumpyBackend().rms_norm(x, w, eps))):
        assert got.shape == x.shape and got.dtype == np.float32
        assert_close(got, want, FLOAT32_RTOL, f"norm of {x.shape} offset {offset}")


@settings(max_examples=60)
@given(B=st.integers(1, 3), n=st.integers(1, 4), T=st.integers(1, 9), half=st.integers(1, 40),
       passed=st.integers(0, 9), fused=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_rope_matches_the_numpy_twin(cpu, B, n, T, half, passed, fused, seed):
    """Partial rotary (hs = 2 half + passed), and x either contiguous or (fused) a head slice of a (B, T, 2n, hs)
    projection, the strided view attention hands over: the kernel reads it through its strides."""
    rng = np.random.default_rng(seed)
    hs = 2 * half + passed
    angles = rng.uniform(-1e3, 1e3, size=(B, T, half))  # (B, T, r/2)
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    if fused:
        x = rng.standard_normal((B, T, 2 * n, hs)).astype(np.float32).transpose(0, 2, 1, 3)[:, n:]  # (B, n, T, hs)
    else:
        x = rng.standard_normal((B, n, T, hs)).astype(np.float32)
    got = cpu.rope(x, cos, sin)
    assert_close(got, NumpyBackend().rope(x, cos, sin), FLOAT32_RTOL, f"rope {x.shape} half={half}")
    assert np.array_equal(got[..., 2 * half :], x[..., 2 * half :])  # passed through bit for bit


@settings(max_examples=60)
@given(shape=st.sampled_from([(1,), (15,), (16,), (17,), (2, 3, 50), (1, 1, 3072)]),
       scale=st.sampled_from([1e-3, 1.0, 5.0, 30.0, 100.0]), seed=st.integers(0, 2**32 - 1))
def test_activations_match_the_numpy_twins(cpu, shape, scale, seed):
    """The activations and Gemma 2's softcap (cap 30). Sizes around the kernel's 16-float vectors (its padded tail), inputs from near zero (tanh's
    cancellation) to far past exp's float32 range (x = +-100 s: under- and overflow), and planted inf, -inf, NaN and
    zeros: NaN where NumPy gives NaN (gelu(-inf) is 0 * inf there too), inf where it gives inf."""
    rng = np.random.default_rng(seed)
    x, up = (rng.standard_normal((2, *shape)) * scale).astype(np.float32)
    flat = x.reshape(-1)
    flat[rng.integers(0, flat.size, min(4, flat.size))] = rng.choice([np.inf, -np.inf, np.nan, 0.0], min(4, flat.size))
    with np.errstate(invalid="ignore", over="ignore"):
        for name, got, want in (("gelu", cpu.gelu(x), NumpyBackend().gelu(x)),
                                ("gelu_exact", cpu.gelu_exact(x), NumpyBackend().gelu_exact(x)),
                                ("silu_mul", cpu.silu_mul(x, up), NumpyBackend().silu_mul(x, up)),
                                ("gelu_mul", cpu.gelu_mul(x, up), NumpyBackend().gelu_mul(x, up)),
                                ("softcap", cpu.softcap(x, 30.0), NumpyBackend().softcap(x, 30.0))):
            assert got.shape == x.shape and got.dtype == np.float32
            assert_close(got, want, FLOAT32_RTOL, f"{name} of {x.shape} at scale {scale}")


def test_softcap_keeps_small_logits_relative_precision(cpu):
    """softcap(x) = cap * tanh(x / cap) against float64 for |x| / cap from 1e-9 to 20, both signs: within 1e-6
    relative everywhere. Near 0 tanh is its series (1 - 2 / (exp(2u) + 1) alone was off by 1e-2 at u = 1e-5:
    its error stays near 1e-7 as tanh shrinks); past 1/4 the formula, whose relative error falls as tanh grows."""
    u = np.logspace(-9, np.log10(20), 4001)
    x = (np.concatenate([u, -u]) * 30.0).astype(np.float32)
    got = cpu.softcap(x, 30.0).astype(np.float64)
    exact = 30.0 * np.tanh(x.astype(np.float64) / 30.0)
    assert np.max(np.abs(got - exact) / np.abs(exact)) < 1e-6


@settings(max_examples=40)
@given(shape=st.sampled_from([(1,), (17,), (2, 3, 50), (1, 1, 768), (3, 40000)]), seed=st.integers(0, 2**32 - 1))
def test_the_residual_add_is_numpys_exactly(cpu, shape, seed):
    """One float32 addition per element on both sides: equal bit for bit, inf and NaN included; the largest shape
    is split among the pool's threads."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((2, *shape)).astype(np.float32)
    x.reshape(-1)[rng.integers(0, x.size, 3)] = [np.inf, -np.inf, np.nan]
    with np.errstate(invalid="ignore"):
        want = NumpyBackend().add(x, y)
    got = cpu.add(x, y)
    assert got.dtype == np.float32 and np.array_equal(got, want, equal_nan=True)


@settings(max_examples=60)
@given(B=st.integers(1, 3), n=st.integers(1, 4), T=st.integers(1, 5), hs=st.sampled_from([1, 8, 64]),
       S=st.integers(5, 12), view=st.booleans(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_write_slots_matches_the_numpy_twin(cpu, B, n, T, hs, S, view, seed, data):
    """Keys into slots start .. start+T-1 of a cache layer, read from a view of a q/k/v projection (the strides
    write_slots reads through) or a C-order array: the buffers equal the twin's byte for byte, other slots untouched."""
    start = data.draw(st.integers(0, S - T)) if S >= T else None
    if start is None:
        return
    rng = np.random.default_rng(seed)
    if view:  # (B, n, T, hs) out of a (B, T, 3n, hs) projection: its k part
        x = rng.standard_normal((B, T, 3 * n, hs), dtype=np.float32).transpose(0, 2, 1, 3)[:, n : 2 * n]
    else:
        x = rng.standard_normal((B, n, T, hs), dtype=np.float32)
    buffers = [rng.standard_normal((B, n, S, hs), dtype=np.float32) for _ in range(2)]
    buffers[1][:] = buffers[0]
    NumpyBackend().write_slots(buffers[0], x, start)
    cpu.write_slots(buffers[1], x, start)
    assert np.array_equal(buffers[1], buffers[0])


@settings(max_examples=60)
@given(T=st.integers(1, 4), n_kv=st.integers(1, 3), hs=st.sampled_from([1, 8, 64]),
       block_size=st.sampled_from([1, 3, 16]), view=st.booleans(), int64=st.booleans(), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_paged_write_matches_the_numpy_twin(cpu, T, n_kv, hs, block_size, view, int64, seed, data):
    """Each sequence's keys of its last T slots into a paged pool through its block table (blocks in random order),
    from a view of a projection or a C-order array, tables as int32 (read in place) or int64 (checked copies): the
    pool equals the twin's byte for byte, and the twin put row (b, h, t) at slot lengths[b] - T + t, the slot
    paged_attention reads for it; every other row of the pool is untouched."""
    lengths = data.draw(st.lists(st.integers(T, 40), min_size=1, max_size=4))
    rng = np.random.default_rng(seed)
    _, _, pool, _, tables = paged_batch(rng, lengths, n_kv, hs, block_size)
    B = len(lengths)
    if view:  # (B, n_kv, T, hs) out of a (B, T, 3 n_kv, hs) projection: its k part
        x = rng.standard_normal((B, T, 3 * n_kv, hs), dtype=np.float32).transpose(0, 2, 1, 3)[:, n_kv : 2 * n_kv]
    else:
        x = rng.standard_normal((B, n_kv, T, hs), dtype=np.float32)
    want, got = pool.copy(), pool.copy()
    NumpyBackend().paged_write(want, x, tables.astype(np.int64) if int64 else tables, np.array(lengths))
    cpu.paged_write(got, x, tables.astype(np.int64) if int64 else tables, np.array(lengths, np.int32))
    assert np.array_equal(got, want)
    for b, L in enumerate(lengths):  # the twin against the slots written out one by one
        for t in range(T):
            j = L - T + t
            pool[tables[b, j // block_size], :, j % block_size] = x[b, :, t]
    assert np.array_equal(want, pool)


def test_the_activations_exp_is_within_a_few_ulp(cpu):
    """exp16 (simd_cpu.h) seen through silu(x) = x / (1 + exp(-x)) with up = 1, against float64 over
    x in [-87, 87]: within 4 ulp (2.4e-7) relative, where NumPy's own float32 exp is within 1."""
    x = np.linspace(-87, 87, 200_001, dtype=np.float32)
    got = cpu.silu_mul(x, np.ones_like(x)).astype(np.float64)
    exact = x.astype(np.float64) / (1 + np.exp(-x.astype(np.float64)))
    assert np.max(np.abs(got - exact) / np.abs(exact).clip(1e-300)) < 4 * 2.0**-24


def test_odd_shapes_get_numpys_answer(cpu):
    """What the kernels do not take (tables that broadcast over the batch, weights of another width) is NumPy's:
    the same broadcast, or the same error, never a read past an array's end."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 8)).astype(np.float32)
    cos, sin = rng.standard_normal((2, 1, 4, 4)).astype(np.float32)  # (1, T, r/2): broadcast over B
    np.testing.assert_array_equal(cpu.rope(x, cos, sin), NumpyBackend().rope(x, cos, sin))
    with pytest.raises(ValueError, match="broadcast"):
        cpu.layer_norm(x, np.ones(5, np.float32), np.zeros(5, np.float32), 1e-5)
    with pytest.raises(ValueError, match="broadcast"):
        cpu.rms_norm(x, np.ones(9, np.float32), 1e-5)
    np.testing.assert_array_equal(cpu.silu_mul(x, x[:1]), NumpyBackend().silu_mul(x, x[:1]))  # up broadcast


@settings(max_examples=60)
@given(seed=st.integers(0, 2**32 - 1), peaked=st.booleans(), data=st.data())
def test_attention_over_a_paged_pool_matches_the_numpy_twin(cpu, seed, peaked, data):
    """Ragged lengths, blocks scattered through the pool in random order, block sizes from 1 to 40, grouped-query
    ratios, every option (scale, softcap, window); peaked: queries 10x larger (near one-hot weights). Decode steps
    (T = 1) and prefill chunks (T > 1: each sequence's last T slots). 1 to 12 key/value heads: where a head's rows
    are few, a task takes several heads (12 heads of one row: two tasks of 6; 5 heads of 2 rows: 3 and 2)."""
    T, lengths, s, options = draw_case(data, 100, [1, 5, 64, 128], [1, 3, 16, 40])
    s["n_kv"] = data.draw(st.sampled_from([1, 2, 3, 5, 12]), label="n_kv")
    rng = np.random.default_rng(seed)
    _, _, k_pool, v_pool, tables = paged_batch(rng, lengths, s["n_kv"], s["hs"], s["block_size"])
    q = rng.standard_normal((len(lengths), s["n_kv"] * s["g"], T, s["hs"])).astype(np.float32) * (10 if peaked else 1)
    got = cpu.paged_attention(q, k_pool, v_pool, tables, np.array(lengths), **options)
    want = NumpyBackend().paged_attention(q, k_pool, v_pool, tables, np.array(lengths), **options)
    assert_close(got, want, ATTENTION_RTOL, f"paged attention {s} T={T} {lengths} {options}")


@settings(max_examples=60)
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 3), n_kv=st.integers(1, 3),
       g=st.sampled_from([1, 2, 4, 7, 9, 17]), hs=st.sampled_from([1, 8, 20, 64, 80, 520]), S=st.integers(1, 70),
       T=st.sampled_from([1, 1, 2, 7, 70]), spare=st.integers(0, 9), options=st.fixed_dictionaries(OPTIONS))
def test_attention_over_a_kv_cache_matches_the_numpy_twin(cpu, seed, B, n_kv, g, hs, S, T, spare, options):
    """The keys as KVCache hands them over: the first S slots of a longer buffer (B, n_kv, max_len, hs), a view whose
    heads and rows are not adjacent; the queries at slots S - T .. S - 1 (T = 1: a decode step; more: a prefill,
    each query seeing a different number of keys, so the kernel's tasks of 8 query rows mix rows that stop at
    different keys). S up to 70 spans three of its chunks of 32 keys; head sizes that are not a multiple of its
    16-float vectors, and one past its largest (512: NumPy's); query groups past the 8 rows one task takes (9, 17:
    split among tasks; multi-query models share one head among 71)."""
    T = min(T, S)
    rng = np.random.default_rng(seed)
    k_buf = rng.standard_normal((B, n_kv, S + spare, hs)).astype(np.float32)
    v_buf = rng.standard_normal((B, n_kv, S + spare, hs)).astype(np.float32)
    q = rng.standard_normal((B, n_kv * g, T, hs)).astype(np.float32)
    k, v, options = k_buf[:, :, :S], v_buf[:, :, :S], {k: v for k, v in options.items() if v is not None}
    got = cpu.attention(q, k, v, S - T, **options)
    want = NumpyBackend().attention(q, k, v, S - T, **options)
    assert_close(got, want, ATTENTION_RTOL, f"attention B={B} n_kv={n_kv} g={g} hs={hs} S={S} T={T} {options}")


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 2), n_kv=st.integers(1, 3), g=st.sampled_from([1, 3]),
       T=st.integers(1, 40), options=st.fixed_dictionaries(OPTIONS))
def test_attention_of_a_stateless_pass_reads_the_projection_in_place(cpu, seed, B, n_kv, g, T, options):
    """Without a cache the keys and values are views of the pass's own q/k/v projection (B, T, nh + 2 n_kv, hs),
    transposed: heads hs floats apart, positions a whole projection row apart. The kernel reads them through those
    strides; padding (a key mask) goes to NumPy, the same answer either way."""
    rng = np.random.default_rng(seed)
    nh, hs = n_kv * g, 16
    qkv = rng.standard_normal((B, T, nh + 2 * n_kv, hs)).astype(np.float32).transpose(0, 2, 1, 3)
    q, k, v = qkv[:, :nh], qkv[:, nh : nh + n_kv], qkv[:, nh + n_kv :]  # (B, n, T, hs) views, as transformer.py
    options = {k: v for k, v in options.items() if v is not None}
    assert_close(cpu.attention(q, k, v, 0, **options), NumpyBackend().attention(q, k, v, 0, **options),
                 ATTENTION_RTOL, f"stateless attention B={B} n_kv={n_kv} g={g} T={T} {options}")
    mask = rng.random((B, T)) < 0.8
    mask[:, 0] = True  # every query sees at least one key
    assert_close(cpu.attention(q, k, v, 0, mask, **options), NumpyBackend().attention(q, k, v, 0, mask, **options),
                 ATTENTION_RTOL, "with a key mask")


def test_paged_decode_on_the_cpu_backend_matches_numpy():
    """Requests joining and stepping together through a PagedRunner: the same greedy tokens on both backends."""
    cfg = small_config("llama", vocab_size=70)
    weights = random_weights(cfg, seed=5)
    prompts = {"a": [3, 1, 4, 1, 5], "b": [9, 2, 6], "c": [5, 3, 5, 8, 9, 7, 9]}
    runs = []
    for be in (NumpyBackend(), CpuBackend()):
        runner, tokens = PagedRunner(Model(cfg, weights, be), n_blocks=16, block_size=4), {}
        last = {rid: int(runner.add(rid, p).argmax()) for rid, p in prompts.items()}  # (V,) each
        for _ in range(6):
            ids = sorted(last)
            logits = runner.step(ids, [last[i] for i in ids])  # (B, V)
            for i, row in zip(ids, logits):
                tokens.setdefault(i, []).append(int(row.argmax()))
                last[i] = tokens[i][-1]
        runs.append(tokens)
    assert runs[0] == runs[1]


def mapping_flags(a: np.ndarray) -> list[str]:
    """The VmFlags of the memory mapping that holds a's first byte (Linux's /proc/self/smaps); "hg" is the mark
    madvise(MADV_HUGEPAGE) leaves."""
    at, inside = a.ctypes.data, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(" ", 1)[0]
            if "-" in first and not first.endswith(":"):
                lo, hi = (int(x, 16) for x in first.split("-"))
                inside = lo <= at < hi
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping holds address {at:#x}")


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="smaps and MADV_HUGEPAGE are Linux's")


@linux_only
@pytest.mark.parametrize("n", [1, 1000, 3 * 2**20 + 5])
def test_huge_page_zeros_are_fresh_aligned_and_marked(n):
    a = huge_page_zeros(n)
    assert a.dtype == np.float32 and a.shape == (n,) and not a.any()
    assert a.ctypes.data % HUGE_PAGE == 0 and a.flags.writeable and a.flags.c_contiguous
    assert "hg" in mapping_flags(a)
    a[:] = 7  # the memory is its own, and outlives the call that mapped it
    assert (a == 7).all()


@given(sizes=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 300)), min_size=1, max_size=12))
def test_panel_memory_hands_out_zeroed_aligned_stretches_that_never_overlap(sizes):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huge_pages, "MAPPING_FLOATS", 1000)  # small mappings: a few stretches fill one, a large one
        memory, blocks = PanelMemory(), []                # gets its own
        for shape in sizes:
            block = memory.take(shape)
            assert block.shape == shape and block.dtype == np.float32 and not block.any()
            assert block.ctypes.data % 64 == 0
            block[...] = 1  # a later stretch must not see this
            blocks.append(block)
    spans = sorted((b.ctypes.data, b.ctypes.data + b.nbytes) for b in blocks)
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))


@linux_only
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_models_matrices_and_kv_cache_sit_in_memory_marked_for_huge_pages(arch):
    """Every matrix, the tied table too, in the backend's huge-page mappings; a KV cache's keys and values, every
    layer, in one buffer marked so. (Whether 2 MiB pages then come is the kernel's choice: its THP settings.)"""
    cpu = CpuBackend()
    cfg = small_config(arch, vocab_size=75)
    model = Model(cfg, random_weights(cfg, seed=3), cpu)
    w = model.weights
    matrices = [a for layer in w.layers for a in vars(layer).values() if isinstance(a, Panels)]
    matrices += [a.T if isinstance(a, TiedTable) else a for a in (w.tok_emb, w.pos_emb, w.lm_head) if a is not None]
    assert isinstance(w.tok_emb, TiedTable) == (arch == "gpt2")
    for panels in matrices:
        assert panels.data.ctypes.data % 64 == 0 and "hg" in mapping_flags(panels.data)
    cache = KVCache.allocate(cpu, model.config, batch_size=2, max_len=4096)
    first, last = cache.k[0], cache.v[-1]
    assert "hg" in mapping_flags(first)
    assert last.ctypes.data - first.ctypes.data == (2 * cfg.n_layer - 1) * first.nbytes  # one buffer, layer by layer


# -- the thread pool (kernels/pool_cpu.h) --------------------------------------------------------------------------


def product_of_many_rows_agrees(cpu, seed: int) -> bool:
    """A product large enough to run on every thread of the pool, against float64."""
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((16, 256), dtype=np.float32), rng.standard_normal((256, 1000), dtype=np.float32)
    return bool(np.allclose(cpu.linear(x, cpu.weight(w)), x.astype(np.float64) @ w, rtol=1e-4, atol=1e-3))


def test_a_forked_child_computes_with_a_pool_of_its_own(cpu):
    """A forked child has none of its parent's threads: had it kept the parent's pool, its first parallel product
    would wait forever for a worker that is not there. (The parent has used the pool before forking.)"""
    import multiprocessing

    assert product_of_many_rows_agrees(cpu, 0)
    child = multiprocessing.get_context("fork").Process(target=lambda: sys.exit(0 if product_of_many_rows_agrees(
        CpuBackend(), 1) else 1))
    child.start()
    child.join(timeout=60)
    if child.exitcode is None:
        child.kill()
    assert child.exitcode == 0


def test_python_threads_can_call_kernels_at_once(cpu):
    """ctypes lets go of the GIL, so two Python threads can be in kernels together: the one that finds the pool busy
    computes on its own thread, and both get the right answers."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as threads:
        assert all(threads.map(lambda seed: product_of_many_rows_agrees(cpu, seed), range(40)))


def test_an_idle_pool_sleeps(cpu):
    """A worker spins 2 ms after its last job (and reads ahead), then sleeps: a loaded model that is not computing
    (a server between requests) costs no CPU. Spinning through the half second would cost half a second of CPU."""
    import time

    assert product_of_many_rows_agrees(cpu, 2)
    cpu_before = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - cpu_before < 0.2


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_each_matrix_knows_the_one_the_next_product_reads(arch):
    """What the pool's worker reads ahead: after a step, following `next` from the first layer's first matrix
    visits the products in the forward pass's order (q/k/v, output, MLP up (and gate), down; layer by layer; then
    the output projection, followed again by the first layer's q/k/v)."""
    cpu = CpuBackend()
    cfg = small_config(arch, vocab_size=75)
    model = Model(cfg, random_weights(cfg, seed=3), cpu)
    w = model.weights
    model.forward(np.zeros((1, 3), dtype=np.int64))
    model.forward(np.zeros((1, 3), dtype=np.int64))
    order = [m for layer in w.layers for m in (layer.w_qkv, layer.w_o, layer.w_up, layer.w_gate, layer.w_down)
             if m is not None]
    order.append(w.tok_emb.T if w.lm_head is None else w.lm_head)
    assert [m.next for m in order] == order[1:] + order[:1]


def test_same_api_as_numpy():
    """Besides the layer API, the method Model.step's replay of decode steps uses when `records_steps` is true."""
    assert_same_api(CpuBackend, beyond={"recording_calls"})


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_forward_and_greedy_decode_match_numpy(cpu, arch):
    """Tied (GPT-2 here) and untied (Llama) output projections; a batch of 2 through the KV cache."""
    cfg = small_config(arch, vocab_size=75)  # 75: the output projection ends in a narrower panel
    weights = random_weights(cfg, seed=3)
    ids = np.random.default_rng(4).integers(0, cfg.vocab_size, size=(2, 21))
    reference, ours = Model(cfg, weights, NumpyBackend()), Model(cfg, weights, cpu)
    assert_close(ours.forward(ids), reference.forward(ids), 1e-4, f"{arch} logits")
    prompts = [ids[0, :5].tolist(), ids[1, :9].tolist()]
    want = reference.generate(prompts, max_new_tokens=12, temperature=0)
    got = ours.generate(prompts, max_new_tokens=12, temperature=0)
    assert [r.token_ids for r in got] == [r.token_ids for r in want]


def test_backend_by_name():
    assert isinstance(get_backend("cpu"), CpuBackend)


def test_no_compiler_is_one_clear_error(tmp_path):
    """Without a compiler the backend says what it needs (the numpy backend needs none); run in a fresh process so
    the cache of built kernels and of the compiler's lookup start empty."""
    code = ("from nanollm.backends.cpu_backend import CpuBackend\n"
            "from nanollm.backends.cpu_kernels import CpuKernelError\n"
            "try:\n    CpuBackend()\nexcept CpuKernelError as e:\n    print('ERROR', e)\n")
    env = {"CXX": str(tmp_path / "no-such-compiler"), "NANOLLM_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.startswith("ERROR no C++ compiler found ($CXX, g++, c++ or clang++) to build the cpu backend's"), (
        out.stdout + out.stderr)


def test_a_second_build_comes_from_the_cache(tmp_path, monkeypatch):
    """The library is built once per source, flags, compiler and CPU, into the cache, whole or not at all."""
    monkeypatch.setenv("NANOLLM_CACHE", str(tmp_path))
    build = load_kernel.__wrapped__  # the function without its in-process memo
    build()
    built = sorted((tmp_path / "cpu").iterdir())
    assert [p.suffix for p in built] == [".so"]
    mtime = built[0].stat().st_mtime_ns
    build()
    assert sorted((tmp_path / "cpu").iterdir()) == built and built[0].stat().st_mtime_ns == mtime



def test_the_command_line_falls_back_to_numpy_without_a_compiler(tmp_path):
    """The command line's default backend is cpu; where its kernel cannot be built it says so in one line and runs
    on numpy, so `python -m nanollm.generate` works on a machine with Python alone."""
    from nanollm.loader import DEMO_MODEL

    env = {"CXX": str(tmp_path / "no-such-compiler"), "NANOLLM_CACHE": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "nanollm.generate", "--model", str(DEMO_MODEL), "--max-new-tokens",
                          "3", "--temperature", "0", "Once"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    notices = [line for line in out.stderr.splitlines() if "cpu backend" in line]
    assert notices == ["nanollm: the cpu backend is not available (no C++ compiler found ($CXX, g++, c++ or clang++) "
                       "to build the cpu backend's kernels (kernels/*_cpu.cpp) at their first use: install one "
                       "(e.g. `apt install g++`) or set CXX); using the numpy backend (slower)"]
