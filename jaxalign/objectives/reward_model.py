"""Pointwise reward model r(x, y) trained with Bradley–Terry on preference pairs (an RDO source)."""

from __future__ import annotations

from jaxalign.losses.reward import bradley_terry_loss
from jaxalign.objectives.common import example_weights, slots, totals_or_batch
from jaxalign.objectives.registry import register_objective
from jaxalign.train.forward import Sequences


@register_objective("reward_model", task="preference", head="score",
                    metrics=("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"))
def reward_model_objective(models, batch: dict, ctx, totals=None):
    """Bradley–Terry on the scalar scores of chosen and rejected."""
    totals = totals_or_batch(models, batch, ctx, totals)
    both = Sequences.concat(Sequences.from_batch(batch, "chosen_"), Sequences.from_batch(batch, "rejected_"))
    scores = models.policy(both.input_ids, both.positions, both.segment_ids)
    half = scores.shape[0] // 2
    return bradley_terry_loss(scores[:half], scores[half:], weights=example_weights(batch, ctx, totals),
                              example_mask=slots(batch))
