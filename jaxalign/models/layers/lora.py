"""The LoRA branch of one projection: `y = x @ w + (alpha / r) * dropout(x) @ a @ b`.

A layer's parameter dict holds a `LoraWeight` instead of a plain weight for every adapted
projection (`jaxalign.models.lora` builds them); `linear` (and the mixture's `expert_linear`) sees
the type and adds the branch. It is a pytree whose leaves all carry the layer axis first when
stacked, so the decoder slices and scans it like any weight. Shapes per layer: a projection
w `[D, F]`, a `[D, r]`, b `[r, F]`; a mixture's expert stack w `[E, D, F]`, a `[E, D, r]`,
b `[E, r, F]` (one adapter pair per expert); key: raw key data (or None: no dropout this forward).
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


# (x, a, b) einsum specs of the branch, by (a.ndim, x.ndim): a projection, or an expert stack whose
# experts all read the same input `[B,T,D]` (gate / up) or each its own `[B,T,E,F]` (down).
_BRANCH = {
    (2, 3): ("btd,dr->btr", "btr,rf->btf"),
    (3, 3): ("btd,edr->bter", "bter,erf->btef"),
    (3, 4): ("bted,edr->bter", "bter,erf->btef"),
}


def lora_delta(x: jax.Array, lw: LoraWeight) -> jax.Array:
    """`scale * dropout(x) @ a @ b` in x's dtype, the rank-r product first (never a `[D, F]` or
    `[E, D, F]` update). A projection: x `[B,T,D]`, a `[D,r]`, b `[r,F]` -> `[B,T,F]`. An expert
    stack: a `[E,D,r]`, b `[E,r,F]`, x `[B,T,D]` (read by every expert) or `[B,T,E,D]` (one input
    per expert) -> `[B,T,E,F]`. Dropout draws one mask of x's shape (so experts sharing an input
    share its mask)."""
    specs = _BRANCH.get((lw.a.ndim, x.ndim))
    if specs is None:
        raise ValueError(f"LoRA branch: no rule for input {x.shape} with adapter a {lw.a.shape}")
    h = x
    if lw.key is not None and lw.dropout > 0:
        keep = jax.random.bernoulli(jax.random.wrap_key_data(lw.key), 1.0 - lw.dropout, x.shape)
        h = jnp.where(keep, x / jnp.asarray(1.0 - lw.dropout, x.dtype), jnp.zeros((), x.dtype))
    low = jnp.einsum(specs[0], h, lw.a.astype(x.dtype)) * jnp.asarray(lw.scale, x.dtype)
    return jnp.einsum(specs[1], low, lw.b.astype(x.dtype))
