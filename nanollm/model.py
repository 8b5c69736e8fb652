"""Model: a loaded model, ready to run: its config, its weights on a backend, its tokenizer and generation defaults.

What this adds over transformer.py (the forward pass): checking what comes in (token ids, the memory the logits
need), stepping a KV cache (prefill, then one decode step at a time), and `generate`, the front door to
generation.py. nanollm.load (loader.py) is the one place that builds a Model from files.
"""
from dataclasses import replace

import numpy as np

from .config import ModelConfig
from .generation import generate
from .kv_cache import CacheStep, KVCache
from .memory import check_fits
from .replayed_step import ReplayedStep
from .rope import long_factors_begin
from .transformer import forward
from .weights import LayerWeights, ModelWeights

__all__ = ["Model", "LayerWeights", "ModelWeights"]


class Model:
    """A loaded model: config, weights on a backend, and the tokenizer when the checkpoint has one."""

    def __init__(self, cfg: ModelConfig, weights: ModelWeights, backend, tokenizer=None, generation_defaults=None):
        limit = backend.max_head_dim  # the CUDA kernels hold a head in registers: 256 at most (numpy: None)
        if limit is not None and cfg.head_dim > limit:
            raise ValueError(f"head_dim={cfg.head_dim} is more than the {backend.name} backend's attention kernel "
                             f"holds ({limit}); the numpy backend runs any head size")
        self.config = cfg
        self.backend = backend
        if weights.lm_head is None:  # tied: the output projection is tok_emb.T, laid out as the backend likes
            self.weights = replace(weights, tok_emb=None).map(backend.weight)
            self.weights.tok_emb = backend.tied_table(weights.tok_emb)
        else:
            self.weights = weights.map(backend.weight)
        self.tokenizer = tokenizer
        self.generation_defaults = generation_defaults or {}

    def check_ids(self, ids) -> np.ndarray:
        """Validate user token ids: int (B, T) inside the vocabulary and the context. Returns them as int64."""
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
        if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"token ids must be a non-empty int array of shape (B, T), got {ids.dtype} {ids.shape}")
        bad = (ids < 0) | (ids >= self.config.vocab_size)
        if bad.any():
            raise ValueError(f"token id {int(ids[bad][0])} is outside the vocabulary (size {self.config.vocab_size})")
        if ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"{ids.shape[1]} tokens exceed the model's context of {self.config.max_seq_len}")
        return ids.astype(np.int64)

    def check_logits_fit(self, B: int, T: int) -> None:
        """Logits (B, T, V) float32 always come back to the host: a long batch times a large vocabulary is the
        largest array a pass returns (2 x 4096 tokens x 128k vocabulary = 4 GiB), so it is checked before the pass."""
        check_fits(B * T * self.config.vocab_size * 4, f"logits of shape ({B}, {T}, {self.config.vocab_size})")

    def forward(self, ids) -> np.ndarray:
        """A stateless full pass: int (B, T) -> float32 NumPy logits (B, T, V)."""
        ids = self.check_ids(ids)
        B, T = ids.shape
        self.check_logits_fit(B, T)
        positions = np.broadcast_to(np.arange(T), (B, T))  # (B, T)
        logits = forward(self.backend, self.config, self.weights, ids, positions)
        return self.backend.to_numpy(logits)

    def step(self, ids, cache: KVCache, positions=None, key_mask=None, last_only=True) -> np.ndarray:
        """Run ids (B, T) at the cache's next slots, which it then holds. -> float32 NumPy logits (B, T|1, V).

        positions (B, T): default the slots themselves. key_mask, when given, covers every slot up to the new ones:
        (B, cache.length + T).
        """
        B, T = ids.shape
        if positions is None:
            positions = np.broadcast_to(np.arange(cache.length, cache.length + T), (B, T))  # (B, T)
        if self.long_rope_begins(cache, positions):
            # LongRoPE (Phi-3.5, Phi-4-mini): the sequence just passed the original context, so every key cached
            # with the short factors is recomputed with the long ones, as transformers' Phi-3 does: once.
            ids, positions = cache.history(ids, positions)  # (B, length+T) x2
            cache.restart()
        if cache.length == 0:  # the prefill; a decode step returns no more than it did, and stays off /proc
            self.check_logits_fit(B, 1 if last_only else ids.shape[1])
        start = cache.append(ids, positions)
        step = CacheStep(cache, start, key_mask)
        if self.backend.records_steps and ids.shape[1] == 1 and last_only and key_mask is None:
            # a decode step: the cpu backend replays its kernel calls from C, recorded once per cache
            if cache.replayed is None or not cache.replayed.fits(self.weights, ids):
                cache.replayed = ReplayedStep(self.weights, B)
            return cache.replayed.step(self, ids, positions, step)  # (B, 1, V)
        logits = forward(self.backend, self.config, self.weights, ids, positions, step, last_only)
        return self.backend.to_numpy(logits)[:, -T:]  # (B, T|1, V): this call's positions only

    def long_rope_begins(self, cache: KVCache, positions) -> bool:
        """Whether this step is the first past LongRoPE's original context for a cache filled before it."""
        if cache.length == 0:
            return False
        cached_len, seq_len = int(cache.positions[:, : cache.length].max()) + 1, int(positions.max()) + 1
        return any(long_factors_begin(rope, cached_len, seq_len) for rope in (self.config.rope, self.config.rope_local))

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        return KVCache.allocate(self.backend, self.config, batch_size, max_len)

    def generate(self, prompt, **kwargs):
        """Generate a continuation of prompt (a string or a list of token ids); see nanollm.generation.generate."""
        return generate(self, prompt, **kwargs)
