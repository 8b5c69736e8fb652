"""Rotary position embedding: the angles each position rotates q and k by, with every family's frequency scaling.

RoPE rotates each pair (i, i + r/2) of the first r = rotary_dim dimensions of a query or key by the angle
pos * inv_freq[i]; the rotation itself is the backend's `rope` op. This module computes the angles on the host: they
depend only on the config and the positions. The scalings stretch the long wavelengths so that a model reaches past
the context it was trained on:

    Llama 3.1   Llama3Scaling    long wavelengths / factor, short ones kept, a smooth blend between
    Gemma 3     LinearScaling    every frequency / factor (position interpolation)
    Phi-3.5     LongRopeScaling  a factor per frequency, short or long set by the sequence length, cos/sin scaled

Sources: Su et al. 2021 (RoFormer); Llama 3.1's `apply_scaling` in Meta's reference code; Ding et al. 2024 (LongRoPE)
and transformers' `modeling_rope_utils.py` for which factor set applies when.
"""
import math

import numpy as np

from .config import Llama3Scaling, LinearScaling, LongRopeScaling, Rope


def frequencies(rope: Rope, seq_len: int) -> np.ndarray:
    """inv_freq[i] = theta^(-2i/r) / scaling, for a forward pass over positions < seq_len. -> (r/2,) float32.

    Only LongRoPE looks at seq_len: its long factors apply once the sequence passes the original context, for the
    whole pass, as in transformers (a cache filled before the switch keeps its keys: the same there).
    Llama 3 scaling, by wavelength 2*pi/inv_freq relative to the original context L:
      longer than L/low_freq_factor   -> divided by factor (stretched to the new context)
      shorter than L/high_freq_factor -> kept (local detail is unchanged)
      in between                      -> a linear blend of the two, by how many wavelengths fit in L.
    """
    r = rope.rotary_dim
    inv_freq = 1.0 / rope.theta ** (np.arange(0, r, 2, dtype=np.float64) / r)  # (r/2,)
    s = rope.scaling
    if isinstance(s, LinearScaling):
        inv_freq = inv_freq / s.factor
    elif isinstance(s, LongRopeScaling):
        factors = s.long_factor if seq_len > s.original_max_position_embeddings else s.short_factor
        inv_freq = inv_freq / np.asarray(factors, dtype=np.float64)
    elif isinstance(s, Llama3Scaling):
        wavelen = 2 * math.pi / inv_freq
        low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
        high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
        blend = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
            s.high_freq_factor - s.low_freq_factor
        )
        blended = (1 - blend) * inv_freq / s.factor + blend * inv_freq
        inv_freq = np.where(
            wavelen > low_wavelen, inv_freq / s.factor, np.where(wavelen < high_wavelen, inv_freq, blended)
        )
    return inv_freq.astype(np.float32)


def rope_cos_sin(rope: Rope, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int (B, T) positions -> cos, sin (B, T, r/2) float32 for the backend's rope op.

    The angle is formed in float32 as Hugging Face does, so both engines round the same way at long positions.
    LongRoPE's attention factor multiplies cos and sin (and so every q.k score by its square).
    """
    inv_freq = frequencies(rope, seq_len=int(positions.max()) + 1)  # (r/2,)
    angles = positions.astype(np.float32)[..., None] * inv_freq  # (B, T, r/2)
    cos, sin = np.cos(angles), np.sin(angles)
    if isinstance(rope.scaling, LongRopeScaling):
        factor = np.float32(rope.scaling.attention_factor)
        cos, sin = cos * factor, sin * factor
    return cos, sin


def long_factors_begin(rope: Rope | None, cached_len: int, seq_len: int) -> bool:
    """Whether a pass over positions < seq_len uses LongRoPE's long factors while the cache, filled over positions
    < cached_len, was computed with the short ones: the moment a sequence first passes the original context."""
    s = rope.scaling if rope is not None else None
    return isinstance(s, LongRopeScaling) and cached_len <= s.original_max_position_embeddings < seq_len
