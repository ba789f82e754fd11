"""Pointwise reward model trained with the Bradley–Terry loss (RDO source ``reward_model``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.losses._common import Metrics, batch_args, reward_metrics, weighted_mean

__all__ = ["bradley_terry_loss"]


def bradley_terry_loss(
    chosen_rewards: jax.Array,
    rejected_rewards: jax.Array,
    *,
    weights: jax.Array | None = None,
    example_mask: jax.Array | None = None,
    margin: jax.Array | float | None = None,
) -> tuple[jax.Array, Metrics]:
    """``mean(w · −log σ(r(x,y_w) − r(x,y_l) − m))``.

    Args:
      chosen_rewards, rejected_rewards: ``[batch]`` scalar rewards r(x, y).
      weights: optional ``[batch]`` per-pair weights.
      margin: optional scalar or ``[batch]`` margin m (Llama-2 style: a
        larger required gap for more clearly preferred pairs).

    Returns:
      ``(loss, metrics)`` with ``rewards/{chosen,rejected,margins,accuracies}``
      (no ``logps/*``: a reward model has no response log-probs).
    """
    rc, rr, w = batch_args("chosen_rewards", chosen_rewards, rejected_rewards=rejected_rewards, weights=weights)
    z = rc - rr
    if margin is not None:
        if np.ndim(margin) not in (0, 1) or (np.ndim(margin) == 1 and np.shape(margin) != rc.shape):
            raise ValueError(f"margin must be a scalar or have shape {rc.shape}, got shape {tuple(np.shape(margin))}")
        z = z - jnp.asarray(margin, jnp.float32)
    loss = weighted_mean(-jax.nn.log_sigmoid(z), w)
    sg = jax.lax.stop_gradient
    return loss.astype(jnp.float32), reward_metrics(sg(rc), sg(rr), mask=example_mask)
