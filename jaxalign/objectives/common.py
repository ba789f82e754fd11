"""What every objective's batch -> loss adapter shares: the models, the context, batch totals,
example weights, frozen-model log-probs and the optional extra terms (router aux, token KD, chosen NLL).

An adapter is ``fn(models, batch, ctx, totals=None) -> (loss, metrics)``: a pure function of the
models (policy, and the frozen reference/teacher when it needs them), a batch of arrays (schema in
``jaxalign.data.collate``) and an ``ObjectiveContext``. Chosen and rejected rows run through each
model as one concatenated batch. Reference and teacher log-probs come from the batch when
precomputed (then those models are not loaded at all), else from the frozen models under
``stop_gradient``. ``totals`` (``batch_totals`` of the whole batch) normalise each micro-batch by
the whole batch's counts; without them the batch normalises itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign.config.loss import KD_ON, kd_sides
from jaxalign.losses import composite_loss, sft_loss
from jaxalign.losses._common import safe_div
from jaxalign.ops import cached_distill_loss, token_distill_loss
from jaxalign.train.forward import Sequences, SequenceOutput, sequence_logps, split_pairs

__all__ = [
    "KD_SIDES",
    "LengthAveraging",
    "Models",
    "ObjectiveContext",
    "Totals",
    "batch_totals",
    "example_weights",
    "frozen_logps",
    "pair_logps",
    "preference_forward",
    "slots",
    "split_pairs",
    "totals_or_batch",
    "token_kd",
    "with_extra_terms",
    "with_router_aux",
]

Totals = dict[str, jax.Array]

#: loss.kd_on -> the row prefixes the distillation term runs on.
KD_SIDES = {on: tuple(f"{side}_" for side in kd_sides(on)) for on in KD_ON}


@dataclasses.dataclass
class LengthAveraging:
    """The length-normalisation setting of the sequence-level preference objectives (dpo, dadpo)."""

    average_logps: bool = False
    """Compare responses by their mean token log-prob (sum / response length) instead of the sum, for the policy,
    reference and teacher alike: length normalisation, as DPO users ask for; a departure from the DPO and daDPO
    papers' formulas (β then acts per token, so it needs a larger value). Not with loss.loss_type=ipo."""


@dataclasses.dataclass(frozen=True)
class Models:
    """The models of one step: the policy (trained) and the frozen reference/teacher (None when not loaded)."""

    policy: Any
    reference: Any = None
    teacher: Any = None


@dataclasses.dataclass(frozen=True)
class ObjectiveContext:
    """Static inputs of an adapter: the ``loss`` section, the mesh of the vocab-parallel path, RDO on/off."""

    loss: Any  # the ``loss`` config section (``jaxalign.config.schema.LossConfig``)
    mesh: Mesh | None = None
    use_rdo_weights: bool = False

    @property
    def chunk_size(self) -> int:
        return self.loss.chunk_size


def _scored_tokens(batch: dict, *prefixes: str) -> jax.Array:
    """Scored target positions (`loss_mask[:, 1:]`) of the sequences under `prefixes`."""
    return sum(jnp.sum(batch[f"{p}loss_mask"][:, 1:].astype(jnp.float32)) for p in prefixes)


def batch_totals(models: Models, batch: dict, ctx: ObjectiveContext) -> Totals:
    """The additive counts (and sums) that normalise an objective's loss, for one (micro-)batch.

    `examples` (real examples), `tokens` (scored tokens of `sft`/`kto` rows), `chosen_tokens`,
    `kd_tokens` (scored tokens of the KD rows) and, for KTO with a reference model, `kl_sum`
    (Σ over real examples of `logp_θ − logp_ref` on the mismatched `kl_` rows; the policy runs
    without gradients). The train step sums them over all micro-batches and divides by their
    number, so each micro-batch is normalised by the whole batch's counts and the mean of the
    micro-batch losses (and gradients) is exactly the full batch's.
    """
    mask = batch["example_mask"].astype(jnp.float32)
    totals = {"examples": jnp.sum(mask)}
    if "loss_mask" in batch:
        totals["tokens"] = _scored_tokens(batch, "")
    if "chosen_loss_mask" in batch:
        totals["chosen_tokens"] = _scored_tokens(batch, "chosen_")
        totals["kd_tokens"] = _scored_tokens(batch, *KD_SIDES[ctx.loss.kd_on])
    if "kl_input_ids" in batch and models.reference is not None:
        kl = Sequences.from_batch(batch, "kl_")
        policy = frozen_logps(models.policy, kl, 1, ctx).logps.reshape(-1)
        reference = frozen_logps(models.reference, kl, 1, ctx).logps.reshape(-1)
        totals["kl_sum"] = jnp.sum(mask.reshape(-1) * (policy - reference))
    return totals


def totals_or_batch(models: Models, batch: dict, ctx: ObjectiveContext, totals: Totals | None) -> Totals:
    """``totals`` when the step passed them, else this batch's own."""
    return batch_totals(models, batch, ctx) if totals is None else totals


def example_weights(batch: dict, ctx: ObjectiveContext, totals: Totals) -> jax.Array:
    """Flat `[B*K]` weights: RDO weight (if enabled) on real examples, 0 on empty slots,
    rescaled by N/`totals["examples"]` so `mean(w * l)` averages over the real examples of the
    whole batch (all micro-batches), not of this micro-batch."""
    mask = batch["example_mask"].reshape(-1).astype(jnp.float32)
    w = mask * batch["rdo_weight"].reshape(-1).astype(jnp.float32) if ctx.use_rdo_weights else mask
    return w * safe_div(jnp.float32(mask.size), totals["examples"])


def slots(batch: dict) -> jax.Array:
    """Flat `[B*K]` mask of real examples (0 for the empty slots of packed rows)."""
    return batch["example_mask"].reshape(-1)


def frozen_logps(model, seqs: Sequences, k: int, ctx: ObjectiveContext) -> SequenceOutput:
    """Sequence log-probs of a frozen model, under `stop_gradient`."""
    out = sequence_logps(model, seqs, k, chunk_size=ctx.chunk_size, mesh=ctx.mesh)
    return SequenceOutput(*(jax.lax.stop_gradient(x) for x in (out.logps, out.lengths, out.hidden, out.aux_loss)))


def pair_logps(model, batch: dict, both: Sequences, k: int, ctx: ObjectiveContext, column: str):
    """(chosen, rejected, output or None) flat `[B*K]` log-probs of a frozen model, from the cached columns
    `{column}_chosen_logps`/`{column}_rejected_logps` or a forward pass over `both`."""
    cached = f"{column}_chosen_logps"
    if cached in batch:
        return batch[cached].reshape(-1), batch[f"{column}_rejected_logps"].reshape(-1), None
    out = frozen_logps(model, both, k, ctx)
    c, r = split_pairs(out.logps)
    return c, r, out


def preference_forward(models: Models, batch: dict, ctx: ObjectiveContext):
    """(both, k, policy output): chosen and rejected rows concatenated, run through the policy once."""
    both = Sequences.concat(Sequences.from_batch(batch, "chosen_"), Sequences.from_batch(batch, "rejected_"))
    k = batch["example_mask"].shape[1]
    policy = sequence_logps(models.policy, both, k, chunk_size=ctx.chunk_size, mesh=ctx.mesh)
    return both, k, policy


def with_router_aux(result: tuple[jax.Array, dict], policy: SequenceOutput, ctx: ObjectiveContext):
    """Add `loss.router_aux_weight` x the policy's MoE load-balancing loss (metric `router_aux_loss`)
    to an LM-head objective's `(loss, metrics)`: the one place every policy forward's aux reaches the loss."""
    loss, metrics = result
    w = ctx.loss.router_aux_weight
    if w == 0:
        return loss, metrics
    return loss + w * policy.aux_loss, {**metrics, "router_aux_loss": policy.aux_loss}


def token_kd(models: Models, batch: dict, both: Sequences, policy: SequenceOutput, teacher_out, ctx) -> jax.Array:
    """This batch's token-mean distillation divergence on the `loss.kd_on` rows of `both` (chosen rows, then
    rejected rows). From the cached top-k teacher (`{side}_topk_ids/logps/residual`, `loss.kd_cache`) when the
    batch carries it, no teacher model needed; else from the teacher's forward pass (`teacher_out`, or run here)."""
    cfg = ctx.loss
    half = both.input_ids.shape[0] // 2
    rows = {"chosen": slice(0, half), "rejected": slice(half, None), "both": slice(None)}[cfg.kd_on]
    prefixes = KD_SIDES[cfg.kd_on]
    common = dict(divergence=cfg.kd_divergence, jsd_lambda=cfg.kd_jsd_lambda, top_k=cfg.kd_top_k or None,
                  chunk_size=ctx.chunk_size)
    if f"{prefixes[0]}topk_ids" in batch:  # attach_kd_cache refused kd_temperature != 1 before any model loaded
        ids, logps, residual = (jnp.concatenate([batch[f"{p}topk_{n}"] for p in prefixes])[:, 1:]
                                for n in ("ids", "logps", "residual"))
        return cached_distill_loss(policy.hidden[rows, :-1], models.policy.lm_head_weight(), ids, logps, residual,
                                   both.loss_mask[rows, 1:], logit_soft_cap=models.policy.logit_softcap, **common)
    if teacher_out is None:
        teacher_out = frozen_logps(models.teacher, both, 1, ctx)
    return token_distill_loss(
        policy.hidden[rows, :-1], models.policy.lm_head_weight(),
        teacher_out.hidden[rows, :-1], models.teacher.lm_head_weight(), both.loss_mask[rows, 1:],
        temperature=cfg.kd_temperature, logit_soft_cap=models.policy.logit_softcap,
        teacher_logit_soft_cap=models.teacher.logit_softcap, **common,
    )


def with_extra_terms(loss, metrics, models: Models, batch: dict, both: Sequences, policy: SequenceOutput,
                     teacher_out, ctx, totals: Totals):
    """Add the optional token-level KD and chosen-NLL terms (`composite_loss`), each a token mean
    over the whole batch (`totals`), not over this micro-batch."""
    cfg = ctx.loss
    if cfg.kd_weight == 0 and cfg.nll_weight == 0:
        return loss, metrics
    kd = nll = None
    if cfg.kd_weight > 0:
        # token_kd is this batch's token mean: rescale it to the whole batch's count
        kd = token_kd(models, batch, both, policy, teacher_out, ctx)
        kd = kd * safe_div(_scored_tokens(batch, *KD_SIDES[cfg.kd_on]), totals["kd_tokens"])
    if cfg.nll_weight > 0:
        chosen_logps, _ = split_pairs(policy.logps)
        chosen_lengths, _ = split_pairs(policy.lengths)
        nll, _ = sft_loss(chosen_logps, chosen_lengths, num_tokens=totals["chosen_tokens"])
    return composite_loss(loss, metrics, kd_loss=kd, kd_weight=cfg.kd_weight, nll_loss=nll, nll_weight=cfg.nll_weight)
