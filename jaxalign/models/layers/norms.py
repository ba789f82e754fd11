"""RMS norms: HF Llama's (normalise in float32, cast back, scale by w) and Gemma's (scale by 1 + w in float32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _normalise(x: jax.Array, eps: float) -> jax.Array:
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # float32 at least: a float64 model stays float64
    return xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """Llama / Qwen / Mistral / Phi-3: ``w * cast(x / rms(x))`` (the cast happens before the scale)."""
    return weight.astype(x.dtype) * _normalise(x, eps).astype(x.dtype)


def rms_norm_plus_one(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """Gemma 2 / 3: ``cast(x / rms(x) * (1 + w))`` with the scale in float32; w = 0 is the identity scale."""
    return (_normalise(x, eps) * (1.0 + weight.astype(jnp.float32))).astype(x.dtype)


NORMS = {"rms": rms_norm, "rms_plus_one": rms_norm_plus_one}
