"""Pure train and eval steps, compiled once per batch shape.

State is a plain dict `{"step", "params", "opt_state", "rng"}` (checkpointable
as is); frozen models are a separate argument that is never donated. One step =
one optimizer update; with `grad_accum_steps > 1` the batch is split into
micro-batches whose gradients are averaged under `lax.scan`. Every micro-batch
is normalised by the whole batch's counts (`batch_totals`: real examples,
scored tokens, KTO's KL estimate), so the accumulated gradient equals the full
batch's even when packing leaves micro-batches with different example or token
counts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxalign.models.lora import adapters_disabled, lora_dropout
from jaxalign.objectives.common import Models, ObjectiveContext, batch_totals
from jaxalign.objectives.registry import ObjectiveSpec


@dataclasses.dataclass(frozen=True)
class GraphDefs:
    """Graph definitions of the step's models. `reference_is_base`: the reference is the LoRA policy
    with its adapters disabled (the base model; no weights of its own in `frozen`)."""

    policy: Any
    reference: Any = None
    teacher: Any = None
    reference_is_base: bool = False


def policy_model(graphdef, params, frozen: dict):
    """The policy: `params`, plus with LoRA the frozen base weights `frozen["policy"]`."""
    base = frozen.get("policy")
    return nnx.merge(graphdef, params) if base is None else nnx.merge(graphdef, params, base)


def merge_models(graphdefs: GraphDefs, params, frozen: dict) -> Models:
    def merged(graphdef, state):
        return None if graphdef is None else nnx.merge(graphdef, state)

    policy = policy_model(graphdefs.policy, params, frozen)
    reference = adapters_disabled(policy) if graphdefs.reference_is_base else merged(graphdefs.reference, frozen.get("reference"))
    return Models(policy=policy, reference=reference, teacher=merged(graphdefs.teacher, frozen.get("teacher")))


@dataclasses.dataclass(frozen=True, eq=False)
class LossFn:
    """`(params, frozen, batch, totals=None, rng=None) -> (loss, metrics)` for one objective.

    `totals(params, frozen, batch)` gives the batch's normalising counts (`batch_totals`);
    without `totals` the loss normalises by its own batch's. `frozen_leaves` (bool per
    parameter, or None) cuts frozen parameters from the backward pass. `rng` (a PRNG key)
    drives LoRA dropout; None = no dropout (evaluation).
    """

    spec: ObjectiveSpec
    ctx: ObjectiveContext
    graphdefs: GraphDefs
    frozen_leaves: Any = None

    def __call__(self, params, frozen, batch, totals=None, rng=None):
        if self.frozen_leaves is not None:
            params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, self.frozen_leaves)
        with lora_dropout(rng):
            loss, metrics = self.spec.fn(merge_models(self.graphdefs, params, frozen), batch, self.ctx, totals)
        return loss, {**metrics, "loss": loss}

    def totals(self, params, frozen, batch):
        return jax.lax.stop_gradient(batch_totals(merge_models(self.graphdefs, params, frozen), batch, self.ctx))


def make_loss_fn(spec: ObjectiveSpec, ctx: ObjectiveContext, graphdefs: GraphDefs) -> LossFn:
    """The objective as a `LossFn` of `(params, frozen, batch)`."""
    return LossFn(spec, ctx, graphdefs)


def _split_micro(batch: dict, n: int) -> dict:
    return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)


def micro_totals(loss_fn: LossFn, params, frozen, micro: dict, n: int):
    """`batch_totals` of the whole batch divided by `n`: what each of `n` micro-batches
    (`micro`, leading axis `n`) normalises by, so that their mean is the full batch's loss."""
    def body(acc, mb):
        return jax.tree.map(jnp.add, acc, loss_fn.totals(params, frozen, mb)), None

    first = jax.tree.map(lambda x: x[0], micro)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(loss_fn.totals, params, frozen, first))
    summed, _ = jax.lax.scan(body, zeros, micro)
    return jax.tree.map(lambda x: x / n, summed)


def accumulated_grads(loss_fn: LossFn, params, frozen, batch: dict, grad_accum_steps: int = 1, rng=None):
    """`(metrics, grads)` of one batch, split into `grad_accum_steps` micro-batches (unjitted).

    The gradient is the full batch's for every objective (see the module docstring); metrics
    other than the loss are means of per-micro-batch values. The loss is differentiated with
    respect to `params` only; `totals` are computed first, without gradients. `rng` (LoRA
    dropout) is folded with each micro-batch's index.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps == 1:
        (_, metrics), grads = grad_fn(params, frozen, batch, loss_fn.totals(params, frozen, batch), rng)
        return metrics, grads
    micro = _split_micro(batch, grad_accum_steps)
    totals = micro_totals(loss_fn, params, frozen, micro, grad_accum_steps)
    first = jax.tree.map(lambda x: x[0], micro)
    (_, m_shape), g_shape = jax.eval_shape(grad_fn, params, frozen, first, totals)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (m_shape, g_shape))

    def body(acc, xs):
        mb, i = xs
        (_, m), g = grad_fn(params, frozen, mb, totals, None if rng is None else jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, acc, (m, g)), None

    (metrics, grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(grad_accum_steps)))
    return jax.tree.map(lambda x: x / grad_accum_steps, (metrics, grads))


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation, schedule, *, grad_accum_steps: int = 1,
                    state_shardings=None, frozen_leaves=None):
    """Jitted `(state, frozen, batch) -> (state, metrics)`; `state` is donated.

    `state_shardings` pins the new state to the input state's shardings, so the
    step compiles once (not again when its outputs come back respelled).
    `frozen_leaves` (bool per parameter) stops gradients at frozen parameters,
    so the backward pass skips what only they need.
    """
    if frozen_leaves is not None:
        loss_fn = dataclasses.replace(loss_fn, frozen_leaves=frozen_leaves)

    def train_step(state, frozen, batch):
        params = state["params"]
        rng = jax.random.wrap_key_data(state["rng"])  # LoRA dropout's key this step
        metrics, grads = accumulated_grads(loss_fn, params, frozen, batch, grad_accum_steps, rng)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_state = {
            "step": state["step"] + 1,
            "params": optax.apply_updates(params, updates),
            "opt_state": opt_state,
            "rng": jax.random.fold_in(state["rng"], state["step"]),
        }
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads), "lr": schedule(state["step"])}
        return new_state, metrics

    out_shardings = None if state_shardings is None else (state_shardings, None)
    return jax.jit(train_step, donate_argnums=(0,), out_shardings=out_shardings)


def make_eval_step(loss_fn):
    """Jitted `(params, frozen, batch) -> metrics` (no gradients)."""
    return jax.jit(lambda params, frozen, batch: loss_fn(params, frozen, batch)[1])
