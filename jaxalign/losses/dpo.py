"""DPO and its common variants (sigmoid / cDPO, IPO, hinge / SLiC, robust DPO).

Also the objective of dDPO (distilled DPO): same loss, pairs built from
teacher (chosen) and student (rejected) samples, dSFT student as reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._common import (
    Metrics,
    batch_args,
    check_choice,
    check_scalar,
    average_pairs,
    length_normalise,
    require_lengths,
    reward_metrics,
    weighted_mean,
)
from jaxalign.ops._validate import concrete_float

__all__ = ["DPO_LOSS_TYPES", "dpo_loss"]

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


def dpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    weights: jax.Array | None = None,
    example_mask: jax.Array | None = None,
    chosen_lengths: jax.Array | None = None,
    rejected_lengths: jax.Array | None = None,
    average_logps: bool = False,
) -> tuple[jax.Array, Metrics]:
    """DPO loss on summed response log-probs, ``z = β(Δ_θ − Δ_ref)``.

    Args:
      policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
        ref_rejected_logps: ``[batch]`` summed response log-probs
        (``sequence_logprobs(..., average=False)``). Reference log-probs
        are stop-gradiented (the reference is frozen).
      beta: β > 0.
      loss_type:
        ``sigmoid``: −(1−ε)·log σ(z) − ε·log σ(−z) (ε = ``label_smoothing``, cDPO; 0 ≤ ε < 0.5);
        ``ipo``: (Δ̄_θ − Δ̄_ref − 1/(2β))², Δ̄ from length-averaged log-probs —
          requires ``chosen_lengths`` and ``rejected_lengths``;
        ``hinge``: max(0, 1 − z);
        ``robust``: (−(1−ε)·log σ(z) + ε·log σ(−z)) / (1 − 2ε), 0 ≤ ε < 0.5 (ε = 0 is sigmoid DPO).
        ``label_smoothing`` must be 0 for ``ipo`` and ``hinge``.
      weights: optional ``[batch]`` per-pair weights (RDO); loss = mean(w·ℓ).
      chosen_lengths, rejected_lengths: ``[batch]`` response token counts,
        used by ``ipo`` and ``average_logps`` (Δ̄ = logp/len; a zero length gives Δ̄ = 0).
      average_logps: length normalisation — every log-prob (policy and reference) is
        replaced by its per-token mean logp/len before the loss, so
        ``z = β(Δ̄_θ − Δ̄_ref)`` (not the DPO paper's formula; β then acts per token).
        Not with ``ipo``, which already averages.

    Returns:
      ``(loss, metrics)``: float32 scalar and ``rewards/{chosen,rejected,margins,accuracies}``
      (``rewards/chosen = β(logp_θ(y_w) − logp_ref(y_w))``) and ``logps/{chosen,rejected}``
      (policy), all from summed log-probs, or per-token means with ``average_logps``.
    """
    check_choice("loss_type", loss_type, DPO_LOSS_TYPES)
    check_scalar("beta", beta, positive=True)
    if loss_type in ("sigmoid", "robust"):
        check_scalar("label_smoothing", label_smoothing, nonnegative=True, upper=0.5, upper_inclusive=False)
    elif concrete_float(label_smoothing) not in (None, 0.0):
        raise ValueError(
            f"label_smoothing={label_smoothing} is only used by loss_type 'sigmoid' or 'robust', not {loss_type!r}"
        )
    pc, pr, rc, rr, w, cl, rl = batch_args(
        "policy_chosen_logps",
        policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
        weights=weights,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )

    if average_logps:
        if loss_type == "ipo":
            raise ValueError("average_logps=True with loss_type 'ipo': IPO already compares length-averaged log-probs")
        cl, rl = require_lengths(cl, rl, "with average_logps=True (the log-probs are divided by them)")
        (pc, rc), (pr, rr) = average_pairs((pc, rc), (pr, rr), cl, rl)
    rc, rr = jax.lax.stop_gradient(rc), jax.lax.stop_gradient(rr)  # the reference is frozen
    eps = label_smoothing
    z = beta * ((pc - pr) - (rc - rr))
    if loss_type == "sigmoid":
        losses = -(1.0 - eps) * jax.nn.log_sigmoid(z) - eps * jax.nn.log_sigmoid(-z)
    elif loss_type == "robust":
        losses = (-(1.0 - eps) * jax.nn.log_sigmoid(z) + eps * jax.nn.log_sigmoid(-z)) / (1.0 - 2.0 * eps)
    elif loss_type == "hinge":
        losses = jax.nn.relu(1.0 - z)
    else:  # ipo
        cl, rl = require_lengths(cl, rl, "for loss_type 'ipo' (it uses length-averaged log-probs)")
        delta_policy = length_normalise(pc, cl) - length_normalise(pr, rl)
        delta_ref = length_normalise(rc, cl) - length_normalise(rr, rl)
        losses = jnp.square(delta_policy - delta_ref - 1.0 / (2.0 * beta))

    loss = weighted_mean(losses, w)
    chosen_rewards = jax.lax.stop_gradient(beta * (pc - rc))
    rejected_rewards = jax.lax.stop_gradient(beta * (pr - rr))
    metrics = reward_metrics(chosen_rewards, rejected_rewards, jax.lax.stop_gradient(pc), jax.lax.stop_gradient(pr), example_mask)
    return loss.astype(jnp.float32), metrics
