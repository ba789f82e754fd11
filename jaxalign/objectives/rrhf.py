"""RRHF (Yuan et al. 2023): ranking loss on length-normalised log-probs plus the NLL of the best response."""

from __future__ import annotations

from dataclasses import dataclass

from jaxalign.config.fields import setting
from jaxalign.losses.rrhf import rrhf_loss
from jaxalign.objectives.common import example_weights, preference_forward, slots, totals_or_batch, with_router_aux
from jaxalign.objectives.registry import register_objective, settings_of
from jaxalign.train.forward import split_pairs


@dataclass
class RRHFSettings:
    rrhf_nll_weight: float = setting(1.0, ge=0)
    """RRHF: weight of the NLL of the best response next to the ranking term."""


@register_objective("rrhf", task="preference", settings=RRHFSettings, rdo=True,
                    metrics=("loss/ranking", "loss/nll", "logps/chosen", "logps/rejected"))
def rrhf_objective(models, batch: dict, ctx, totals=None):
    """Rank responses by length-normalised log-prob, no reference."""
    totals = totals_or_batch(models, batch, ctx, totals)
    both, k, policy = preference_forward(models, batch, ctx)
    pc, pr = split_pairs(policy.logps)
    lc, lr = split_pairs(policy.lengths)
    return with_router_aux(rrhf_loss(pc, pr, lc, lr, nll_weight=settings_of(ctx.loss, "rrhf").rrhf_nll_weight,
                                     weights=example_weights(batch, ctx, totals), example_mask=slots(batch),
                                     num_examples=totals["examples"]), policy, ctx)
