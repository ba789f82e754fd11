"""RRHF — Rank Responses to align with Human Feedback (pairwise form)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._common import (
    Metrics,
    batch_args,
    check_scalar,
    length_normalise,
    masked_mean,
    reward_metrics,
    safe_div,
    weighted_mean,
)

__all__ = ["rrhf_loss"]


def rrhf_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    *,
    nll_weight: float = 1.0,
    weights: jax.Array | None = None,
    example_mask: jax.Array | None = None,
    num_examples: jax.Array | float | None = None,
) -> tuple[jax.Array, Metrics]:
    """RRHF loss: length-normalised ranking hinge plus NLL of the chosen (best) response.

    With ``p(y) = logp_θ(y|x) / |y|`` (0 for an empty response):
    ``loss = mean_i(w_i · max(0, p(y_l) − p(y_w))) + nll_weight · mean_i(−p(y_w))``.
    The NLL term is length-normalised (per-token mean within each chosen
    response, then a batch mean) and is not weighted: ``weights`` (RDO-RRHF)
    apply to the ranking term only.

    Args:
      policy_chosen_logps, policy_rejected_logps: ``[batch]`` summed log-probs.
      chosen_lengths, rejected_lengths: ``[batch]`` response token counts.
      nll_weight: ≥ 0. weights: optional ``[batch]``.
      example_mask: optional ``[batch]``, 0 for the empty slots of packed rows.
      num_examples: the NLL mean's denominator (default: the real examples of
        this batch). Gradient accumulation passes the whole batch's count
        divided by the number of micro-batches (see ``sft_loss``).

    Returns:
      ``(loss, metrics)``: ``rewards/*`` use the length-normalised log-probs
      p(y) as the reward; ``logps/*`` are summed policy log-probs;
      ``loss/ranking`` and ``loss/nll`` are the two (unscaled) terms.
    """
    check_scalar("nll_weight", nll_weight, nonnegative=True)
    pc, pr, cl, rl, w = batch_args(
        "policy_chosen_logps",
        policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        weights=weights,
    )
    p_w = length_normalise(pc, cl)
    p_l = length_normalise(pr, rl)
    ranking = weighted_mean(jax.nn.relu(p_l - p_w), w)
    if num_examples is None:
        nll = -masked_mean(p_w, example_mask)
    else:
        real = jnp.ones_like(p_w) if example_mask is None else jnp.asarray(example_mask).astype(jnp.float32)
        nll = -safe_div(jnp.sum(jnp.where(real > 0, p_w, 0.0) * real), jnp.asarray(num_examples, jnp.float32))
    loss = ranking + nll_weight * nll
    sg = jax.lax.stop_gradient
    metrics = reward_metrics(sg(p_w), sg(p_l), sg(pc), sg(pr), example_mask)
    metrics["loss/ranking"] = sg(ranking)
    metrics["loss/nll"] = sg(nll)
    return loss.astype(jnp.float32), metrics
