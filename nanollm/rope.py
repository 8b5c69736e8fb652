"""Rotary position embedding frequencies, including Llama 3's long-context scaling.

RoPE rotates each (i, i + hs/2) pair of a query or key by the angle pos * inv_freq[i]; the rotation itself is the
backend's `rope` op. This module computes the angles on the host: they depend only on the config and the positions.
Sources: Su et al. 2021 (RoFormer); Llama 3.1's `apply_scaling` in Meta's reference code.
"""
import math

import numpy as np

from .config import ModelConfig


def rope_frequencies(cfg: ModelConfig) -> np.ndarray:
    """inv_freq[i] = theta^(-2i/hs), with Llama 3 scaling applied when the config has it. -> (hs/2,) float32.

    Llama 3 scaling, by wavelength 2*pi/inv_freq relative to the original context L:
      longer than L/low_freq_factor   -> divided by factor (stretched to the new context)
      shorter than L/high_freq_factor -> kept (local detail is unchanged)
      in between                      -> a linear blend of the two, by how many wavelengths fit in L.
    """
    hs = cfg.head_dim
    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, hs, 2, dtype=np.float64) / hs)  # (hs/2,)
    s = cfg.rope_scaling
    if s is not None:
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


def rope_cos_sin(inv_freq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hs/2,), int (B, T) -> cos, sin (B, T, hs/2) float32.

    The angle is formed in float32 as Hugging Face does, so both engines round the same way at long positions.
    """
    angles = positions.astype(np.float32)[..., None] * inv_freq  # (B, T, hs/2)
    return np.cos(angles), np.sin(angles)
