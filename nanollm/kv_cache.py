"""The key/value cache: what decode reads instead of recomputing the prompt.

Prefill writes the keys and values of every prompt position; each decode step appends one position and attends over
everything written so far. Buffers are allocated once for the whole generation, so a step never copies the past.

Sliding-window layers (Mistral v0.1, Phi-3-mini-4k, every other Gemma 2 layer, five of six Gemma 3 layers) attend to
only the last sliding_window slots, yet here they keep every slot like a full layer, and attention masks the older
ones out. A ring buffer of sliding_window slots per such layer would bound their memory by the window instead of the
sequence: for Gemma 3 at a 32k context with a 1024 window, its sliding layers' cache would shrink 32x, about 27x for
the whole model. It would cost attention a second notion of where a key sits (slot = position mod window); nanollm
keeps one cache layout for every layer instead, and says so here.
"""
from dataclasses import dataclass, field

import numpy as np

from .memory import check_fits


@dataclass
class KVCache:
    k: list  # per layer: (B, n_kv, max_len, hs) float32, slots 0 .. length-1 filled
    v: list  # per layer: (B, n_kv, max_len, hs)
    ids: np.ndarray  # (B, max_len) int64: the token in each slot (what a recomputation needs: see Model.step)
    positions: np.ndarray  # (B, max_len) int64: each slot's position in its own sequence
    length: int = 0  # slots held; changed only here (append, truncate, restart, copy_prefix), as llama2.c's `pos`
    replayed: object = field(default=None, compare=False, repr=False)  # a decode step recorded on these buffers
    # (nanollm/replayed_step.py: the cpu backend's), which Model.step replays

    @classmethod
    def allocate(cls, backend, cfg, batch_size: int, max_len: int) -> "KVCache":
        """Zeroed buffers for batch_size sequences of max_len positions, once the machine is known to hold them
        (batch size and length come from flags and the config: they can ask for terabytes)."""
        check_fits(kv_cache_bytes(cfg, batch_size, max_len),
                   f"a KV cache of {batch_size} sequence(s) x {max_len:,} positions ({cfg.n_layer} layers)")
        keys_values = backend.zeros((2, cfg.n_layer, batch_size, cfg.n_kv_head, max_len, cfg.head_dim))
        return cls(
            k=list(keys_values[0]),  # one buffer for every layer: one large allocation (the cpu backend's 2 MiB pages)
            v=list(keys_values[1]),
            ids=np.zeros((batch_size, max_len), dtype=np.int64),
            positions=np.zeros((batch_size, max_len), dtype=np.int64),
        )

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.k + self.v)

    def update(self, be, layer: int, k, v, start: int):
        """Write k, v (B, n_kv, T, hs) at slots start .. start+T-1, by the backend's write_slots (the cpu backend's
        is a kernel, which a recorded decode step replays); return the views of slots 0 .. start+T-1."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing up to {end} does not fit")
        be.write_slots(self.k[layer], k, start)
        be.write_slots(self.v[layer], v, start)
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, n_kv, end, hs) x2

    def append(self, ids: np.ndarray, positions: np.ndarray) -> int:
        """Claim the next T slots for tokens ids (B, T) at positions (B, T): the cache now holds them (the layers
        write their keys and values there next, through `update`). -> the first of those slots."""
        start, end = self.length, self.length + ids.shape[1]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing up to {end} does not fit")
        self.ids[:, start:end], self.positions[:, start:end] = ids, positions
        self.length = end
        return start

    def history(self, ids: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every token and position held so far, then ids and positions (B, T): what a recomputation runs over."""
        n = self.length
        return (np.concatenate([self.ids[:, :n], ids], axis=1),  # (B, n+T)
                np.concatenate([self.positions[:, :n], positions], axis=1))  # (B, n+T)

    def truncate(self, length: int) -> None:
        """Keep slots 0 .. length-1 and forget the rest, as if they had never been written (speculative decoding's
        rollback of the proposals the model rejected): their keys, values, ids and positions go back to the zeros
        `allocate` left, so nothing a later step could read, or a test compare, remembers them."""
        if not 0 <= length <= self.length:
            raise ValueError(f"the KV cache holds {self.length} positions; it cannot be cut to {length}")
        for a in self.k + self.v:
            a[:, :, length : self.length] = 0
        self.ids[:, length : self.length], self.positions[:, length : self.length] = 0, 0
        self.length = length

    def restart(self) -> None:
        """Forget every slot (the buffers are reused: the next append writes from slot 0)."""
        self.length = 0

    def reorder(self, rows: np.ndarray) -> None:
        """Row b becomes a copy of row rows[b] (beam search: each beam continues its parent). rows: int (B,)"""
        n = self.length
        for buffers in (self.k, self.v):
            for a in buffers:
                a[:, :, :n] = a[rows, :, :n]
        self.ids[:, :n], self.positions[:, :n] = self.ids[rows, :n], self.positions[rows, :n]

    def copy_prefix(self, other: "KVCache") -> None:
        """Every row starts as a copy of `other`'s one row (beam search: every beam shares the prompt's cache)."""
        n = other.length
        for mine, theirs in zip(self.k + self.v, other.k + other.v):
            mine[:, :, :n] = theirs[:, :, :n]
        self.ids[:, :n], self.positions[:, :n] = other.ids[:, :n], other.positions[:, :n]
        self.length = n


@dataclass
class CacheStep:
    """One forward pass's slots in a KVCache: its T positions at slots start .. start+T-1 of every row, claimed by
    `KVCache.append`. transformer.attention calls `write`, then `attend`, and never asks where the keys lie: a
    paged cache answers the same two calls (paged_cache.PagedStep), and a pass without a cache too (NoCache)."""

    cache: KVCache
    start: int  # the slot of the pass's first position (prefill 0, decode the cache's length before the step)
    key_mask: object | None = None  # (B, start+T) bool: False marks padding slots no query may attend to
    inputs = ()  # what a recorded decode step reads anew at each replay besides the tokens and RoPE tables: nothing
    # (nanollm/replayed_step.py; the slot the keys go to is a number the replay sets from `start`)

    def write(self, be, layer: int, k, v) -> None:
        """Layer's keys and values of this pass's positions into their slots. (B, n_kv, T, hs) x2"""
        self.cache.update(be, layer, k, v, self.start)

    def attend(self, be, layer: int, q, **options):
        """Causal attention of this pass's queries over every slot up to theirs. (B, nh, T, hs) -> (B, nh, T, hs)
        options: the backend attention's scale, softcap and window."""
        end = self.start + q.shape[2]
        k, v = self.cache.k[layer][:, :, :end], self.cache.v[layer][:, :, :end]  # (B, n_kv, end, hs) x2
        return be.attention(q, k, v, self.start, self.key_mask, **options)


class NoCache:
    """A stateless full pass (Model.forward): nothing outlives it. A layer's keys and values are held only until its
    own queries have read them, so the T positions attend to one another alone. Same calls as CacheStep."""

    def write(self, be, layer: int, k, v) -> None:
        self.k, self.v = k, v  # (B, n_kv, T, hs) x2: this layer's, replaced by the next layer's

    def attend(self, be, layer: int, q, **options):
        return be.attention(q, self.k, self.v, 0, **options)  # (B, nh, T, hs): query t at slot t


def kv_cache_bytes(cfg, batch_size: int, max_len: int) -> int:
    """Bytes a float32 cache of this size needs: 2 (k and v) * layers * B * n_kv * max_len * hs * 4."""
    return 2 * cfg.n_layer * batch_size * cfg.n_kv_head * max_len * cfg.head_dim * np.dtype(np.float32).itemsize
