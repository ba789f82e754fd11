"""The LoRA branch of one projection: `y = x @ w + (alpha / r) * dropout(x) @ a @ b`.

A layer's parameter dict holds a `LoraWeight` instead of a plain weight for every adapted
projection (`jaxalign.models.lora` builds them); `linear` sees the type and adds the branch. It is
a pytree whose leaves all carry the layer axis first when stacked, so the decoder slices and scans
it like any weight. Shapes: w `[D, F]`, a `[D, r]`, b `[r, F]`, key: raw key data (or None: no
dropout this forward).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp


@functools.partial(jax.tree_util.register_dataclass, data_fields=["w", "a", "b", "key"],
                   meta_fields=["scale", "dropout"])
@dataclasses.dataclass(frozen=True)
class LoraWeight:
    """A frozen base weight with its adapter pair. `scale` = alpha / r; `dropout` the rate on the
    branch's input, applied only when `key` (raw key data, `jax.random.key_data`) is given."""

    w: jax.Array
    a: jax.Array
    b: jax.Array
    key: jax.Array | None = None
    scale: float = 1.0
    dropout: float = 0.0


def lora_delta(x: jax.Array, lw: LoraWeight) -> jax.Array:
    """`scale * dropout(x)[B,T,D] @ a[D,r] @ b[r,F]` in x's dtype (the rank-r product first: never
    a `[D, F]` update)."""
    h = x
    if lw.key is not None and lw.dropout > 0:
        keep = jax.random.bernoulli(jax.random.wrap_key_data(lw.key), 1.0 - lw.dropout, x.shape)
        h = jnp.where(keep, x / jnp.asarray(1.0 - lw.dropout, x.dtype), jnp.zeros((), x.dtype))
    low = jnp.einsum("btd,dr->btr", h, lw.a.astype(x.dtype)) * jnp.asarray(lw.scale, x.dtype)
    return jnp.einsum("btr,rf->btf", low, lw.b.astype(x.dtype))
