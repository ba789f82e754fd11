"""KTO (Ethayarajh et al. 2024): unpaired desirable / undesirable examples against a batch KL estimate."""

from __future__ import annotations

from dataclasses import dataclass

from jaxalign.config.fields import setting
from jaxalign.losses._common import safe_div
from jaxalign.losses.kto import kto_loss
from jaxalign.objectives.common import example_weights, frozen_logps, totals_or_batch, with_router_aux
from jaxalign.objectives.registry import Frozen, register_objective, settings_of
from jaxalign.train.forward import Sequences, sequence_logps


@dataclass
class KTOSettings:
    beta: float = setting(0.1, gt=0)
    """β of DPO, KTO and the IPO/hinge variants (inverse strength of the KL penalty to the reference)."""

    kto_desirable_weight: float = setting(1.0, ge=0)
    """KTO λ_D: weight of desirable examples."""

    kto_undesirable_weight: float = setting(1.0, ge=0)
    """KTO λ_U: weight of undesirable examples."""


@register_objective("kto", task="kto", settings=KTOSettings, reference=Frozen(cached=("ref_logps",)), rdo=True,
                    metrics=("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                             "logps/chosen", "logps/rejected", "count/desirable", "count/undesirable"))
def kto_objective(models, batch: dict, ctx, totals=None):
    """Kahneman–Tversky optimisation of unpaired examples against the reference.

    z₀ comes from `totals["kl_sum"]` (the `kl_` rows, `batch_totals`), 0 when the reference log-probs
    are cached and no reference model is loaded."""
    totals = totals_or_batch(models, batch, ctx, totals)
    main = Sequences.from_batch(batch)
    policy = sequence_logps(models.policy, main, 1, chunk_size=ctx.chunk_size, mesh=ctx.mesh)
    p_main = policy.logps.reshape(-1)
    if "ref_logps" in batch and models.reference is None:
        r_main = batch["ref_logps"].reshape(-1)
    else:
        r_main = frozen_logps(models.reference, main, 1, ctx).logps.reshape(-1)
    z0 = safe_div(totals["kl_sum"], totals["examples"]) if "kl_sum" in totals else 0.0
    s = settings_of(ctx.loss, "kto")
    return with_router_aux(kto_loss(p_main, r_main, batch["label"].reshape(-1).astype(bool), beta=s.beta,
                                    desirable_weight=s.kto_desirable_weight,
                                    undesirable_weight=s.kto_undesirable_weight,
                                    weights=example_weights(batch, ctx, totals), kl_estimate=z0), policy, ctx)
