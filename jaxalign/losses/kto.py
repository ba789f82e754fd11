"""KTO — Kahneman–Tversky Optimisation on unpaired desirable / undesirable examples."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.losses._common import Metrics, batch_args, check_scalar, safe_div, weighted_mean

__all__ = ["kto_loss"]


def kto_loss(
    policy_logps: jax.Array,
    ref_logps: jax.Array,
    is_desirable: jax.Array,
    policy_kl_logps: jax.Array | None = None,
    ref_kl_logps: jax.Array | None = None,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    weights: jax.Array | None = None,
    kl_estimate: jax.Array | float | None = None,
) -> tuple[jax.Array, Metrics]:
    """KTO loss over a batch mixing desirable and undesirable examples.

    With ``r = logp_θ(y|x) − logp_ref(y|x)`` and
    ``z₀ = stop_gradient(max(0, mean(policy_kl_logps − ref_kl_logps)))``:
    desirable ``λ_D(1 − σ(β(r − z₀)))``, undesirable ``λ_U(1 − σ(β(z₀ − r)))``;
    loss = mean over the batch of ``w_i · ℓ_i``.

    Args:
      policy_logps, ref_logps: ``[batch]`` summed response log-probs
        (``ref_logps`` is stop-gradiented).
      is_desirable: ``[batch]`` bool (True = desirable ``y_w``).
      policy_kl_logps, ref_kl_logps: ``[batch_kl]`` summed log-probs of
        mismatched prompt/response pairs (e.g. responses rotated by one
        within the batch), used for the batch KL estimate z₀. Pass both or
        neither; neither means z₀ = 0.
      beta: β > 0. desirable_weight, undesirable_weight: λ_D, λ_U ≥ 0.
      weights: optional ``[batch]`` per-example weights (RDO-KTO: each
        example takes its pair's weight).
      kl_estimate: z₀ itself (instead of ``policy_kl_logps`` / ``ref_kl_logps``):
        gradient accumulation estimates it once over the whole batch, so every
        micro-batch uses the full batch's z₀. Clamped at 0 and stop-gradiented.

    Returns:
      ``(loss, metrics)``: ``rewards/chosen`` / ``rewards/rejected`` are means
      of β·r over desirable / undesirable examples (0 if none);
      ``rewards/margins`` their difference; ``rewards/accuracies`` the fraction
      of examples whose β·r has the right sign (> 0 desirable, < 0
      undesirable); ``logps/chosen`` / ``logps/rejected`` policy log-prob
      means per group; ``kl`` = z₀; ``count/desirable``, ``count/undesirable``.
    """
    check_scalar("beta", beta, positive=True)
    check_scalar("desirable_weight", desirable_weight, nonnegative=True)
    check_scalar("undesirable_weight", undesirable_weight, nonnegative=True)
    pl, rl, w = batch_args("policy_logps", policy_logps, ref_logps=ref_logps, weights=weights)
    if tuple(np.shape(is_desirable)) != tuple(pl.shape):
        raise ValueError(f"is_desirable has shape {tuple(np.shape(is_desirable))} but policy_logps has {pl.shape}")
    desirable = jnp.asarray(is_desirable).astype(bool)
    if (policy_kl_logps is None) != (ref_kl_logps is None):
        missing = "policy_kl_logps" if policy_kl_logps is None else "ref_kl_logps"
        raise ValueError(f"{missing} is missing: pass both policy_kl_logps and ref_kl_logps, or neither (z0 = 0)")
    if kl_estimate is not None:
        if policy_kl_logps is not None:
            raise ValueError("pass kl_estimate or policy_kl_logps/ref_kl_logps, not both")
        z0 = jax.lax.stop_gradient(jnp.maximum(jnp.asarray(kl_estimate, jnp.float32), 0.0))
    elif policy_kl_logps is None:
        z0 = jnp.zeros((), jnp.float32)
    else:
        pkl, rkl = batch_args("policy_kl_logps", policy_kl_logps, ref_kl_logps=ref_kl_logps)
        z0 = jax.lax.stop_gradient(jnp.maximum(jnp.mean(pkl - rkl), 0.0))

    r = pl - jax.lax.stop_gradient(rl)  # the reference is frozen
    desirable_losses = desirable_weight * (1.0 - jax.nn.sigmoid(beta * (r - z0)))
    undesirable_losses = undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z0 - r)))
    losses = jnp.where(desirable, desirable_losses, undesirable_losses)
    loss = weighted_mean(losses, w)

    sg = jax.lax.stop_gradient
    rewards = sg(beta * r)
    d = desirable.astype(jnp.float32)
    u = 1.0 - d
    n_d, n_u = jnp.sum(d), jnp.sum(u)
    chosen = safe_div(jnp.sum(rewards * d), n_d)
    rejected = safe_div(jnp.sum(rewards * u), n_u)
    correct = jnp.where(desirable, rewards > 0, rewards < 0).astype(jnp.float32)
    metrics = {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": jnp.mean(correct),
        "logps/chosen": safe_div(jnp.sum(sg(pl) * d), n_d),
        "logps/rejected": safe_div(jnp.sum(sg(pl) * u), n_u),
        "kl": z0,
        "count/desirable": n_d,
        "count/undesirable": n_u,
    }
    return loss.astype(jnp.float32), {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
