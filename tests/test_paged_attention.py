"""Attention over block tables (backend.paged_attention) equals attention over the contiguous cache.

The same q, k, v are scattered into random blocks of a pool in random order; NumpyBackend.paged_attention over the
block tables must equal NumpyBackend.attention over each sequence's contiguous keys (and torch's
scaled_dot_product_attention), for random shapes, grouped-query ratios, ragged lengths, block sizes and every option;
the kernel (kernels/paged_attention.cu, on the emulator and on CuPy where a GPU is visible) must equal the NumPy
twin within the kernel tests' ATTENTION_RTOL (tests/kernel_harness.py). Emulator examples stay small: it runs every
CUDA thread as a fiber.
"""
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nanollm.backends import kernel_backend
from nanollm.backends.numpy_backend import NumpyBackend
from nanollm.kernels import KERNELS_DIR
from nanollm.paged_cache import PagedKVCache, PagedStep
from tests.kernel_harness import ATTENTION_RTOL, KERNEL_BACKENDS, assert_close, make_backend
from tests.test_paged_cache import config

REF = NumpyBackend()
OPTIONS = dict(scale=st.sampled_from([None, 0.05, 1.0]), softcap=st.sampled_from([None, 1.0, 50.0]),
               window=st.sampled_from([None, 1, 7, 33, 200]))


def paged_batch(rng, lengths, n_kv, hs, block_size, spare_blocks=3):
    """Contiguous k, v per sequence (B x (n_kv, L, hs)) and the same rows scattered into a pool: each sequence's
    blocks are drawn at random from a permutation of the pool (so they are neither in order nor adjacent), and the
    pool's other rows hold noise that a wrong table entry would read. -> (ks, vs, k_pool, v_pool, tables)"""
    counts = [-(-L // block_size) for L in lengths]
    n_blocks = sum(counts) + spare_blocks
    k_pool = rng.standard_normal((n_blocks, n_kv, block_size, hs)).astype(np.float32) * 100
    v_pool = rng.standard_normal((n_blocks, n_kv, block_size, hs)).astype(np.float32) * 100
    tables = np.full((len(lengths), max(counts)), -1, dtype=np.int32)
    order, ks, vs = rng.permutation(n_blocks), [], []
    for b, (L, n) in enumerate(zip(lengths, counts)):
        tables[b, :n], order = order[:n], order[n:]
        k = (rng.standard_normal((n_kv, L, hs)) * 2).astype(np.float32)
        v = rng.standard_normal((n_kv, L, hs)).astype(np.float32)
        for j in range(L):  # slot j: row j % bs of block tables[b, j // bs]
            k_pool[tables[b, j // block_size], :, j % block_size] = k[:, j]
            v_pool[tables[b, j // block_size], :, j % block_size] = v[:, j]
        ks.append(k)
        vs.append(v)
    return ks, vs, k_pool, v_pool, tables


def contiguous_reference(q, ks, vs, **options):
    """Each sequence alone through NumpyBackend.attention over its contiguous keys: its T queries at its last T
    slots. -> (B, nh, T, hs)"""
    T = q.shape[2]
    return np.concatenate([REF.attention(q[b : b + 1], k[None], v[None], k.shape[1] - T, **options)
                           for b, (k, v) in enumerate(zip(ks, vs))])


def draw_case(data, max_len, hs_choices, block_sizes):
    B = data.draw(st.integers(1, 3), label="B")
    T = data.draw(st.sampled_from([1, 1, 2, 5]), label="T")  # mostly decode; a few prefill chunks
    lengths = data.draw(st.lists(st.integers(T, max_len), min_size=B, max_size=B), label="lengths")
    shape = dict(n_kv=data.draw(st.integers(1, 2), label="n_kv"), g=data.draw(st.sampled_from([1, 2, 4]), label="g"),
                 hs=data.draw(st.sampled_from(hs_choices), label="hs"),
                 block_size=data.draw(st.sampled_from(block_sizes), label="block_size"))
    options = {name: data.draw(s, label=name) for name, s in OPTIONS.items()}
    return T, lengths, shape, {k: v for k, v in options.items() if v is not None}


@settings(max_examples=60)
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_numpy_paged_attention_equals_contiguous_attention(seed, data):
    """Ragged lengths 1..100, block sizes from 1 (a block per slot) to 40 (past a 32-key tile), any options."""
    T, lengths, s, options = draw_case(data, 100, [1, 5, 8, 33, 64], [1, 2, 3, 5, 16, 32, 40])
    rng = np.random.default_rng(seed)
    ks, vs, k_pool, v_pool, tables = paged_batch(rng, lengths, s["n_kv"], s["hs"], s["block_size"])
    q = rng.standard_normal((len(lengths), s["n_kv"] * s["g"], T, s["hs"])).astype(np.float32)
    got = REF.paged_attention(q, k_pool, v_pool, tables, np.array(lengths), **options)
    np.testing.assert_allclose(got, contiguous_reference(q, ks, vs, **options), rtol=1e-6, atol=1e-6)


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), data=st.data())
def test_numpy_paged_decode_equals_torch_sdpa(seed, data):
    """The reference library: torch's scaled_dot_product_attention over each sequence's contiguous keys, k/v heads
    repeated for grouped-query attention (transformers' repeat_kv), one query at the last slot (no mask needed)."""
    _, lengths, s, _ = draw_case(data, 70, [5, 64], [1, 3, 16])
    rng = np.random.default_rng(seed)
    ks, vs, k_pool, v_pool, tables = paged_batch(rng, lengths, s["n_kv"], s["hs"], s["block_size"])
    q = rng.standard_normal((len(lengths), s["n_kv"] * s["g"], 1, s["hs"])).astype(np.float32)
    got = REF.paged_attention(q, k_pool, v_pool, tables, np.array(lengths))
    for b, (k, v) in enumerate(zip(ks, vs)):
        k_t, v_t = (torch.from_numpy(a).repeat_interleave(s["g"], dim=0)[None] for a in (k, v))  # (1, nh, L, hs)
        want = torch.nn.functional.scaled_dot_product_attention(torch.from_numpy(q[b : b + 1]), k_t, v_t).numpy()
        np.testing.assert_allclose(got[b : b + 1], want, rtol=1e-5, atol=1e-5)


def test_paged_attention_through_the_cache():
    """End to end through PagedKVCache: B shares A's first 8 tokens (2 blocks of 4), both grow by one token, and a
    decode step over the pool's block tables equals attention over each sequence's own contiguous keys (layer 1)."""
    cfg = config(n_layer=2, n_kv_head=2, head_dim=8)
    cache = PagedKVCache.allocate(REF, cfg, n_blocks=8, block_size=4)
    rng = np.random.default_rng(0)
    prompts = {"A": list(range(10)), "B": list(range(8)) + [20, 21, 22]}
    rows = {}  # sequence -> its keys and values by position, (L, n_kv, hs) x2, what a contiguous cache would hold
    for seq_id, prompt in prompts.items():
        hits = cache.add_sequence(seq_id, prompt + [30])  # the prompt and the decode step's token
        k = rng.standard_normal((len(prompt) + 1, 2, 8)).astype(np.float32)
        v = rng.standard_normal((len(prompt) + 1, 2, 8)).astype(np.float32)
        if hits:  # the shared prefix was computed by A: the same keys
            k[:hits], v[:hits] = rows["A"][0][:hits], rows["A"][1][:hits]
        new_k, new_v = (a[None, hits:].transpose(0, 2, 1, 3) for a in (k, v))  # (1, n_kv, T, hs): after the prefix
        PagedStep.last_slots(cache, [seq_id]).write(REF, 1, new_k, new_v)
        cache.commit(seq_id)
        rows[seq_id] = (k, v)
    assert cache.sequences["B"].table[:2] == cache.sequences["A"].table[:2]
    tables, lengths = cache.block_tables(["A", "B"])
    q = rng.standard_normal((2, 4, 1, 8)).astype(np.float32)
    got = REF.paged_attention(q, cache.k[1], cache.v[1], tables, lengths)
    ks = [k.transpose(1, 0, 2) for k, _ in rows.values()]  # (n_kv, L, hs) each
    vs = [v.transpose(1, 0, 2) for _, v in rows.values()]
    want = contiguous_reference(q, ks, vs)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_paged_attention_hand_example():
    """Block size 2, zero queries (every score equal): the output is the mean of the values the table reaches.
    Sequence 0 holds 3 slots in blocks [2, 0]: values 1, 2 (block 2), 3 (block 0 row 0) -> mean 2. Sequence 1 holds
    1 slot in block 1: value 10 -> 10. Block 0 row 1 holds 100, past sequence 0's length: never read."""
    k_pool = np.zeros((3, 1, 2, 1), np.float32)
    v_pool = np.array([[[[3.0], [100.0]]], [[[10.0], [0.0]]], [[[1.0], [2.0]]]], np.float32)  # (3, 1, 2, 1)
    tables = np.array([[2, 0], [1, -1]], np.int32)
    got = REF.paged_attention(np.zeros((2, 1, 1, 1), np.float32), k_pool, v_pool, tables, np.array([3, 1]))
    assert got.ravel().tolist() == [2.0, 10.0]


# -- the kernel -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=KERNEL_BACKENDS)
def be(request):
    return make_backend(request.param)


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), peaked=st.booleans(), data=st.data())
def test_kernel_equals_the_numpy_twin(be, seed, peaked, data):
    """paged_attention.cu against NumpyBackend.paged_attention: every head-size bucket (hs 5 .. 256), block sizes
    that split a 32-key tile over many blocks (1, 3) or leave part of a block per tile (40), 2 warps per block (rows
    wrap across blocks and heads), ragged lengths over 1 .. 4 tiles; peaked: queries 10x larger (near one-hot)."""
    T, lengths, s, options = draw_case(data, 100, [5, 33, 64, 65, 128, 256], [1, 3, 16, 40])
    rng = np.random.default_rng(seed)
    _, _, k_pool, v_pool, tables = paged_batch(rng, lengths, s["n_kv"], s["hs"], s["block_size"])
    q = rng.standard_normal((len(lengths), s["n_kv"] * s["g"], T, s["hs"])).astype(np.float32) * (10 if peaked else 1)
    got = be.paged_attention(be.asarray(q), be.asarray(k_pool), be.asarray(v_pool), tables, np.array(lengths),
                             **options)
    want = REF.paged_attention(q, k_pool, v_pool, tables, np.array(lengths), **options)
    assert_close(be.to_numpy(got), want, ATTENTION_RTOL, f"paged attention {s} T={T} {lengths} {options}")


def test_kernel_hand_example(be):
    """The NumPy hand example above, on the kernel: means 2 and 10 through the tables."""
    k_pool = np.zeros((3, 1, 2, 1), np.float32)
    v_pool = np.array([[[[3.0], [100.0]]], [[[10.0], [0.0]]], [[[1.0], [2.0]]]], np.float32)
    got = be.paged_attention(be.zeros((2, 1, 1, 1)), be.asarray(k_pool), be.asarray(v_pool),
                             np.array([[2, 0], [1, -1]], np.int32), np.array([3, 1]))
    np.testing.assert_allclose(be.to_numpy(got).ravel(), [2.0, 10.0], rtol=1e-6)


def test_kernel_head_size_256_with_the_most_warps(be):
    """hs = 256 with 32 warps asked for: the launcher caps the block at 15 warps (attention.cu's 48 KiB rule, which
    the emulator enforces), and 20 query rows (g = 4, T = 5) wrap over two blocks."""
    rng = np.random.default_rng(3)
    _, _, k_pool, v_pool, tables = paged_batch(rng, [9, 70], 1, 256, 16)
    q = rng.standard_normal((2, 4, 5, 256)).astype(np.float32)
    wide = make_backend(be.name, attention_warps=32)
    got = wide.paged_attention(wide.asarray(q), wide.asarray(k_pool), wide.asarray(v_pool), tables, np.array([9, 70]),
                               window=40)
    want = REF.paged_attention(q, k_pool, v_pool, tables, np.array([9, 70]), window=40)
    assert_close(wide.to_numpy(got), want, ATTENTION_RTOL, "paged attention hs=256, 15 warps")


def test_kernel_source_constants_match_the_launcher():
    """The launcher picks a head-size bucket and sizes shared memory with attention.cu's constants: the paged
    kernel's defines and entry points must be the same buckets, each instantiating D / WARP_SIZE dims per lane."""
    source = (KERNELS_DIR / "paged_attention.cu").read_text()
    defines = {k: int(v) for k, v in re.findall(r"^#define (\w+) (\d+)\b", source, flags=re.M)}
    assert defines["TILE_KEYS"] == kernel_backend.TILE_KEYS
    assert defines["MAX_HEAD_DIM"] == kernel_backend.MAX_HEAD_DIM
    entries = re.findall(r"void paged_attention_hs(\d+)\([^)]*\) \{[^}]*\};\s*\w+<(\w+) / WARP_SIZE>", source)
    assert sorted(int(d) for d, _ in entries) == sorted(kernel_backend.HEAD_DIM_BUCKETS)
    for d, instantiated in entries:
        assert int(defines.get(instantiated, instantiated)) == int(d)


# -- refusals, on every backend: a bad table must never reach a kernel ------------------------------------------------


BAD_ARGUMENTS = [
    (dict(tables=[[0, -1], [1, 2]]), "sequence 0: block table entry 1 is -1, not a block of the pool \\(0 .. 3\\)"),
    (dict(tables=[[0, 1], [4, 2]]), "sequence 1: block table entry 0 is 4, not a block of the pool"),
    (dict(lengths=[4, 5]), "sequence 1 has length 5: it must hold its 1 queries' slots and fit its table's 2 "
                           "blocks x 2 slots = 4"),
    (dict(lengths=[0, 1]), "sequence 0 has length 0"),
    (dict(tables=[[0.0, 1.0], [2.0, 3.0]]), "integer block_tables \\(B, max_blocks\\) and lengths \\(B,\\) with B = 2"),
    (dict(lengths=[3]), "integer block_tables \\(B, max_blocks\\) and lengths \\(B,\\) with B = 2"),
    (dict(v_pool_shape=(4, 1, 2, 4)), "k and v pools of one shape"),
    (dict(q_shape=(2, 3, 1, 8)), "n_kv dividing q's 3 heads"),
]


@pytest.mark.parametrize("backend", ["numpy", *KERNEL_BACKENDS])
@pytest.mark.parametrize("change, message", BAD_ARGUMENTS, ids=[m[:30] for _, m in BAD_ARGUMENTS])
def test_bad_tables_and_shapes_are_one_clear_error(backend, change, message):
    """Pool of 4 blocks of 2 slots, n_kv = 2, hs = 8; two sequences of lengths 4 and 3 in tables [[0, 1], [2, 3]]."""
    be = REF if backend == "numpy" else make_backend(backend)
    q = be.zeros(change.get("q_shape", (2, 2, 1, 8)))
    k_pool, v_pool = be.zeros((4, 2, 2, 8)), be.zeros(change.get("v_pool_shape", (4, 2, 2, 8)))
    tables = np.array(change.get("tables", [[0, 1], [2, 3]]))
    with pytest.raises(ValueError, match=message):
        be.paged_attention(q, k_pool, v_pool, tables, np.array(change.get("lengths", [4, 3])))
