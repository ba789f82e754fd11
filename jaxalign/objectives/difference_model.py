"""RDO's pairwise difference model D(x, a, b), trained on both orders of each pair."""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp

from jaxalign.config.fields import setting
from jaxalign.losses.difference import DIFFERENCE_LABEL_TYPES, difference_model_loss
from jaxalign.objectives.common import example_weights, totals_or_batch
from jaxalign.objectives.registry import register_objective, settings_of


@dataclass
class DifferenceModelSettings:
    difference_label_type: str = setting("binary", choices=DIFFERENCE_LABEL_TYPES)
    """Difference-model labels: binary (chosen ≻ rejected) | soft (P(chosen ≻ rejected)) | graded (a score difference)."""


@register_objective("difference_model", task="pairwise", settings=DifferenceModelSettings, head="score",
                    metrics=("rewards/margins", "rewards/accuracies", "difference/forward", "difference/backward",
                             "difference/antisymmetry_gap"))
def difference_model_objective(models, batch: dict, ctx, totals=None):
    """Pairwise difference model on (prompt, a, b) in both orders."""
    totals = totals_or_batch(models, batch, ctx, totals)
    ids = jnp.concatenate([batch["fwd_input_ids"], batch["bwd_input_ids"]])
    pos = jnp.concatenate([batch["fwd_positions"], batch["bwd_positions"]])
    seg = jnp.concatenate([batch["fwd_segment_ids"], batch["bwd_segment_ids"]])
    last = jnp.concatenate([batch["fwd_last_index"], batch["bwd_last_index"]])
    d = models.policy(ids, pos, seg, last)
    half = d.shape[0] // 2
    label_type = settings_of(ctx.loss, "difference_model").difference_label_type
    labels = batch.get("label") if label_type != "binary" else None
    return difference_model_loss(d[:half], d[half:], labels=labels, label_type=label_type,
                                 weights=example_weights(batch, ctx, totals))
