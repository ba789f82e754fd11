"""Parameter declarations: a family lists its per-layer parameters as `ParamSpec`s; the decoder stacks
them over layers and creates them with their partition names (mesh axes `fsdp`, `tensor`, `expert`)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

INITIALISERS = ("normal", "ones", "zeros")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter: its shape (without the layer axis), a mesh-axis name (or None) per dimension,
    and how a random model initialises it."""

    shape: tuple[int, ...]
    names: tuple[str | None, ...]
    init: str = "normal"

    def __post_init__(self):
        if len(self.shape) != len(self.names):
            raise ValueError(f"ParamSpec shape {self.shape} and partition names {self.names} differ in rank")
        if self.init not in INITIALISERS:
            raise ValueError(f"ParamSpec init {self.init!r} is not one of {', '.join(INITIALISERS)}")


def make_param(rngs: nnx.Rngs, spec: ParamSpec, dtype, leading: tuple[int, ...] = ()) -> nnx.Param:
    """An `nnx.Param` of shape `leading + spec.shape` (leading axes replicated), annotated for sharding."""
    shape = (*leading, *spec.shape)
    if spec.init == "normal":
        value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif spec.init == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        value = jnp.zeros(shape, jnp.float32)
    names = (None,) * len(leading) + spec.names
    return nnx.Param(value.astype(dtype), out_sharding=names, eager_sharding=False)


# Partition names of the common parameter kinds, so every family shards them the same way.
IN_OUT = ("fsdp", "tensor")  # [D, F]-like projections that widen: shard the output over `tensor`
OUT_IN = ("tensor", "fsdp")  # [F, D]-like projections that narrow: shard the input over `tensor`
VECTOR = (None,)  # norms and biases on the hidden dim
WIDE_VECTOR = ("tensor",)  # biases on a tensor-sharded dim
