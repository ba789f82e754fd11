"""DPO (Rafailov et al. 2023) and its sigmoid/cDPO, IPO, hinge and robust variants; dDPO is DPO on model-built pairs."""

from __future__ import annotations

from dataclasses import dataclass

from jaxalign.config.fields import setting
from jaxalign.errors import ConfigError
from jaxalign.losses.dpo import DPO_LOSS_TYPES, dpo_loss
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
from jaxalign.objectives.registry import Frozen, register_objective, settings_of
from jaxalign.train.forward import split_pairs

#: Cached columns that stand in for the reference's forward pass (``jaxalign score`` writes them).
REFERENCE_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


@dataclass
class DPOSettings(LengthAveraging):
    beta: float = setting(0.1, gt=0)
    """β of DPO, KTO and the IPO/hinge variants (inverse strength of the KL penalty to the reference)."""

    loss_type: str = setting("sigmoid", choices=DPO_LOSS_TYPES)
    """DPO variant: sigmoid (DPO/cDPO) | ipo | hinge | robust."""

    label_smoothing: float = setting(0.0, ge=0, lt=0.5)
    """ε: assumed probability that a preference label is flipped (sigmoid = cDPO, robust); must be < 0.5."""

    def check(self) -> None:
        if self.average_logps and self.loss_type == "ipo":
            raise ConfigError("loss.average_logps=true with loss.loss_type=ipo: IPO already compares "
                              "length-averaged log-probs; set loss.average_logps=false")
        if self.label_smoothing > 0 and self.loss_type not in ("sigmoid", "robust"):
            raise ConfigError(
                f"loss.label_smoothing={self.label_smoothing} is only used by loss.loss_type sigmoid or robust, "
                f"not {self.loss_type!r}"
            )


@register_objective(
    "dpo", task="preference", settings=DPOSettings, reference=Frozen(cached=REFERENCE_COLUMNS), rdo=True,
    extra_terms=True,
    metrics=("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
             "logps/rejected"),
)
def dpo_objective(models, batch: dict, ctx, totals=None):
    """Direct preference optimisation against the frozen reference."""
    totals = totals_or_batch(models, batch, ctx, totals)
    both, k, policy = preference_forward(models, batch, ctx)
    pc, pr = split_pairs(policy.logps)
    lc, lr = split_pairs(policy.lengths)
    rc, rr, _ = pair_logps(models.reference, batch, both, k, ctx, "ref")
    s = settings_of(ctx.loss, "dpo")
    loss, metrics = dpo_loss(pc, pr, rc, rr, beta=s.beta, loss_type=s.loss_type, label_smoothing=s.label_smoothing,
                             weights=example_weights(batch, ctx, totals), example_mask=slots(batch), chosen_lengths=lc,
                             rejected_lengths=lr, average_logps=s.average_logps)
    return with_router_aux(with_extra_terms(loss, metrics, models, batch, both, policy, None, ctx, totals), policy, ctx)
