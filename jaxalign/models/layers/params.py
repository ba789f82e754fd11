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


# The sharding plan: partition names per parameter kind, so every family shards alike. A layer's
# parameters get a leading replicated layer axis; nothing else is replicated unless declared here.
IN_OUT = ("fsdp", "tensor")  # [D, F]-like projections that widen (and the LM head [D, V]): output over `tensor`
OUT_IN = ("tensor", "fsdp")  # [F, D]-like projections that narrow: input over `tensor`
VECTOR = (None,)  # norms and biases on the hidden dim (replicated: D floats)
WIDE_VECTOR = ("tensor",)  # biases on a tensor-sharded dim
EMBEDDING = ("tensor", "fsdp")  # [V, D]: vocab over `tensor`, as the vocab-parallel head expects
SCALAR_HEAD = ("fsdp", None)  # [D, 1] reward / difference head
ROUTER = ("fsdp", None)  # [D, E] mixture-of-experts router
EXPERT_IN_OUT = ("fsdp", None, "tensor")  # [E, D, F] expert stacks: experts over `fsdp`, output over `tensor`
EXPERT_OUT_IN = ("fsdp", "tensor", None)  # [E, F, D]: experts over `fsdp`, input over `tensor`
SHARDING_PLAN = {"in_out": IN_OUT, "out_in": OUT_IN, "vector": VECTOR, "wide_vector": WIDE_VECTOR,
                 "embedding": EMBEDDING, "scalar_head": SCALAR_HEAD, "router": ROUTER,
                 "expert_in_out": EXPERT_IN_OUT, "expert_out_in": EXPERT_OUT_IN}
