"""The paged KV cache: keys and values in a pool of fixed-size blocks, found through a block table per sequence.

KVCache (kv_cache.py, read it first) gives every sequence max_len slots up front, so a server holding B requests
pays B x max context whatever they use. Here, as in vLLM's PagedAttention (Kwon et al. 2023, "Efficient Memory
Management for Large Language Model Serving with PagedAttention"), the memory is one pool per layer of n_blocks
blocks of block_size slots each, allocated once. A sequence owns a list of block ids, its block table: slot j of the
sequence is row j % block_size of block table[j // block_size]. It takes a block when it grows past its last one
and gives its blocks back when it ends, so memory follows the tokens in flight; a request the pool cannot hold is a
PoolExhausted (a MemoryError) that leaves the pool as it was, so a scheduler can queue the request and retry.

Prefix caching (vLLM's automatic prefix caching): the keys and values of a block are a function of the tokens up to
its end and of nothing else, so a full block is named by a hash of (its parent block's hash, its own token ids),
and a new prompt looks its full blocks up in order: each one found is shared (its reference count goes up) instead
of recomputed. The hash is SHA-256, not Python's 64-bit hash(): a collision would hand a request another prompt's
keys and values, a silently wrong answer (vLLM offers SHA-256 for the same reason, its prefix_caching_hash_algo).

What is shared: only full blocks whose keys and values every layer has written. A sequence writes only into its
last block, which is never full while it writes, so a shared block is never written again: no copy-on-write is
needed, and no write can reach another sequence. The price: a shared prefix is shared in whole blocks (the tail of
it, under block_size tokens, is recomputed), and the last token of a prompt is always computed (its logits are the
first choice; as vLLM, a prompt whose every block is cached recomputes its last block). A block computed twice
(that last block, or two equal prompts in one step) is swapped for the cached copy at commit: a prefix is held once.

A block whose count falls to 0 goes back to the free list, or, if it is a cached full block, stays in the prefix
cache as evictable, least recently used first: a later prompt can still hit it, and when the free list is empty the
oldest one is evicted (its hash forgotten) and reused. A sequence's blocks are released last to first (as vLLM), so
its tail, the part least likely to be shared, is evicted before its first blocks.

Shapes: each pool is (n_blocks, n_kv, block_size, hs) float32, so a (block, head) pair is a contiguous
(block_size, hs) tile, as KVCache's (S, hs) rows are. The attention over block tables is the backends'
paged_attention (NumPy twin: gather, then attention; CUDA: kernels/paged_attention.cu). A forward pass reaches the
pool through a PagedStep (below), which answers transformer.attention's two calls, write and attend, as a KVCache's
CacheStep does; paged_runner.py drives whole requests through it.
"""
import hashlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from .kv_cache import kv_cache_bytes
from .memory import check_fits

ROOT_HASH = b""  # the parent of a sequence's first block


class PoolExhausted(MemoryError):
    """The pool has too few free or evictable blocks for a request; the pool is unchanged, so a caller can queue the
    request (or free another sequence) and try again."""


@dataclass
class Sequence:
    """One sequence's view of the pool."""

    table: list  # block ids: slot j is row j % block_size of block table[j // block_size]
    tokens: list  # the token id in each slot claimed so far (len(tokens) slots)
    computed: int = 0  # slots whose keys and values every layer has written (prefix-cache hits included)
    hashes: list = field(default_factory=list)  # the hash of each full, written block of table, in order


@dataclass(frozen=True)
class PoolStats:
    total: int  # blocks in the pool: used + free + cached
    used: int  # blocks some sequence holds (reference count > 0)
    free: int  # blocks on the free list
    cached: int  # full blocks nobody holds, kept for prefix hits and evicted when the free list runs out
    prompt_tokens: int  # prompt tokens looked up in the prefix cache so far
    prefix_hits: int  # of those, tokens found (their keys and values were not recomputed)
    sequences: int  # sequences in the pool now


def block_hash(parent: bytes, tokens) -> bytes:
    """SHA-256 of the parent block's hash and this block's token ids (little-endian int64): a name for the block's
    keys and values, which depend on exactly these tokens. Example: block_hash(b"", [1, 2]) != block_hash(b"",
    [2, 1]), and equal token ids after different parents give different hashes."""
    return hashlib.sha256(parent + np.asarray(tokens, dtype="<i8").tobytes()).digest()


def block_bytes(cfg, block_size: int) -> int:
    """Bytes one block takes over every layer: 2 (k and v) * layers * n_kv * block_size * hs * 4 (float32). A
    server sizes its pool as n_blocks = the memory it grants the cache // block_bytes(cfg, block_size)."""
    return kv_cache_bytes(cfg, batch_size=1, max_len=block_size)  # a block is one sequence's worth of slots


class PagedKVCache:
    """The pools (per layer k and v: (n_blocks, n_kv, block_size, hs)) and the bookkeeping of who holds which block.

    The life of a request (a scheduler drives it; a PagedStep is what the forward pass calls):
        hits = cache.add_sequence(rid, prompt_ids)     # slots for the prompt; hits: leading tokens already cached
        step = PagedStep.last_slots(cache, [rid])      # a pass over the rest writes their keys (be.paged_write)
        cache.commit(rid)                              # every claimed slot is written: full blocks become shareable
        cache.append(rid, token); ...; cache.commit(rid)   # one decode step: a slot for the new token, then written
        tables, lengths = cache.block_tables([rid, ...])   # what paged_attention reads
        cache.free(rid)
    append_step claims a whole decode step's slots at once, all or none; rollback undoes claims a failed pass left.
    """

    def __init__(self, k: list, v: list):
        self.k, self.v = k, v  # per layer: (n_blocks, n_kv, block_size, hs)
        self.n_blocks, _, self.block_size, _ = k[0].shape
        self.refs = [0] * self.n_blocks  # sequences holding each block
        self.free_blocks = deque(range(self.n_blocks))  # taken from the left, returned on the right
        self.cached = {}  # block hash -> block id: full, written blocks a prompt may share
        self.hash_of = {}  # block id -> its hash, for the blocks in `cached`
        self.evictable = OrderedDict()  # cached blocks nobody holds, least recently used first (values unused)
        self.sequences = {}  # sequence id -> Sequence
        self.prompt_tokens = self.prefix_hits = 0

    @classmethod
    def allocate(cls, backend, cfg, n_blocks: int, block_size: int = 16) -> "PagedKVCache":
        """Zeroed pools of n_blocks blocks of block_size slots for every layer, once the machine is known to hold
        them (as KVCache.allocate). block_size 16 is vLLM's default: small enough that a sequence wastes under one
        block, large enough that a key tile of the kernel spans few blocks."""
        for name, value in (("n_blocks", n_blocks), ("block_size", block_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        check_fits(n_blocks * block_bytes(cfg, block_size),
                   f"a paged KV cache of {n_blocks:,} blocks x {block_size} slots ({cfg.n_layer} layers)")
        pools = backend.zeros((2, cfg.n_layer, n_blocks, cfg.n_kv_head, block_size, cfg.head_dim))
        return cls(k=list(pools[0]), v=list(pools[1]))  # one buffer for every layer, as KVCache.allocate

    # -- requests arrive, grow and leave ---------------------------------------------------------------------------

    def add_sequence(self, seq_id, token_ids) -> int:
        """Claim slots for a prompt, sharing its cached full blocks. -> how many leading tokens are cached (a
        multiple of block_size, under len(token_ids)): the forward pass computes the rest. PoolExhausted, with the
        pool unchanged, when the blocks it needs are not there."""
        if seq_id in self.sequences:
            raise ValueError(f"sequence {seq_id!r} is already in the paged KV cache")
        tokens = token_list(token_ids)
        if not tokens:
            raise ValueError(f"sequence {seq_id!r}: a prompt needs at least one token")
        hits = self._cached_prefix(tokens)
        needed = -(-len(tokens) // self.block_size) - len(hits)
        available = len(self.free_blocks) + len(self.evictable) - sum(b in self.evictable for b in hits)
        if needed > available:
            raise PoolExhausted(f"the KV pool has {available} blocks to give; a prompt of {len(tokens)} tokens needs "
                                f"{needed} more ({len(hits)} of its blocks are cached, {self.block_size} slots each)")
        for block in hits:
            self.evictable.pop(block, None)
            self.refs[block] += 1
        seq = Sequence(table=list(hits), tokens=tokens, computed=len(hits) * self.block_size,
                       hashes=[self.hash_of[b] for b in hits])
        seq.table += [self._take() for _ in range(needed)]
        self.sequences[seq_id] = seq
        self.prompt_tokens += len(tokens)
        self.prefix_hits += seq.computed
        return seq.computed

    def append(self, seq_id, token_id) -> None:
        """Claim the next slot of a sequence for token_id (a decode step), taking a block when the last one is full.
        PoolExhausted, with the pool unchanged, when no block is left: a scheduler then frees (preempts) a sequence."""
        seq = self._sequence(seq_id)
        token = token_list([token_id])[0]
        if len(seq.tokens) % self.block_size == 0:  # the last block is full: the new slot opens a block
            if not self.free_blocks and not self.evictable:
                raise PoolExhausted(f"the KV pool's {self.n_blocks} blocks are all in use: sequence {seq_id!r} cannot "
                                    f"grow past {len(seq.tokens)} tokens")
            seq.table.append(self._take())
        seq.tokens.append(token)

    def append_step(self, seq_ids, token_ids) -> None:
        """One decode step's slots, all or none: sequence seq_ids[b] claims its next slot for token_ids[b].
        PoolExhausted, with the pool unchanged, when the step opens more blocks than are free or evictable (a
        scheduler then preempts a sequence and retries): claimed one by one, the sequences before the one that found
        no block would have grown and the step would be half taken."""
        seq_ids, tokens = list(seq_ids), token_list(token_ids)
        if len(tokens) != len(seq_ids) or len(set(seq_ids)) != len(seq_ids):
            raise ValueError(f"a decode step takes one token for each of distinct sequences, got {len(seq_ids)} "
                             f"sequence ids ({len(set(seq_ids))} distinct) and {len(tokens)} tokens")
        opening = sum(len(self._sequence(s).tokens) % self.block_size == 0 for s in seq_ids)  # last block full
        available = len(self.free_blocks) + len(self.evictable)
        if opening > available:
            raise PoolExhausted(f"the KV pool has {available} blocks to give; a decode step of {len(seq_ids)} "
                                f"sequences needs {opening} new ones ({self.block_size} slots each)")
        for seq_id, token in zip(seq_ids, tokens):
            self.append(seq_id, token)

    def rollback(self, seq_id) -> None:
        """Forget the slots the sequence claimed since its last commit (a forward pass that failed before writing
        them): their tokens go, and so do the blocks opened for them, so the sequence is as it was before."""
        seq = self._sequence(seq_id)
        del seq.tokens[seq.computed :]
        while len(seq.table) > -(-len(seq.tokens) // self.block_size):
            self._release(seq.table.pop())

    def commit(self, seq_id) -> None:
        """Every claimed slot of the sequence now holds its keys and values at every layer (call after the forward
        pass): its full blocks become shareable, each under the hash of its tokens and its parent's hash.

        A block whose hash another block already holds (two equal prompts computed in one step, or the last block
        of a fully cached prompt, recomputed) is a duplicate: the sequence switches to the cached block and its own
        goes back to the free list, so a prefix is held once and every full block a sequence holds is findable."""
        seq = self._sequence(seq_id)
        seq.computed = len(seq.tokens)
        for i in range(len(seq.hashes), seq.computed // self.block_size):
            parent = seq.hashes[-1] if seq.hashes else ROOT_HASH
            digest = block_hash(parent, seq.tokens[i * self.block_size : (i + 1) * self.block_size])
            seq.hashes.append(digest)
            if digest not in self.cached:
                self.cached[digest], self.hash_of[seq.table[i]] = seq.table[i], digest
                continue
            shared = self.cached[digest]
            self.evictable.pop(shared, None)
            self.refs[shared] += 1
            self._release(seq.table[i])
            seq.table[i] = shared

    def free(self, seq_id) -> None:
        """The sequence ends: each of its blocks loses a holder. At 0 a cached block becomes evictable (most recently
        used), any other block goes back to the free list. Last block first: its tail is evicted before its head."""
        seq = self._sequence(seq_id)
        del self.sequences[seq_id]
        for block in reversed(seq.table):
            self._release(block)

    # -- what the forward pass and attention read ------------------------------------------------------------------

    def block_tables(self, seq_ids, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The tables and lengths paged_attention reads. -> int32 (B, max_blocks) padded with -1, int32 (B,)
        width: max_blocks (default: the longest table), at least that."""
        seqs = [self._sequence(s) for s in seq_ids]
        longest = max((len(s.table) for s in seqs), default=0)
        tables = np.full((len(seqs), longest if width is None else max(width, longest)), -1, dtype=np.int32)
        for b, seq in enumerate(seqs):
            tables[b, : len(seq.table)] = seq.table
        return tables, np.array([len(s.tokens) for s in seqs], dtype=np.int32)

    def stats(self) -> PoolStats:
        return PoolStats(total=self.n_blocks, used=sum(r > 0 for r in self.refs), free=len(self.free_blocks),
                         cached=len(self.evictable), prompt_tokens=self.prompt_tokens, prefix_hits=self.prefix_hits,
                         sequences=len(self.sequences))

    # -- bookkeeping -----------------------------------------------------------------------------------------------

    def _sequence(self, seq_id) -> Sequence:
        if seq_id not in self.sequences:
            raise ValueError(f"no sequence {seq_id!r} in the paged KV cache (never added, or already freed)")
        return self.sequences[seq_id]

    def _cached_prefix(self, tokens: list) -> list:
        """The cached blocks of the prompt's leading full blocks, up to the first miss; the block holding the last
        token is never taken from the cache (its logits must be computed)."""
        blocks, parent = [], ROOT_HASH
        for i in range((len(tokens) - 1) // self.block_size):
            parent = block_hash(parent, tokens[i * self.block_size : (i + 1) * self.block_size])
            if parent not in self.cached:
                break
            blocks.append(self.cached[parent])
        return blocks

    def _take(self) -> int:
        """A block for a new owner: from the free list, else the least recently used cached block, evicted."""
        if self.free_blocks:
            block = self.free_blocks.popleft()
        else:
            block, _ = self.evictable.popitem(last=False)
            del self.cached[self.hash_of.pop(block)]
        self.refs[block] = 1
        return block

    def _release(self, block: int) -> None:
        """One holder fewer. At 0 a cached block becomes evictable (most recently used), any other is free."""
        self.refs[block] -= 1
        if self.refs[block] == 0:
            if block in self.hash_of:
                self.evictable[block] = None
            else:
                self.free_blocks.append(block)


@dataclass
class PagedStep:
    """One forward pass over a PagedKVCache: B sequences with T new positions each, their last T claimed slots (a
    decode step: T = 1 for every running sequence; a prefill: one sequence's uncached tail). It answers
    transformer.attention's two calls as kv_cache.CacheStep does, so the forward pass is the same over both caches.

    Example, block_size 4: a sequence of 6 slots in blocks [7, 2] decoding its 6th token writes slot 5, row 1 of
    block 2, and its query reads slots 0 .. 5 through table [7, 2], length 6."""

    cache: PagedKVCache
    tables: np.ndarray  # int32 (B, max_blocks): each sequence's block table, padded with -1
    lengths: np.ndarray  # int32 (B,): the slots each sequence holds, its T new ones included
    start = 0  # no slot number for a recorded step to set (CacheStep's start): the tables and lengths say where

    @classmethod
    def last_slots(cls, cache: PagedKVCache, seq_ids, width: int | None = None) -> "PagedStep":
        """The step over each sequence's last T claimed slots (claimed by add_sequence, append or append_step; T is
        the pass's). width: the tables' (block_tables)."""
        return cls(cache, *cache.block_tables(seq_ids, width))

    @property
    def inputs(self) -> tuple:
        """What a recorded decode step reads anew at each replay besides the tokens and RoPE tables (see
        nanollm/replayed_step.py): the tables and lengths, which the kernels read from memory."""
        return self.tables, self.lengths

    def write(self, be, layer: int, k, v) -> None:
        """Layer's keys and values of the new positions into their slots. (B, n_kv, T, hs) x2"""
        be.paged_write(self.cache.k[layer], k, self.tables, self.lengths)
        be.paged_write(self.cache.v[layer], v, self.tables, self.lengths)

    def attend(self, be, layer: int, q, **options):
        """Each sequence's queries over its slots, read through its block table. (B, nh, T, hs) -> (B, nh, T, hs)
        options: the backend attention's scale, softcap and window."""
        return be.paged_attention(q, self.cache.k[layer], self.cache.v[layer], self.tables, self.lengths, **options)


def token_list(token_ids) -> list:
    """Token ids as a list of Python ints >= 0; anything else (a float, a negative id, a string) is a ValueError."""
    tokens = []
    for t in token_ids:
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or t < 0:
            raise ValueError(f"token ids must be whole numbers >= 0, got {t!r}")
        tokens.append(int(t))
    return tokens


# -- what both backends' paged_attention share ---------------------------------------------------------------------


def check_paged_args(q_shape, k_pool_shape, v_pool_shape, block_tables, lengths) -> tuple[np.ndarray, np.ndarray]:
    """Refuse paged_attention arguments that would read outside the pool. -> host int32 tables and lengths.

    q (B, nh, T, hs); pools (n_blocks, n_kv, bs, hs); block_tables (B, max_blocks); lengths (B,). Each sequence's
    T queries are its last T slots, so T <= lengths[b] <= max_blocks * bs, and the entries its slots use,
    block_tables[b, :ceil(lengths[b] / bs)], must be blocks of the pool (the rest is padding, never read). A kernel
    would read wherever a bad entry points, so every backend checks here, on the host, before it reads.
    """
    if len(q_shape) != 4 or len(k_pool_shape) != 4:
        raise ValueError(f"paged attention takes q (B, nh, T, hs) and pools (n_blocks, n_kv, bs, hs), got shapes "
                         f"{tuple(q_shape)} and {tuple(k_pool_shape)}")
    B, nh, T, hs = q_shape
    n_blocks, n_kv, bs, pool_hs = k_pool_shape
    if tuple(v_pool_shape) != tuple(k_pool_shape) or pool_hs != hs or n_kv < 1 or nh % n_kv:
        raise ValueError(f"paged attention takes k and v pools of one shape (n_blocks, n_kv, bs, hs) with q's hs = "
                         f"{hs} and n_kv dividing q's {nh} heads, got {tuple(k_pool_shape)} and {tuple(v_pool_shape)}")
    tables, lengths = np.asarray(block_tables), np.asarray(lengths)
    if tables.ndim != 2 or tables.shape[0] != B or lengths.shape != (B,) or not (
            tables.dtype.kind in "iu" and lengths.dtype.kind in "iu"):
        raise ValueError(f"paged attention takes integer block_tables (B, max_blocks) and lengths (B,) with B = {B}, "
                         f"got {tables.dtype} {tables.shape} and {lengths.dtype} {lengths.shape}")
    tables, lengths = tables.astype(np.int64), lengths.astype(np.int64)  # signed: unsigned ints wrap on negation
    capacity = tables.shape[1] * bs
    bad = np.flatnonzero((lengths < max(T, 1)) | (lengths > capacity))
    if bad.size:
        raise ValueError(f"sequence {bad[0]} has length {lengths[bad[0]]}: it must hold its {T} queries' slots and "
                         f"fit its table's {tables.shape[1]} blocks x {bs} slots = {capacity}")
    used = np.arange(tables.shape[1]) < -(-lengths[:, None] // bs)  # (B, max_blocks) the entries its slots read
    bad = np.argwhere(used & ((tables < 0) | (tables >= n_blocks)))
    if bad.size:
        b, i = bad[0]
        raise ValueError(f"sequence {b}: block table entry {i} is {tables[b, i]}, not a block of the pool "
                         f"(0 .. {n_blocks - 1})")
    return np.where(used, tables, -1).astype(np.int32), lengths.astype(np.int32)  # padding: -1, whatever it was


def last_slot_places(tables: np.ndarray, lengths: np.ndarray, T: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Where each sequence's last T slots lie, as the backends' paged_write writes them: int32 tables (B, max_blocks)
    and lengths (B,) checked by check_paged_args. -> blocks, rows: int (B, T) each; slot lengths[b] - T + t of
    sequence b is row rows[b, t] of block blocks[b, t]."""
    j = lengths[:, None].astype(np.int64) - T + np.arange(T)  # (B, T) the slots
    return np.take_along_axis(tables, j // block_size, axis=1), j % block_size


def check_paged_write(x_shape, pool_shape, block_tables, lengths) -> tuple[np.ndarray, np.ndarray]:
    """Refuse paged_write arguments that would write outside the pool: check_paged_args' checks, and keys (B, n_kv,
    T, hs) with the pool's heads and head size (a kernel would write a wider row into the next slot's). -> host int32
    tables and lengths."""
    if len(x_shape) != 4 or len(pool_shape) != 4 or (x_shape[1], x_shape[3]) != (pool_shape[1], pool_shape[3]):
        raise ValueError(f"paged_write takes keys (B, n_kv, T, hs) with the n_kv and hs of its pool (n_blocks, n_kv, "
                         f"bs, hs), got {tuple(x_shape)} and {tuple(pool_shape)}")
    return check_paged_args(x_shape, pool_shape, pool_shape, block_tables, lengths)
