"""The paged KV cache's bookkeeping (nanollm/paged_cache.py): random request traffic never leaks or double-frees a
block, shared prefix blocks hold the keys and values of exactly their tokens, and a request the pool cannot hold is
the documented PoolExhausted with the pool unchanged. Plus hand-derivable cases and every refusal."""
import hashlib

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from nanollm.backends.numpy_backend import NumpyBackend
from nanollm.config import ModelConfig
from nanollm.paged_cache import PagedKVCache, PagedStep, PoolExhausted, block_bytes, block_hash


def gather(pool, table, length: int):
    """One sequence's first `length` slots of a pool, contiguous: (n_blocks, n_kv, bs, hs), int (max_blocks,)
    -> (n_kv, length, hs). Read block by block as the table says: the cache's contents are checked through it."""
    n_kv, bs, hs = pool.shape[1:]
    blocks = table[: -(-length // bs)]  # the blocks its slots use, in order
    rows = pool[blocks].transpose(1, 0, 2, 3)  # (n_kv, n, bs, hs)
    return rows.reshape(n_kv, len(blocks) * bs, hs)[:, :length]


def config(n_layer=2, n_kv_head=1, head_dim=2):
    return ModelConfig(arch="gpt2", vocab_size=16, n_layer=n_layer, n_head=n_kv_head, n_kv_head=n_kv_head,
                       n_embd=8, head_dim=head_dim, n_hidden=8, max_seq_len=64, norm_eps=1e-5, tie_embeddings=True,
                       positions="learned", norm="layer", mlp="gelu")


CFG = config()


def content(tokens: list, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in keys and values of the last of `tokens`: like a model's, a function of the whole prefix (and the
    layer), so a block shared by the wrong prefix, or overwritten, shows. -> (n_kv, hs) x2 float32, exact."""
    h = int.from_bytes(hashlib.sha256(bytes(tokens)).digest()[:2], "little")  # < 2**16: exact in float32
    k = np.array([[h, layer]], dtype=np.float32)
    return k, -k - len(tokens)


def compute(cache: PagedKVCache, seq_id) -> None:
    """What a forward pass does for a sequence: write its uncomputed slots at every layer, then commit."""
    seq = cache.sequences[seq_id]
    start, end = seq.computed, len(seq.tokens)
    step = PagedStep.last_slots(cache, [seq_id])  # its last end - start slots
    for layer in range(len(cache.k)):
        kv = [content(seq.tokens[: j + 1], layer) for j in range(start, end)]
        k = np.array([k for k, _ in kv], np.float32).reshape(1, 1, end - start, 2)  # (1, n_kv, T, hs)
        v = np.array([v for _, v in kv], np.float32).reshape(1, 1, end - start, 2)
        step.write(NumpyBackend(), layer, k, v)
    cache.commit(seq_id)


def snapshot(cache: PagedKVCache):
    """Everything a failed operation must leave as it was: the bookkeeping and the pools' bytes."""
    seqs = {s: (list(q.table), list(q.tokens), q.computed, list(q.hashes)) for s, q in cache.sequences.items()}
    return (list(cache.free_blocks), list(cache.refs), dict(cache.cached), dict(cache.hash_of), list(cache.evictable),
            seqs, cache.prompt_tokens, cache.prefix_hits, [a.tobytes() for a in cache.k + cache.v])


PREFIXES = [[], [1, 2, 3], [1, 2, 3, 4, 5, 6, 7], [9, 9, 9, 9, 9]]  # system prompts some requests share


class PagedCacheTraffic(RuleBasedStateMachine):
    """Requests arrive (often with a shared prefix), are computed, grow a token at a time and leave, on a pool small
    enough to run out; the invariants are checked after every step."""

    @initialize(n_blocks=st.integers(1, 10), block_size=st.integers(1, 4))
    def make_pool(self, n_blocks, block_size):
        self.cache = PagedKVCache.allocate(NumpyBackend(), CFG, n_blocks, block_size)
        self.live = []  # sequence ids in the cache
        self.next_id = 0

    def _refused_unchanged(self, operation):
        """Run operation; if it raises PoolExhausted, the pool must be exactly as before. -> whether it ran."""
        before = snapshot(self.cache)
        try:
            operation()
        except PoolExhausted as e:
            assert "KV pool" in str(e) and isinstance(e, MemoryError)
            assert snapshot(self.cache) == before
            return False
        return True

    @rule(prefix=st.sampled_from(PREFIXES), suffix=st.lists(st.integers(0, 9), max_size=6), data=st.data())
    def add(self, prefix, suffix, data):
        tokens = prefix + suffix or [0]
        seq_id, bs = f"r{self.next_id}", self.cache.block_size
        # every live, computed sequence's full blocks are cached and cannot be evicted: a new prompt must hit them
        expected = max((min(shared_prefix(tokens, s.tokens[: s.computed]), len(tokens) - 1) // bs * bs
                        for s in self.cache.sequences.values()), default=0)
        hits = []
        if self._refused_unchanged(lambda: hits.append(self.cache.add_sequence(seq_id, tokens))):
            assert hits[0] >= expected and hits[0] % bs == 0 and hits[0] < len(tokens)
            self.live.append(seq_id)
            self.next_id += 1
            if data.draw(st.booleans(), label="computed at once"):
                compute(self.cache, seq_id)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def compute_one(self, data):
        compute(self.cache, data.draw(st.sampled_from(self.live)))

    @precondition(lambda self: self.live)
    @rule(data=st.data(), token=st.integers(0, 9))
    def grow(self, data, token):
        seq_id = data.draw(st.sampled_from(self.live))
        n = len(self.cache.sequences[seq_id].tokens)
        if self._refused_unchanged(lambda: self.cache.append(seq_id, token)):
            assert self.cache.sequences[seq_id].tokens[-1] == token and len(self.cache.sequences[seq_id].tokens) == n + 1

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def free(self, data):
        seq_id = data.draw(st.sampled_from(self.live))
        self.cache.free(seq_id)
        self.live.remove(seq_id)
        before = snapshot(self.cache)
        with pytest.raises(ValueError, match=f"no sequence '{seq_id}'"):
            self.cache.free(seq_id)  # a double free is refused and changes nothing
        assert snapshot(self.cache) == before

    @invariant()
    def every_block_is_in_exactly_one_place(self):
        c = self.cache
        free, evictable = list(c.free_blocks), set(c.evictable)
        held = {b for b in range(c.n_blocks) if c.refs[b] > 0}
        assert len(free) == len(set(free))  # none freed twice
        assert set(free) | evictable | held == set(range(c.n_blocks))
        assert len(free) + len(evictable) + len(held) == c.n_blocks  # disjoint, none lost
        stats = c.stats()
        assert (stats.free, stats.cached, stats.used) == (len(free), len(evictable), len(held))

    @invariant()
    def reference_counts_match_the_tables(self):
        c = self.cache
        counts = np.bincount([b for s in c.sequences.values() for b in s.table], minlength=c.n_blocks)
        assert counts.tolist() == c.refs
        assert all(len(s.table) == len(set(s.table)) for s in c.sequences.values())

    @invariant()
    def the_prefix_cache_names_full_written_blocks(self):
        """cached and hash_of are inverse; evictable blocks are cached, free ones are not; every full computed
        block a sequence holds is the cached block of its hash (so a later prompt can find it)."""
        c = self.cache
        assert {b: h for h, b in c.cached.items()} == c.hash_of
        assert set(c.evictable) <= set(c.hash_of) and not set(c.free_blocks) & set(c.hash_of)
        for s in c.sequences.values():
            assert len(s.hashes) == s.computed // c.block_size
            assert [c.cached[h] for h in s.hashes] == s.table[: len(s.hashes)]

    @invariant()
    def every_sequence_reads_the_keys_of_its_own_tokens(self):
        """Through its table (shared prefix blocks included) each computed slot holds what that sequence's own
        prefix would compute; each cached block nobody holds still holds its tokens' keys (never overwritten)."""
        c = self.cache
        for s in c.sequences.values():
            table = np.array(s.table)
            for layer in range(len(c.k)):
                k, v = gather(c.k[layer], table, s.computed), gather(c.v[layer], table, s.computed)  # (1, n, 2)
                want = [content(s.tokens[: j + 1], layer) for j in range(s.computed)]
                assert np.array_equal(k[0], np.array([w[0][0] for w in want]).reshape(-1, 2))
                assert np.array_equal(v[0], np.array([w[1][0] for w in want]).reshape(-1, 2))


def shared_prefix(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


TestPagedCacheTraffic = PagedCacheTraffic.TestCase
TestPagedCacheTraffic.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# -- hand-derivable cases -------------------------------------------------------------------------------------------


def test_two_prompts_share_their_common_full_blocks():
    """Block size 4. A = 10 tokens takes 3 blocks (4 + 4 + 2). B = A's first 8 tokens + 3 others: its first 2
    blocks hash like A's, so they are shared (8 tokens hit), and B takes 1 block for its last 3: 4 blocks in use of
    the 6, 2 free; 21 prompt tokens looked up, 8 found."""
    cache = PagedKVCache.allocate(NumpyBackend(), CFG, n_blocks=6, block_size=4)
    a = list(range(10))
    assert cache.add_sequence("A", a) == 0
    compute(cache, "A")
    assert cache.add_sequence("B", a[:8] + [7, 7, 7]) == 8
    assert cache.sequences["B"].table[:2] == cache.sequences["A"].table[:2]
    assert cache.refs[cache.sequences["A"].table[0]] == 2
    s = cache.stats()
    assert (s.used, s.free, s.cached, s.prompt_tokens, s.prefix_hits) == (4, 2, 0, 21, 8)


def test_uncomputed_blocks_are_not_shared():
    """A prompt whose keys are not written yet (no commit) cannot be a prefix hit: its blocks hold nothing yet."""
    cache = PagedKVCache.allocate(NumpyBackend(), CFG, n_blocks=6, block_size=2)
    cache.add_sequence("A", [1, 2, 3, 4, 5])
    assert cache.add_sequence("B", [1, 2, 3, 4, 5]) == 0


def test_a_fully_cached_prompt_recomputes_its_last_block_then_holds_the_cached_one():
    """Block size 4, the same 8-token prompt twice: the second could find both blocks, but the last token's logits
    must be computed, so it takes block 1 from the cache and recomputes block 2 (as vLLM does), 4 hits. At commit
    its copy of block 2 is a duplicate of A's: it switches to A's and frees its own, so 2 blocks are in use, not 3."""
    cache = PagedKVCache.allocate(NumpyBackend(), CFG, n_blocks=4, block_size=4)
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    cache.add_sequence("A", prompt)
    compute(cache, "A")
    assert cache.add_sequence("B", prompt) == 4
    assert cache.stats().used == 3
    compute(cache, "B")
    assert cache.sequences["B"].table == cache.sequences["A"].table
    assert (cache.stats().used, cache.stats().free) == (2, 2)


def test_freed_prefix_stays_cached_and_the_tail_is_evicted_first():
    """Block size 2, 4 blocks. A = 6 tokens (3 full blocks) is computed and freed: its blocks stay cached,
    evictable, tail first (released last to first). C (2 new blocks' worth, 4 tokens) takes the free block and then
    evicts the least recently used: A's last block. A's first two blocks survive: once C leaves, A's prompt hits
    them (4 tokens) and recomputes only its last block."""
    cache = PagedKVCache.allocate(NumpyBackend(), CFG, n_blocks=4, block_size=2)
    a = [1, 2, 3, 4, 5, 6]
    cache.add_sequence("A", a)
    compute(cache, "A")
    first, second, third = cache.sequences["A"].table
    cache.free("A")
    assert list(cache.evictable) == [third, second, first]
    assert (cache.stats().cached, cache.stats().free) == (3, 1)
    cache.add_sequence("C", [8, 8, 8, 8])
    assert third in cache.sequences["C"].table and list(cache.evictable) == [second, first]
    cache.free("C")
    assert cache.add_sequence("A again", a) == 4


def test_exhaustion_is_a_memory_error_that_names_the_need():
    cache = PagedKVCache.allocate(NumpyBackend(), CFG, n_blocks=2, block_size=2)
    with pytest.raises(PoolExhausted, match=r"the KV pool has 2 blocks to give; a prompt of 5 tokens needs 3 more"):
        cache.add_sequence("big", [1, 2, 3, 4, 5])
    cache.add_sequence("A", [1, 2, 3, 4])
    with pytest.raises(MemoryError, match=r"all in use: sequence 'A' cannot grow past 4 tokens"):
        cache.append("A", 5)
    assert cache.sequences["A"].tokens == [1, 2, 3, 4]


def test_block_bytes_gpt2():
    """GPT-2 124M: 2 (k, v) x 12 layers x 12 heads x 16 slots x 64 dims x 4 bytes = 1,179,648 bytes a block,
    73,728 a token; a pool of 1 GiB holds 910 blocks (14,560 tokens in flight)."""
    gpt2 = config(n_layer=12, n_kv_head=12, head_dim=64)
    assert block_bytes(gpt2, 16) == 1_179_648
    assert 2**30 // block_bytes(gpt2, 16) == 910


def test_block_hash_chains_the_parent():
    """Equal tokens after different parents are different blocks; order matters."""
    assert block_hash(b"", [1, 2]) != block_hash(b"", [2, 1])
    assert block_hash(block_hash(b"", [1]), [2]) != block_hash(block_hash(b"", [3]), [2])
    assert block_hash(b"", [1, 2]) == hashlib.sha256(np.array([1, 2], "<i8").tobytes()).digest()


def test_write_places_each_row_in_its_slot():
    """Position j of a sequence is row j % block_size of block table[j // block_size]: in blocks [2, 0] (block size
    3) position 4 is row 1 of block 0, position 0 row 0 of block 2."""
    cache = PagedKVCache.allocate(NumpyBackend(), CFG, n_blocks=3, block_size=3)
    cache.free_blocks.rotate(1)  # the next blocks taken are 2, then 0
    cache.add_sequence("A", [1, 2, 3, 4, 5])
    assert cache.sequences["A"].table == [2, 0]
    k = np.arange(10, dtype=np.float32).reshape(1, 1, 5, 2)  # (B, n_kv, T, hs)
    PagedStep.last_slots(cache, ["A"]).write(NumpyBackend(), 1, k, -k)
    assert cache.k[1][0, 0, 1].tolist() == [8.0, 9.0] and cache.v[1][2, 0, 0].tolist() == [-0.0, -1.0]
    tables, lengths = cache.block_tables(["A"])
    assert tables.tolist() == [[2, 0]] and lengths.tolist() == [5]


# -- refusals ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_blocks, block_size, message", [
    (0, 16, "n_blocks must be a positive whole number, got 0"),
    (4, True, "block_size must be a positive whole number, got True"),
    (4, 2.0, "block_size must be a positive whole number, got 2.0"),
])  # fmt: skip
def test_pool_sizes_refused(n_blocks, block_size, message):
    with pytest.raises(ValueError, match=message):
        PagedKVCache.allocate(NumpyBackend(), CFG, n_blocks, block_size)


def test_a_pool_larger_than_memory_is_refused_before_allocating():
    with pytest.raises(MemoryError, match=r"a paged KV cache of 1,000,000,000,000 blocks x 16 slots \(2 layers\) needs"):
        PagedKVCache.allocate(NumpyBackend(), CFG, 10**12, 16)


@pytest.mark.parametrize("operation, message", [
    (lambda c: c.add_sequence("A", [1]), "sequence 'A' is already in the paged KV cache"),
    (lambda c: c.add_sequence("B", []), "sequence 'B': a prompt needs at least one token"),
    (lambda c: c.add_sequence("B", [1, -2]), "token ids must be whole numbers >= 0, got -2"),
    (lambda c: c.add_sequence("B", [1.0]), "token ids must be whole numbers >= 0, got 1.0"),
    (lambda c: c.add_sequence("B", "ab"), "token ids must be whole numbers >= 0, got 'a'"),
    (lambda c: c.append("A", True), "token ids must be whole numbers >= 0, got True"),
    (lambda c: c.append("Z", 1), "no sequence 'Z' in the paged KV cache"),
    (lambda c: PagedStep.last_slots(c, ["A"]).write(NumpyBackend(), 0, *np.zeros((2, 1, 2, 1, 2), np.float32)),
     r"paged_write takes keys \(B, n_kv, T, hs\) with the n_kv and hs of its pool \(n_blocks, n_kv, bs, hs\), got "
     r"\(1, 2, 1, 2\) and \(4, 1, 2, 2\)"),
])  # fmt: skip
def test_bad_requests_are_one_clear_error_and_change_nothing(operation, message):
    cache = PagedKVCache.allocate(NumpyBackend(), CFG, n_blocks=4, block_size=2)
    cache.add_sequence("A", [1, 2, 3])
    before = snapshot(cache)
    with pytest.raises(ValueError, match=message):
        operation(cache)
    assert snapshot(cache) == before
