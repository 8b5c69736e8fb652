"""The key/value cache: what decode reads instead of recomputing the prompt.

Prefill writes the keys and values of every prompt position; each decode step appends one position and attends over
everything written so far. Buffers are allocated once for the whole generation, so a step never copies the past.
"""
from dataclasses import dataclass

import numpy as np

from .memory import check_fits


@dataclass
class KVCache:
    k: list  # per layer: (B, n_kv, max_len, hs) float32, slots 0 .. length-1 filled
    v: list  # per layer: (B, n_kv, max_len, hs)
    length: int = 0  # slots filled so far (the same for every layer once a forward pass completes)

    @classmethod
    def allocate(cls, backend, cfg, batch_size: int, max_len: int) -> "KVCache":
        """Zeroed buffers for batch_size sequences of max_len positions, once the machine is known to hold them
        (batch size and length come from flags and the config: they can ask for terabytes)."""
        check_fits(kv_cache_bytes(cfg, batch_size, max_len),
                   f"a KV cache of {batch_size} sequence(s) x {max_len:,} positions ({cfg.n_layer} layers)")
        shape = (batch_size, cfg.n_kv_head, max_len, cfg.head_dim)
        return cls(
            k=[backend.zeros(shape) for _ in range(cfg.n_layer)],
            v=[backend.zeros(shape) for _ in range(cfg.n_layer)],
        )

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.k + self.v)

    def update(self, layer: int, k, v, start: int):
        """Write k, v (B, n_kv, T, hs) at slots start .. start+T-1; return the views of slots 0 .. start+T-1."""
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; writing up to {end} does not fit")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, n_kv, end, hs) x2


def kv_cache_bytes(cfg, batch_size: int, max_len: int) -> int:
    """Bytes a float32 cache of this size needs: 2 (k and v) * layers * B * n_kv * max_len * hs * 4."""
    return 2 * cfg.n_layer * batch_size * cfg.n_kv_head * max_len * cfg.head_dim * np.dtype(np.float32).itemsize
