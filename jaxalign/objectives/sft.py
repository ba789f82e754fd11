"""SFT / distilled SFT (dSFT): token-mean NLL of the responses."""

from __future__ import annotations

import jax.numpy as jnp

from jaxalign.losses.sft import sft_loss
from jaxalign.objectives.common import totals_or_batch, with_router_aux
from jaxalign.objectives.registry import register_objective
from jaxalign.train.forward import Sequences, sequence_logps


@register_objective("sft", task="sft", metrics=("loss/nll", "logps/chosen", "logps/per_token"))
def sft_objective(models, batch: dict, ctx, totals=None):
    """Supervised fine-tuning on prompt-response rows (dSFT on teacher responses)."""
    totals = totals_or_batch(models, batch, ctx, totals)
    seqs = Sequences.from_batch(batch)
    out = sequence_logps(models.policy, seqs, batch["example_mask"].shape[1], chunk_size=ctx.chunk_size, mesh=ctx.mesh)
    mask = batch["example_mask"].reshape(-1).astype(jnp.float32)
    return with_router_aux(sft_loss(out.logps.reshape(-1), out.lengths.reshape(-1) * mask, weights=mask,
                                    num_tokens=totals["tokens"]), out, ctx)
