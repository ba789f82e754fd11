"""RDO — Reward Difference Optimization: per-pair weights from predicted reward differences.

Computed once, offline, over the whole dataset (a scoring pass writes them as
a column), so normalising to mean 1 keeps the effective learning rate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.ops._validate import check_choice, check_scalar, concrete_float

__all__ = ["RDO_TRANSFORMS", "rdo_weights"]

RDO_TRANSFORMS = ("sigmoid", "linear", "exp")


def rdo_weights(
    differences: jax.Array,
    transform: str = "sigmoid",
    temperature: float = 1.0,
    clip: float | None = None,
    normalize: bool = True,
) -> jax.Array:
    """Turn reward differences ``d`` (any shape, usually ``[num_pairs]``) into float32 weights.

    Transforms (before normalisation):
      ``sigmoid``: σ(d/τ); ``exp``: exp(d/τ); ``linear``: clip(d, 0, c)
      (τ is not used by ``linear``).
    ``clip`` = c > 0 is an upper bound on the transformed weight (for
    ``linear`` exactly the formula's c; None = unbounded).
    ``normalize=True`` rescales to mean 1 over all the entries passed. It is
    done in log-space for ``sigmoid`` / ``exp`` (weights = N·softmax(log w)), so
    huge or tiny d neither overflows nor divides by 0. If every ``linear``
    weight is 0 (no positive d), normalised weights are all 1.
    """
    check_choice("transform", transform, RDO_TRANSFORMS)
    check_scalar("temperature", temperature, positive=True)
    if clip is not None:
        check_scalar("clip", clip, positive=True)
    d = jnp.asarray(differences).astype(jnp.float32)
    if d.size == 0:
        return d
    if transform == "linear":
        w = jnp.maximum(d, 0.0)
        if clip is not None:
            w = jnp.minimum(w, clip)
        if not normalize:
            return w
        mean = jnp.mean(w)
        return jnp.where(mean > 0, w / jnp.where(mean > 0, mean, 1.0), jnp.ones_like(w))

    x = d / temperature
    log_w = jax.nn.log_sigmoid(x) if transform == "sigmoid" else x
    if clip is not None:
        c = concrete_float(clip)
        log_clip = np.log(c) if c is not None else jnp.log(clip)
        log_w = jnp.minimum(log_w, log_clip)
    if not normalize:
        return jnp.exp(log_w)
    flat = log_w.reshape(-1)
    return (flat.size * jax.nn.softmax(flat)).reshape(log_w.shape)
