"""daDPO — Distribution-Aware DPO (sequence level).

The policy maximises E[r] − β₁·KL(π‖π_ref) − β₂·KL(π‖π_te); substituting its
optimum into Bradley–Terry gives the logit
``z = β₁(Δ_θ − Δ_ref) + β₂(Δ_θ − Δ_te)`` and ``ℓ = −log σ(z)``.
With β₂ = 0 it is exactly sigmoid DPO with β = β₁. The teacher enters only
through its sequence log-probs (frozen, or from a precomputed cache).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._common import (
    Metrics,
    average_pairs,
    batch_args,
    check_scalar,
    require_lengths,
    reward_metrics,
    weighted_mean,
)
from jaxalign.ops._validate import concrete_float

__all__ = ["dadpo_loss"]


def dadpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    teacher_chosen_logps: jax.Array,
    teacher_rejected_logps: jax.Array,
    *,
    beta_ref: float = 0.1,
    beta_teacher: float = 0.1,
    weights: jax.Array | None = None,
    example_mask: jax.Array | None = None,
    chosen_lengths: jax.Array | None = None,
    rejected_lengths: jax.Array | None = None,
    average_logps: bool = False,
) -> tuple[jax.Array, Metrics]:
    """daDPO loss ``mean(w · −log σ(β₁(Δ_θ − Δ_ref) + β₂(Δ_θ − Δ_te)))``.

    Args:
      *_logps: ``[batch]`` summed response log-probs of policy, reference and
        teacher on chosen (teacher sample) and rejected (student sample).
        Reference and teacher log-probs are stop-gradiented.
      beta_ref: β₁ ≥ 0, weight of KL(π‖π_ref).
      beta_teacher: β₂ ≥ 0, weight of KL(π‖π_te); β₁ + β₂ must be > 0.
      weights: optional ``[batch]`` per-pair weights.
      chosen_lengths, rejected_lengths: ``[batch]`` response token counts (needed by ``average_logps``).
      average_logps: length normalisation — policy, reference and teacher log-probs are all replaced
        by their per-token means logp/len before the loss (not the daDPO paper's formula); the metrics
        then report per-token values too.

    Returns:
      ``(loss, metrics)``. ``rewards/chosen`` is the implied reward
      ``β₁(logp_θ − logp_ref) + β₂(logp_θ − logp_te)`` of y_w (so
      ``rewards/margins`` is the mean z and β₂ = 0 reproduces DPO's metrics);
      extra: ``rewards/ref_margins`` = mean β₁(Δ_θ − Δ_ref),
      ``rewards/teacher_margins`` = mean β₂(Δ_θ − Δ_te),
      ``logps/teacher_chosen``, ``logps/teacher_rejected``.
    """
    check_scalar("beta_ref", beta_ref, nonnegative=True)
    check_scalar("beta_teacher", beta_teacher, nonnegative=True)
    b1, b2 = concrete_float(beta_ref), concrete_float(beta_teacher)
    if b1 is not None and b2 is not None and b1 + b2 <= 0:
        raise ValueError("beta_ref + beta_teacher must be > 0 (both are 0: the loss would be constant)")
    pc, pr, rc, rr, tc, tr, w, cl, rl = batch_args(
        "policy_chosen_logps",
        policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
        teacher_chosen_logps=teacher_chosen_logps,
        teacher_rejected_logps=teacher_rejected_logps,
        weights=weights,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    if average_logps:
        cl, rl = require_lengths(cl, rl, "with average_logps=True (the log-probs are divided by them)")
        (pc, rc, tc), (pr, rr, tr) = average_pairs((pc, rc, tc), (pr, rr, tr), cl, rl)
    # Reference and teacher are frozen.
    rc, rr, tc, tr = (jax.lax.stop_gradient(x) for x in (rc, rr, tc, tr))
    ref_term = beta_ref * ((pc - pr) - (rc - rr))
    teacher_term = beta_teacher * ((pc - pr) - (tc - tr))
    z = ref_term + teacher_term
    loss = weighted_mean(-jax.nn.log_sigmoid(z), w)

    sg = jax.lax.stop_gradient
    chosen_rewards = sg(beta_ref * (pc - rc) + beta_teacher * (pc - tc))
    rejected_rewards = sg(beta_ref * (pr - rr) + beta_teacher * (pr - tr))
    metrics = reward_metrics(chosen_rewards, rejected_rewards, sg(pc), sg(pr), example_mask)
    metrics["rewards/ref_margins"] = jnp.mean(sg(ref_term))
    metrics["rewards/teacher_margins"] = jnp.mean(sg(teacher_term))
    metrics["logps/teacher_chosen"] = jnp.mean(tc)
    metrics["logps/teacher_rejected"] = jnp.mean(tr)
    return loss.astype(jnp.float32), metrics
