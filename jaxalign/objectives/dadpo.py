"""daDPO (Zhang, Wang et al. 2025): DPO with a second KL term towards the frozen teacher's sequence log-probs."""

from __future__ import annotations

from dataclasses import dataclass

from jaxalign.config.fields import setting
from jaxalign.losses.dadpo import dadpo_loss
from jaxalign.objectives.common import (
    LengthAveraging,
    example_weights,
    pair_logps,
    preference_forward,
    slots,
    totals_or_batch,
    with_extra_terms,
    with_router_aux,
)
from jaxalign.objectives.dpo import REFERENCE_COLUMNS
from jaxalign.objectives.registry import Frozen, register_objective, settings_of
from jaxalign.train.forward import split_pairs

TEACHER_COLUMNS = ("teacher_chosen_logps", "teacher_rejected_logps")


@dataclass
class DaDPOSettings(LengthAveraging):
    beta_ref: float = setting(0.1, gt=0)
    """daDPO β₁: weight of the KL to the reference."""

    beta_teacher: float = setting(0.1, ge=0)
    """daDPO β₂: weight of the KL to the teacher (0 = exactly DPO with β = beta_ref)."""


@register_objective(
    "dadpo", task="preference", settings=DaDPOSettings, reference=Frozen(cached=REFERENCE_COLUMNS),
    teacher=Frozen(cached=TEACHER_COLUMNS), rdo=True, extra_terms=True,
    metrics=("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
             "rewards/ref_margins", "rewards/teacher_margins", "logps/chosen", "logps/rejected",
             "logps/teacher_chosen", "logps/teacher_rejected"),
)
def dadpo_objective(models, batch: dict, ctx, totals=None):
    """Distribution-aware DPO: KL to the reference (β₁) and to the teacher (β₂)."""
    totals = totals_or_batch(models, batch, ctx, totals)
    both, k, policy = preference_forward(models, batch, ctx)
    pc, pr = split_pairs(policy.logps)
    lc, lr = split_pairs(policy.lengths)
    rc, rr, _ = pair_logps(models.reference, batch, both, k, ctx, "ref")
    tc, tr, teacher_out = pair_logps(models.teacher, batch, both, k, ctx, "teacher")
    s = settings_of(ctx.loss, "dadpo")
    loss, metrics = dadpo_loss(pc, pr, rc, rr, tc, tr, beta_ref=s.beta_ref, beta_teacher=s.beta_teacher,
                               weights=example_weights(batch, ctx, totals), example_mask=slots(batch),
                               chosen_lengths=lc, rejected_lengths=lr, average_logps=s.average_logps)
    return with_router_aux(with_extra_terms(loss, metrics, models, batch, both, policy, teacher_out, ctx, totals),
                           policy, ctx)
