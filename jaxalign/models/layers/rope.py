"""Rotary position embeddings (HF "rotate half" layout): default, linear and Llama-3 frequency scaling.

A family asks for one frequency table per kind of layer (Gemma 3's local and global layers use
different bases), the decoder turns each into cos/sin once per forward pass.
"""

from __future__ import annotations

import math
from typing import Any

import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "llama3")


def inverse_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None = None) -> np.ndarray:
    """Per-pair rotation frequencies `[head_dim // 2]` float32 for base `theta`, scaled as `scaling` says."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    inv_freq = inv_freq.astype(np.float32)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"rope_type {kind!r} is not one of {', '.join(ROPE_TYPES)}")


def rope_cos_sin(positions: jnp.ndarray, inv_freq: np.ndarray, dtype=jnp.float32) -> tuple[jnp.ndarray, jnp.ndarray]:
    """cos, sin `[B, T, head_dim]` in `dtype` (float32; float64 for a float64 model) for integer
    positions `[B, T]`."""
    angles = positions.astype(dtype)[..., None] * jnp.asarray(inv_freq, dtype)[None, None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
    """Rotate `x` `[B, T, heads, head_dim]` by cos/sin `[B, T, rot]`; math in float32 (float64 for a
    float64 `x`). With rot < head_dim (partial rotary, Phi-3's `partial_rotary_factor`) only the first
    `rot` dims turn."""
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return jnp.concatenate([apply_rope(x[..., :rot], cos, sin), x[..., rot:]], axis=-1)
    half = x.shape[-1] // 2
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return out.astype(x.dtype)
