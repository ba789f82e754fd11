"""Pairwise difference model D(x, a, b) for RDO (source ``difference_model``).

D reads the prompt and both responses in one sequence and outputs a scalar.
It is trained on both orders of every pair; at inference the reward
difference is the antisymmetrised ``d = (D(x,y_w,y_l) − D(x,y_l,y_w)) / 2``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._common import Metrics, batch_args, check_choice, safe_div, weighted_mean

__all__ = ["DIFFERENCE_LABEL_TYPES", "antisymmetric_difference", "difference_model_loss"]

DIFFERENCE_LABEL_TYPES = ("binary", "soft", "graded")


def antisymmetric_difference(d_forward: jax.Array, d_backward: jax.Array) -> jax.Array:
    """``(D(x,y_w,y_l) − D(x,y_l,y_w)) / 2`` — the order-independent reward difference, ``[batch]``."""
    return (jnp.asarray(d_forward, jnp.float32) - jnp.asarray(d_backward, jnp.float32)) / 2.0


def difference_model_loss(
    d_forward: jax.Array,
    d_backward: jax.Array,
    *,
    labels: jax.Array | None = None,
    label_type: str = "binary",
    weights: jax.Array | None = None,
) -> tuple[jax.Array, Metrics]:
    """Difference-model loss on both orders of each pair.

    Args:
      d_forward: ``[batch]`` D(x, y_w, y_l); d_backward: ``[batch]`` D(x, y_l, y_w).
      label_type:
        ``"binary"`` (``labels`` must be None; y_w is preferred):
          ``−log σ(d_fwd) − log σ(−d_bwd)``;
        ``"soft"`` (``labels`` = P(y_w ≻ y_l) in [0, 1]): soft-target
          cross-entropy on both orders, targets p and 1 − p —
          ``BCE(d_fwd, p) + BCE(d_bwd, 1 − p)``; p = 1 is ``binary``;
        ``"graded"`` (``labels`` = target gap g, e.g. score_w − score_l):
          regression on both orders, ``(d_fwd − g)² + (d_bwd + g)²``.
      weights: optional ``[batch]`` per-pair weights.

    Returns:
      ``(loss, metrics)``: ``rewards/margins`` = mean antisymmetric d,
      ``rewards/accuracies`` = fraction of pairs (with a non-tied target)
      where sign(d) matches the target's sign; ``difference/forward``,
      ``difference/backward`` (means) and ``difference/antisymmetry_gap`` =
      mean |d_fwd + d_bwd| (0 for a perfectly antisymmetric model).
    """
    check_choice("label_type", label_type, DIFFERENCE_LABEL_TYPES)
    if label_type == "binary" and labels is not None:
        raise ValueError("labels must be None for label_type 'binary' (the first response is the preferred one)")
    if label_type != "binary" and labels is None:
        raise ValueError(f"labels are required for label_type {label_type!r}")
    fwd, bwd, y, w = batch_args("d_forward", d_forward, d_backward=d_backward, labels=labels, weights=weights)

    if label_type == "binary":
        losses = -jax.nn.log_sigmoid(fwd) - jax.nn.log_sigmoid(-bwd)
        target_sign = jnp.ones_like(fwd)
    elif label_type == "soft":

        def bce(logit, p):
            return -(p * jax.nn.log_sigmoid(logit) + (1.0 - p) * jax.nn.log_sigmoid(-logit))

        losses = bce(fwd, y) + bce(bwd, 1.0 - y)
        target_sign = jnp.sign(y - 0.5)
    else:
        losses = jnp.square(fwd - y) + jnp.square(bwd + y)
        target_sign = jnp.sign(y)
    loss = weighted_mean(losses, w)

    sg = jax.lax.stop_gradient
    d = sg(antisymmetric_difference(fwd, bwd))
    decided = (target_sign != 0).astype(jnp.float32)
    correct = ((jnp.sign(d) == target_sign).astype(jnp.float32)) * decided
    metrics = {
        "rewards/margins": jnp.mean(d),
        "rewards/accuracies": safe_div(jnp.sum(correct), jnp.sum(decided)),
        "difference/forward": jnp.mean(sg(fwd)),
        "difference/backward": jnp.mean(sg(bwd)),
        "difference/antisymmetry_gap": jnp.mean(jnp.abs(sg(fwd + bwd))),
    }
    return loss.astype(jnp.float32), {k: v.astype(jnp.float32) for k, v in metrics.items()}
