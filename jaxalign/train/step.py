"""Pure train and eval steps, compiled once per batch shape.

State is a plain dict `{"step", "params", "opt_state", "rng"}` (checkpointable
as is); frozen models are a separate argument that is never donated. One step =
one optimizer update; with `grad_accum_steps > 1` the batch is split into
micro-batches whose gradients are summed under `lax.scan`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxalign.train.objectives import Models, ObjectiveContext, ObjectiveSpec


@dataclasses.dataclass(frozen=True)
class GraphDefs:
    policy: Any
    reference: Any = None
    teacher: Any = None


def merge_models(graphdefs: GraphDefs, params, frozen: dict) -> Models:
    def merged(graphdef, state):
        return None if graphdef is None else nnx.merge(graphdef, state)

    return Models(
        policy=nnx.merge(graphdefs.policy, params),
        reference=merged(graphdefs.reference, frozen.get("reference")),
        teacher=merged(graphdefs.teacher, frozen.get("teacher")),
    )


def make_loss_fn(spec: ObjectiveSpec, ctx: ObjectiveContext, graphdefs: GraphDefs):
    """`(params, frozen, batch) -> (loss, metrics)` for the objective."""

    def loss_fn(params, frozen, batch):
        loss, metrics = spec.fn(merge_models(graphdefs, params, frozen), batch, ctx)
        return loss, {**metrics, "loss": loss}

    return loss_fn


def _split_micro(batch: dict, n: int) -> dict:
    return jax.tree.map(lambda x: x.reshape(n, x.shape[0] // n, *x.shape[1:]), batch)


def make_train_step(loss_fn, tx: optax.GradientTransformation, schedule, *, grad_accum_steps: int = 1,
                    state_shardings=None, frozen_leaves=None):
    """Jitted `(state, frozen, batch) -> (state, metrics)`; `state` is donated.

    `state_shardings` pins the new state to the input state's shardings, so the
    step compiles once (not again when its outputs come back respelled).
    `frozen_leaves` (bool per parameter) stops gradients at frozen parameters,
    so the backward pass skips what only they need.
    """
    if frozen_leaves is not None:
        inner = loss_fn

        def loss_fn(params, frozen, batch):
            params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen_leaves)
            return inner(params, frozen, batch)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state, frozen, batch):
        params = state["params"]
        if grad_accum_steps == 1:
            (_, metrics), grads = grad_fn(params, frozen, batch)
        else:
            micro = _split_micro(batch, grad_accum_steps)
            first = jax.tree.map(lambda x: x[0], micro)
            (_, m_shape), g_shape = jax.eval_shape(grad_fn, params, frozen, first)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (m_shape, g_shape))

            def body(acc, mb):
                (_, m), g = grad_fn(params, frozen, mb)
                return jax.tree.map(jnp.add, acc, (m, g)), None

            (metrics, grads), _ = jax.lax.scan(body, zeros, micro)
            metrics, grads = jax.tree.map(lambda x: x / grad_accum_steps, (metrics, grads))
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
