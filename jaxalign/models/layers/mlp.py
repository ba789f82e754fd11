"""Gated dense MLP `down(act(gate(h)) * up(h))`: SwiGLU (`silu`) and GeGLU (`gelu_pytorch_tanh`, `gelu`)."""

from __future__ import annotations

import functools

import jax

from jaxalign.models.layers.context import LayerContext
from jaxalign.models.layers.linear import linear
from jaxalign.models.layers.params import IN_OUT, OUT_IN, VECTOR, WIDE_VECTOR, ParamSpec

ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu_pytorch_tanh": functools.partial(jax.nn.gelu, approximate=True),
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
}


def mlp_params(hidden: int, intermediate: int, *, bias: bool = False) -> dict[str, ParamSpec]:
    specs = {
        "gate_proj": ParamSpec((hidden, intermediate), IN_OUT),
        "up_proj": ParamSpec((hidden, intermediate), IN_OUT),
        "down_proj": ParamSpec((intermediate, hidden), OUT_IN),
    }
    if bias:
        specs.update(gate_bias=ParamSpec((intermediate,), WIDE_VECTOR, "zeros"),
                     up_bias=ParamSpec((intermediate,), WIDE_VECTOR, "zeros"),
                     down_bias=ParamSpec((hidden,), VECTOR, "zeros"))
    return specs


def gated_mlp(p: dict[str, jax.Array], h: jax.Array, ctx: LayerContext, activation: str = "silu") -> jax.Array:
    """`[B,T,D] -> [B,T,D]`."""
    act = ACTIVATIONS[activation]
    gate = linear(h, p["gate_proj"], p.get("gate_bias"), custom_grad=ctx.custom_grad)
    up = linear(h, p["up_proj"], p.get("up_bias"), custom_grad=ctx.custom_grad)
    return linear(act(gate) * up, p["down_proj"], p.get("down_bias"), custom_grad=ctx.custom_grad)
