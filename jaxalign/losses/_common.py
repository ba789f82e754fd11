"""Helpers shared by the loss families: input checks, weighted means, standard metrics."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.ops._validate import check_choice, check_same_shape, check_scalar  # noqa: F401 (re-exported)

Metrics = dict[str, jax.Array]


def as_batch(name: str, value: Any) -> jax.Array:
    """``value`` as a float32 ``[batch]`` array, or ``ValueError`` naming ``name``."""
    shape = tuple(np.shape(value))
    if len(shape) != 1:
        raise ValueError(f"{name} must have shape [batch], got shape {shape}")
    return jnp.asarray(value).astype(jnp.float32)


def batch_args(reference_name: str, reference: Any, **others: Any) -> list[jax.Array | None]:
    """Check that every array has the shape of ``reference`` ([batch]); return them all as float32.

    ``None`` entries are passed through.
    """
    ref = as_batch(reference_name, reference)
    check_same_shape(reference_name, reference, **others)
    return [ref] + [None if v is None else jnp.asarray(v).astype(jnp.float32) for v in others.values()]


def weighted_mean(per_example: jax.Array, weights: jax.Array | None) -> jax.Array:
    """``mean_i(w_i * l_i)`` (plain mean when ``weights`` is None)."""
    if weights is None:
        return jnp.mean(per_example)
    return jnp.mean(weights * per_example)


def safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` where ``den > 0``, else 0 — NaN-free in value and gradient."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def length_normalise(logps: jax.Array, lengths: jax.Array) -> jax.Array:
    """``logps / lengths`` per sequence; 0 for zero-length responses."""
    return safe_div(logps, lengths)


def require_lengths(chosen_lengths, rejected_lengths, why: str):
    """``(chosen_lengths, rejected_lengths)``; ValueError naming the missing one and ``why`` it is needed."""
    if chosen_lengths is None or rejected_lengths is None:
        missing = "chosen_lengths" if chosen_lengths is None else "rejected_lengths"
        raise ValueError(f"{missing} is required {why}")
    return chosen_lengths, rejected_lengths


def average_pairs(chosen: tuple, rejected: tuple, chosen_lengths, rejected_lengths) -> tuple[tuple, tuple]:
    """Length normalisation of every model's pair of summed log-probs: each chosen ``[batch]`` array
    divided by ``chosen_lengths``, each rejected one by ``rejected_lengths`` (0 for empty responses)."""
    return (tuple(length_normalise(x, chosen_lengths) for x in chosen),
            tuple(length_normalise(x, rejected_lengths) for x in rejected))


def masked_mean(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean over entries where ``mask`` is set (plain mean when ``mask`` is None; 0 if empty)."""
    if mask is None:
        return jnp.mean(x)
    m = jnp.asarray(mask).astype(jnp.float32)
    return safe_div(jnp.sum(jnp.where(m > 0, x, 0.0) * m), jnp.sum(m))


def reward_metrics(
    chosen_rewards: jax.Array,
    rejected_rewards: jax.Array,
    chosen_logps: jax.Array | None = None,
    rejected_logps: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> Metrics:
    """The ecosystem-standard metrics, as float32 batch means over real examples (``mask``:
    ``[batch]``, 0 for the empty slots of packed rows)."""
    metrics = {
        "rewards/chosen": masked_mean(chosen_rewards, mask),
        "rewards/rejected": masked_mean(rejected_rewards, mask),
        "rewards/margins": masked_mean(chosen_rewards - rejected_rewards, mask),
        "rewards/accuracies": masked_mean((chosen_rewards > rejected_rewards).astype(jnp.float32), mask),
    }
    if chosen_logps is not None:
        metrics["logps/chosen"] = masked_mean(chosen_logps, mask)
    if rejected_logps is not None:
        metrics["logps/rejected"] = masked_mean(rejected_logps, mask)
    return {k: v.astype(jnp.float32) for k, v in metrics.items()}
