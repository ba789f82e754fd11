"""Training objectives by registry name: batch + models -> (loss, metrics).

Each objective is a pure function of the models (policy, and the frozen
reference/teacher when it needs them), a batch of arrays (schema in
`jaxalign.data.collate`) and an `ObjectiveContext`. Chosen and rejected rows
run through each model as one concatenated batch. Reference and teacher
log-probs come from the batch when precomputed (then those models are not
loaded at all), else from the frozen models under `stop_gradient`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign.config.schema import LossConfig
from jaxalign.losses import (
    bradley_terry_loss,
    composite_loss,
    dadpo_loss,
    difference_model_loss,
    dpo_loss,
    kto_loss,
    rrhf_loss,
    sft_loss,
)
from jaxalign.losses._common import safe_div
from jaxalign.ops import token_distill_loss
from jaxalign.train.forward import Sequences, SequenceOutput, sequence_logps, split_pairs


@dataclasses.dataclass(frozen=True)
class Models:
    policy: Any
    reference: Any = None
    teacher: Any = None


@dataclasses.dataclass(frozen=True)
class ObjectiveContext:
    loss: LossConfig
    mesh: Mesh | None = None
    use_rdo_weights: bool = False

    @property
    def chunk_size(self) -> int:
        return self.loss.chunk_size


Objective = Callable[..., tuple[jax.Array, dict]]  # (models, batch, ctx, totals=None) -> (loss, metrics)


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
    fn: Objective
    task: str  # data.task it trains on
    head: str = "lm"  # policy head: "lm" or "score"
    reference: bool = False  # needs reference log-probs
    teacher: bool = False  # needs teacher log-probs
    cache_prefix: str = "chosen"  # how precomputed columns are named (see needs_model)


# ------------------------------------------------------------------ helpers
Totals = dict[str, jax.Array]


def _scored_tokens(batch: dict, *prefixes: str) -> jax.Array:
    """Scored target positions (`loss_mask[:, 1:]`) of the sequences under `prefixes`."""
    return sum(jnp.sum(batch[f"{p}loss_mask"][:, 1:].astype(jnp.float32)) for p in prefixes)


KD_SIDES = {"chosen": ("chosen_",), "rejected": ("rejected_",), "both": ("chosen_", "rejected_")}


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
        policy = _frozen(models.policy, kl, 1, ctx).logps.reshape(-1)
        reference = _frozen(models.reference, kl, 1, ctx).logps.reshape(-1)
        totals["kl_sum"] = jnp.sum(mask.reshape(-1) * (policy - reference))
    return totals


def _totals(models: Models, batch: dict, ctx: ObjectiveContext, totals: Totals | None) -> Totals:
    return batch_totals(models, batch, ctx) if totals is None else totals


def example_weights(batch: dict, ctx: ObjectiveContext, totals: Totals) -> jax.Array:
    """Flat `[B*K]` weights: RDO weight (if enabled) on real examples, 0 on empty slots,
    rescaled by N/`totals["examples"]` so `mean(w * l)` averages over the real examples of the
    whole batch (all micro-batches), not of this micro-batch."""
    mask = batch["example_mask"].reshape(-1).astype(jnp.float32)
    w = mask * batch["rdo_weight"].reshape(-1).astype(jnp.float32) if ctx.use_rdo_weights else mask
    return w * safe_div(jnp.float32(mask.size), totals["examples"])


def _slots(batch: dict) -> jax.Array:
    """Flat `[B*K]` mask of real examples (0 for the empty slots of packed rows)."""
    return batch["example_mask"].reshape(-1)


def _frozen(model, seqs: Sequences, k: int, ctx: ObjectiveContext) -> SequenceOutput:
    out = sequence_logps(model, seqs, k, chunk_size=ctx.chunk_size, mesh=ctx.mesh)
    return SequenceOutput(*(jax.lax.stop_gradient(x) for x in (out.logps, out.lengths, out.hidden, out.aux_loss)))


def _pair_logps(models_attr, batch, both, k, ctx, column: str):
    """(chosen, rejected) flat log-probs of a frozen model, from cached columns or a forward pass."""
    cached = f"{column}_chosen_logps"
    if cached in batch:
        return batch[cached].reshape(-1), batch[f"{column}_rejected_logps"].reshape(-1), None
    out = _frozen(models_attr, both, k, ctx)
    c, r = split_pairs(out.logps)
    return c, r, out


def _preference_forward(models: Models, batch: dict, ctx: ObjectiveContext):
    both = Sequences.concat(Sequences.from_batch(batch, "chosen_"), Sequences.from_batch(batch, "rejected_"))
    k = batch["example_mask"].shape[1]
    policy = sequence_logps(models.policy, both, k, chunk_size=ctx.chunk_size, mesh=ctx.mesh)
    return both, k, policy


def _with_router_aux(result: tuple[jax.Array, dict], policy: SequenceOutput, ctx: ObjectiveContext):
    """Add `loss.router_aux_weight` x the policy's MoE load-balancing loss (metric `router_aux_loss`)
    to an LM-head objective's `(loss, metrics)`: the one place every policy forward's aux reaches the loss."""
    loss, metrics = result
    w = ctx.loss.router_aux_weight
    if w == 0:
        return loss, metrics
    return loss + w * policy.aux_loss, {**metrics, "router_aux_loss": policy.aux_loss}


def _with_extra_terms(loss, metrics, models: Models, batch: dict, both: Sequences, policy: SequenceOutput,
                      teacher_out, ctx, totals: Totals):
    """Add the optional token-level KD and chosen-NLL terms (`composite_loss`), each a token mean
    over the whole batch (`totals`), not over this micro-batch."""
    cfg = ctx.loss
    if cfg.kd_weight == 0 and cfg.nll_weight == 0:
        return loss, metrics
    kd = nll = None
    if cfg.kd_weight > 0:
        if teacher_out is None:
            teacher_out = _frozen(models.teacher, both, 1, ctx)
        half = both.input_ids.shape[0] // 2
        rows = {"chosen": slice(0, half), "rejected": slice(half, None), "both": slice(None)}[cfg.kd_on]
        kd = token_distill_loss(
            policy.hidden[rows, :-1], models.policy.lm_head_weight(),
            teacher_out.hidden[rows, :-1], models.teacher.lm_head_weight(), both.loss_mask[rows, 1:],
            divergence=cfg.kd_divergence, temperature=cfg.kd_temperature, jsd_lambda=cfg.kd_jsd_lambda,
            top_k=cfg.kd_top_k or None, chunk_size=ctx.chunk_size,
            logit_soft_cap=models.policy.logit_softcap, teacher_logit_soft_cap=models.teacher.logit_softcap,
        )
        # token_distill_loss is this batch's token mean: rescale it to the whole batch's count
        kd = kd * safe_div(_scored_tokens(batch, *KD_SIDES[cfg.kd_on]), totals["kd_tokens"])
    if cfg.nll_weight > 0:
        chosen_logps, _ = split_pairs(policy.logps)
        chosen_lengths, _ = split_pairs(policy.lengths)
        nll, _ = sft_loss(chosen_logps, chosen_lengths, num_tokens=totals["chosen_tokens"])
    return composite_loss(loss, metrics, kd_loss=kd, kd_weight=cfg.kd_weight, nll_loss=nll, nll_weight=cfg.nll_weight)


# --------------------------------------------------------------- objectives
# Each takes optional `totals` (`batch_totals` of the whole batch, per micro-batch); without them
# the batch normalises itself.
def dpo_objective(models: Models, batch: dict, ctx: ObjectiveContext, totals: Totals | None = None):
    totals = _totals(models, batch, ctx, totals)
    both, k, policy = _preference_forward(models, batch, ctx)
    pc, pr = split_pairs(policy.logps)
    lc, lr = split_pairs(policy.lengths)
    rc, rr, _ = _pair_logps(models.reference, batch, both, k, ctx, "ref")
    cfg = ctx.loss
    loss, metrics = dpo_loss(pc, pr, rc, rr, beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing,
                             weights=example_weights(batch, ctx, totals), example_mask=_slots(batch), chosen_lengths=lc,
                             rejected_lengths=lr)
    return _with_router_aux(_with_extra_terms(loss, metrics, models, batch, both, policy, None, ctx, totals), policy, ctx)


def dadpo_objective(models: Models, batch: dict, ctx: ObjectiveContext, totals: Totals | None = None):
    totals = _totals(models, batch, ctx, totals)
    both, k, policy = _preference_forward(models, batch, ctx)
    pc, pr = split_pairs(policy.logps)
    rc, rr, _ = _pair_logps(models.reference, batch, both, k, ctx, "ref")
    tc, tr, teacher_out = _pair_logps(models.teacher, batch, both, k, ctx, "teacher")
    cfg = ctx.loss
    loss, metrics = dadpo_loss(pc, pr, rc, rr, tc, tr, beta_ref=cfg.beta_ref, beta_teacher=cfg.beta_teacher,
                               weights=example_weights(batch, ctx, totals), example_mask=_slots(batch))
    return _with_router_aux(_with_extra_terms(loss, metrics, models, batch, both, policy, teacher_out, ctx, totals),
                            policy, ctx)


def rrhf_objective(models: Models, batch: dict, ctx: ObjectiveContext, totals: Totals | None = None):
    totals = _totals(models, batch, ctx, totals)
    both, k, policy = _preference_forward(models, batch, ctx)
    pc, pr = split_pairs(policy.logps)
    lc, lr = split_pairs(policy.lengths)
    return _with_router_aux(rrhf_loss(pc, pr, lc, lr, nll_weight=ctx.loss.rrhf_nll_weight,
                                      weights=example_weights(batch, ctx, totals), example_mask=_slots(batch),
                                      num_examples=totals["examples"]), policy, ctx)


def sft_objective(models: Models, batch: dict, ctx: ObjectiveContext, totals: Totals | None = None):
    totals = _totals(models, batch, ctx, totals)
    seqs = Sequences.from_batch(batch)
    out = sequence_logps(models.policy, seqs, batch["example_mask"].shape[1], chunk_size=ctx.chunk_size, mesh=ctx.mesh)
    mask = batch["example_mask"].reshape(-1).astype(jnp.float32)
    return _with_router_aux(sft_loss(out.logps.reshape(-1), out.lengths.reshape(-1) * mask, weights=mask,
                                     num_tokens=totals["tokens"]), out, ctx)


def kto_objective(models: Models, batch: dict, ctx: ObjectiveContext, totals: Totals | None = None):
    """KTO on the main rows; z₀ comes from `totals["kl_sum"]` (the `kl_` rows, `batch_totals`),
    0 when the reference log-probs are cached and no reference model is loaded."""
    totals = _totals(models, batch, ctx, totals)
    main = Sequences.from_batch(batch)
    policy = sequence_logps(models.policy, main, 1, chunk_size=ctx.chunk_size, mesh=ctx.mesh)
    p_main = policy.logps.reshape(-1)
    if "ref_logps" in batch and models.reference is None:
        r_main = batch["ref_logps"].reshape(-1)
    else:
        r_main = _frozen(models.reference, main, 1, ctx).logps.reshape(-1)
    z0 = safe_div(totals["kl_sum"], totals["examples"]) if "kl_sum" in totals else 0.0
    cfg = ctx.loss
    return _with_router_aux(kto_loss(p_main, r_main, batch["label"].reshape(-1).astype(bool), beta=cfg.beta,
                                     desirable_weight=cfg.kto_desirable_weight, undesirable_weight=cfg.kto_undesirable_weight,
                                     weights=example_weights(batch, ctx, totals), kl_estimate=z0), policy, ctx)


def reward_model_objective(models: Models, batch: dict, ctx: ObjectiveContext, totals: Totals | None = None):
    totals = _totals(models, batch, ctx, totals)
    both = Sequences.concat(Sequences.from_batch(batch, "chosen_"), Sequences.from_batch(batch, "rejected_"))
    scores = models.policy(both.input_ids, both.positions, both.segment_ids)
    half = scores.shape[0] // 2
    return bradley_terry_loss(scores[:half], scores[half:], weights=example_weights(batch, ctx, totals),
                              example_mask=_slots(batch))


def difference_model_objective(models: Models, batch: dict, ctx: ObjectiveContext, totals: Totals | None = None):
    totals = _totals(models, batch, ctx, totals)
    ids = jnp.concatenate([batch["fwd_input_ids"], batch["bwd_input_ids"]])
    pos = jnp.concatenate([batch["fwd_positions"], batch["bwd_positions"]])
    seg = jnp.concatenate([batch["fwd_segment_ids"], batch["bwd_segment_ids"]])
    last = jnp.concatenate([batch["fwd_last_index"], batch["bwd_last_index"]])
    d = models.policy(ids, pos, seg, last)
    half = d.shape[0] // 2
    labels = batch.get("label") if ctx.loss.difference_label_type != "binary" else None
    return difference_model_loss(d[:half], d[half:], labels=labels, label_type=ctx.loss.difference_label_type,
                                 weights=example_weights(batch, ctx, totals))


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "sft": ObjectiveSpec(sft_objective, task="sft"),
    "dpo": ObjectiveSpec(dpo_objective, task="preference", reference=True),
    "dadpo": ObjectiveSpec(dadpo_objective, task="preference", reference=True, teacher=True),
    "kto": ObjectiveSpec(kto_objective, task="kto", reference=True),
    "rrhf": ObjectiveSpec(rrhf_objective, task="preference"),
    "reward_model": ObjectiveSpec(reward_model_objective, task="preference", head="score"),
    "difference_model": ObjectiveSpec(difference_model_objective, task="pairwise", head="score"),
}


def get_objective(name: str) -> ObjectiveSpec:
    if name not in OBJECTIVES:
        raise ValueError(f"loss.name={name!r} is not one of {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]


def needs_model(spec: ObjectiveSpec, which: str, cfg: LossConfig, columns: set[str]) -> bool:
    """Whether the frozen `which` ("reference"/"teacher") model must be loaded.

    Not when the data carries its precomputed log-probs, unless a term needs its
    full distributions (token-level KD needs the teacher itself; KTO's KL pairs
    need the reference)."""
    if which == "teacher":
        if cfg.kd_weight > 0:
            return True
        return spec.teacher and "teacher_chosen_logps" not in columns
    if not spec.reference:
        return False
    cached = "ref_logps" if spec.task == "kto" else "ref_chosen_logps"
    return cached not in columns
