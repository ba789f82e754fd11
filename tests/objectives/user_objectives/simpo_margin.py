"""An objective jaxalign does not ship, registered from outside the package (the docs' worked example).

SimPO (Meng et al. 2024): reference-free, with length-normalised log-probs and a target margin γ,
    ℓ = −log σ(β·(logπ(y_w)/|y_w| − logπ(y_l)/|y_l|) − γ).
Import it with ``objective.module=simpo_margin`` (this folder on ``sys.path``) and train with
``loss.name=simpo``; its settings are ``loss.simpo_beta`` and ``loss.simpo_gamma``.
docs/objectives.md shows this file; keep the two the same.
"""

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from jaxalign.objectives import (example_weights, preference_forward, register_objective, setting, settings_of,
                                 slots, split_pairs, totals_or_batch, with_router_aux)


@dataclass
class SimPOSettings:
    simpo_beta: float = setting(2.0, gt=0)
    """SimPO β: scale of the length-normalised log-prob margin."""

    simpo_gamma: float = setting(0.5, ge=0)
    """SimPO γ: target reward margin."""


@register_objective("simpo", task="preference", settings=SimPOSettings,
                    metrics=("rewards/margins", "rewards/accuracies"))
def simpo_objective(models, batch, ctx, totals=None):
    """SimPO: reference-free preference loss on length-normalised log-probs with a target margin."""
    totals = totals_or_batch(models, batch, ctx, totals)
    both, _, policy = preference_forward(models, batch, ctx)      # chosen ++ rejected, one policy pass
    pc, pr = split_pairs(policy.logps)                             # [B*K] summed response log-probs
    lc, lr = split_pairs(policy.lengths)                           # [B*K] response token counts
    s = settings_of(ctx.loss, "simpo")                             # a SimPOSettings
    margin = s.simpo_beta * (pc / jnp.maximum(lc, 1) - pr / jnp.maximum(lr, 1))
    loss = jnp.mean(example_weights(batch, ctx, totals) * -jax.nn.log_sigmoid(margin - s.simpo_gamma))
    real = slots(batch).astype(jnp.float32)
    n = jnp.maximum(jnp.sum(real), 1.0)
    metrics = {"rewards/margins": jnp.sum(real * margin) / n, "rewards/accuracies": jnp.sum(real * (margin > 0)) / n}
    return with_router_aux((loss, metrics), policy, ctx)
