"""Sparse mixture-of-experts MLP (Mixtral, Qwen3-MoE): a softmax router over E SwiGLU experts, the
top-k of them mixed per token, and the router's load-balancing statistics.

Routing is HF's: `probs = softmax(float32(h @ router))`, the top-k experts by probability, their
probabilities (renormalised to sum to 1 when `normalise`) as mixing weights.

Compute formulation: every expert runs on every token (`einsum` over the expert axis) and a
`[B,T,E]` combine matrix that is zero off the chosen experts mixes them. It is exact (an unchosen
expert is multiplied by 0), has static shapes (no sort, gather or capacity dropping) and shards
like any einsum: the expert axis of the weights over `fsdp` (the `expert` role below), their
hidden/intermediate dims as dense MLPs do. It costs E/k times the expert FLOPs of a dispatching
kernel; `benchmarks/moe_dispatch.py` measures it against a grouped dispatch (tokens sorted by
expert, `jax.lax.ragged_dot`): on XLA:CPU the grouped form was 18x slower at the tests' shape and
still 1.25x slower at B4 T128 D256 F512 E8 k2 (forward + backward), so the einsum stays until an
accelerator run needs the k/E FLOPs. LoRA on the experts (`model.lora.targets`) is one adapter
pair per expert, its branch added in `expert_linear` as the rank-r product (no `[E,D,F]` update).

The auxiliary loss is HF's `load_balancing_loss_func` (Switch Transformer eqs. 4-6) over all
layers: `E * sum_e (count_e / N) * (prob_e / N)` where `count_e` sums the top-k assignments of
expert e and `prob_e` its router probability over the N non-padding tokens of *every* layer
together. It is not a sum of per-layer losses, so each layer returns its statistics
(`router_stats`, a `[2E+1]` vector: counts, probability sums, token count), the decoder sums them
over layers and `load_balancing_loss` turns the sum into the loss.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxalign.models.checkpoint_names import LAYER_PREFIX, TensorRule
from jaxalign.models.config import ConfigError, ModelConfig
from jaxalign.models.layers.context import LayerContext
from jaxalign.models.layers.linear import linear
from jaxalign.models.layers.lora import LoraWeight, lora_delta
from jaxalign.models.layers.mlp import ACTIVATIONS
# Partition names (`params.SHARDING_PLAN`): the experts split over `fsdp` (expert parallelism on
# the data-parallel devices), each expert's widening dim over `tensor` as a dense MLP's.
from jaxalign.models.layers.params import EXPERT_IN_OUT, EXPERT_OUT_IN, ROUTER, ParamSpec


@dataclasses.dataclass(frozen=True)
class MoEConfig(ModelConfig):
    """`ModelConfig` plus the MoE fields: `num_experts` E, `num_experts_per_tok` k,
    `moe_intermediate_size` F of each expert (Mixtral: `intermediate_size`), `norm_topk_prob`
    (renormalise the k weights), `router_aux_loss_coef` (kept for config.json; the training loss
    weight is `loss.router_aux_weight`)."""

    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    router_aux_loss_coef: float = 0.001

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.num_experts_per_tok <= self.num_experts:
            raise ConfigError(f"num_experts_per_tok={self.num_experts_per_tok} must be in 1..num_experts={self.num_experts}")
        if self.moe_intermediate_size <= 0:
            raise ConfigError(f"moe_intermediate_size={self.moe_intermediate_size} must be positive")


def moe_params(hidden: int, intermediate: int, num_experts: int) -> dict[str, ParamSpec]:
    """Router `[D, E]`, expert gate/up `[E, D, F]` and down `[E, F, D]` (input dim before output)."""
    return {
        "router": ParamSpec((hidden, num_experts), ROUTER),
        "expert_gate": ParamSpec((num_experts, hidden, intermediate), EXPERT_IN_OUT),
        "expert_up": ParamSpec((num_experts, hidden, intermediate), EXPERT_IN_OUT),
        "expert_down": ParamSpec((num_experts, intermediate, hidden), EXPERT_OUT_IN),
    }


def route(logits: jax.Array, top_k: int, normalise: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """HF top-k softmax routing of router logits `[..., E]`: returns (probabilities `[..., E]`
    float32, mixing weights `[..., k]` float32, expert indices `[..., k]` int32), best first."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, index = jax.lax.top_k(probs, top_k)
    if normalise:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return probs, weights, index.astype(jnp.int32)


def router_stats(probs: jax.Array, index: jax.Array, mask: jax.Array) -> jax.Array:
    """One layer's load-balancing statistics `[2E+1]` float32: top-k assignment counts per expert,
    router-probability sums per expert, and the token count, over the tokens where `mask` `[B,T]`
    is set. probs `[B,T,E]`, index `[B,T,k]`. Counts carry no gradient (as in HF)."""
    E = probs.shape[-1]
    m = mask.astype(jnp.float32)
    counts = jnp.einsum("btke,bt->e", jax.nn.one_hot(index, E, dtype=jnp.float32), m)
    prob_sums = jnp.einsum("bte,bt->e", probs, m)
    return jnp.concatenate([jax.lax.stop_gradient(counts), prob_sums, jnp.sum(m)[None]])


def zero_router_stats(num_experts: int) -> jax.Array:
    return jnp.zeros((2 * num_experts + 1,), jnp.float32)


def load_balancing_loss(stats: jax.Array) -> jax.Array:
    """HF `load_balancing_loss_func` from `router_stats` summed over the L MoE layers:
    `E * sum_e count_e / (L N) * prob_e / (L N)` (the summed token count is L N); 0 when no
    token counted."""
    E = (stats.shape[0] - 1) // 2
    rows = jnp.maximum(stats[-1], 1.0)
    return E * jnp.sum((stats[:E] / rows) * (stats[E:2 * E] / rows))


def expert_linear(x: jax.Array, w) -> jax.Array:
    """Every expert's projection in x's dtype: x `[B,T,D]` (each expert reads it) or `[B,T,E,D]`
    (each its own), w `[E,D,F]` -> `[B,T,E,F]`; plus each expert's LoRA branch when w is a
    `LoraWeight` (its rank-r product, never an `[E,D,F]` update)."""
    adapter = None
    if isinstance(w, LoraWeight):
        adapter, w = w, w.w
    spec = "btd,edf->btef" if x.ndim == 3 else "bted,edf->btef"
    y = jnp.einsum(spec, x, w.astype(x.dtype))
    return y if adapter is None else y + lora_delta(x, adapter)


def moe_mlp(p: dict[str, jax.Array], h: jax.Array, ctx: LayerContext, *, top_k: int, normalise: bool,
            activation: str = "silu", weights_in_compute_dtype: bool = False) -> tuple[jax.Array, jax.Array]:
    """Mixture of the top-k experts of normed hidden states `h` `[B,T,D]`: returns (`[B,T,D]`,
    this layer's `router_stats` over the non-padding tokens of `ctx.segment_ids`).

    weights_in_compute_dtype: cast the mixing weights to h's dtype before mixing (Qwen3-MoE);
    otherwise the experts' outputs are mixed in float32 and cast back (Mixtral).
    """
    act = ACTIVATIONS[activation]
    logits = linear(h, p["router"], custom_grad=ctx.custom_grad)
    probs, weights, index = route(logits, top_k, normalise)
    E = probs.shape[-1]
    combine = jnp.einsum("btk,btke->bte", weights, jax.nn.one_hot(index, E, dtype=weights.dtype))
    gate = expert_linear(h, p["expert_gate"])
    up = expert_linear(h, p["expert_up"])
    y = expert_linear(act(gate) * up, p["expert_down"])
    if weights_in_compute_dtype:
        out = jnp.einsum("bted,bte->btd", y, combine.astype(h.dtype))
    else:
        out = jnp.einsum("bted,bte->btd", y.astype(jnp.float32), combine).astype(h.dtype)
    return out, router_stats(probs, index, ctx.segment_ids != 0)


def with_fused_layout(config: MoEConfig, rules: list[TensorRule]) -> list[TensorRule]:
    """`rules` (from `layer_rules`; the experts per tensor, `{j}`, as transformers' `save_pretrained`
    writes them) with transformers' fused in-memory layout as `alt` for the MoE parameters:
    `mlp.gate.weight` `[E, D]`, `mlp.experts.gate_up_proj` `[E, 2F, D]` (gate rows first) and
    `mlp.experts.down_proj` `[E, D, F]`, which `save_pretrained(save_original_format=False)` writes."""
    F = config.moe_intermediate_size
    experts = LAYER_PREFIX + "mlp.experts."
    fused = {
        "layers.router": TensorRule("layers.router", LAYER_PREFIX + "mlp.gate.weight", transpose=True),
        "layers.expert_gate": TensorRule("layers.expert_gate", experts + "gate_up_proj", True, (0, F)),
        "layers.expert_up": TensorRule("layers.expert_up", experts + "gate_up_proj", True, (F, 2 * F)),
        "layers.expert_down": TensorRule("layers.expert_down", experts + "down_proj", transpose=True),
    }
    out = []
    for rule in rules:
        alt = fused.get(rule.param)
        out.append(rule if alt is None or alt.hf == rule.hf else dataclasses.replace(rule, alt=alt))
    return out


# What a MoE family passes to `Family`: each layer returns `router_stats`, summed over layers.
MOE_AUX = dict(aux_zeros=lambda config: zero_router_stats(config.num_experts),
               aux_loss=lambda config, stats: load_balancing_loss(stats))
