"""Mixtral: Mistral's attention (optional sliding window over every layer) with a sparse
mixture-of-experts MLP in every layer.

Pre-norm layers: RMSNorm -> grouped-query attention -> residual -> RMSNorm -> top-k of
`num_local_experts` SwiGLU experts (softmax router, the k weights renormalised) -> residual.
Checkpoints name the experts `block_sparse_moe.experts.{j}.w1/w2/w3` (gate/down/up), as
transformers' `save_pretrained` writes them; its fused layout loads too (`layers.moe.with_fused_layout`).
No GGUF mapping: llama.cpp stacks the experts into one `ffn_*_exps` tensor per layer, which its
one-to-one name table cannot split into HF's per-expert tensors.
"""

from __future__ import annotations

from jaxalign.models.checkpoint_names import ATTENTION_HF_NAMES, layer_rules
from jaxalign.models.config import ConfigError, check_activation, common_from_hf
from jaxalign.models.families import Family, register_family
from jaxalign.models.layers.attention import attention_params, pre_norm_attention
from jaxalign.models.layers.moe import MOE_AUX, MoEConfig, moe_mlp, moe_params, with_fused_layout
from jaxalign.models.layers.norms import rms_norm
from jaxalign.models.layers.params import VECTOR, ParamSpec

HF_NAMES = {
    **ATTENTION_HF_NAMES,
    "mlp_norm": "post_attention_layernorm.weight",
    "router": "block_sparse_moe.gate.weight", "expert_gate": "block_sparse_moe.experts.{j}.w1.weight",
    "expert_up": "block_sparse_moe.experts.{j}.w3.weight", "expert_down": "block_sparse_moe.experts.{j}.w2.weight",
}


def layer_params(c: MoEConfig) -> dict[str, ParamSpec]:
    return {
        "attn_norm": ParamSpec((c.hidden_size,), VECTOR, "ones"),
        **attention_params(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim),
        "mlp_norm": ParamSpec((c.hidden_size,), VECTOR, "ones"),
        **moe_params(c.hidden_size, c.moe_intermediate_size, c.num_experts),
    }


def layer(c: MoEConfig, kind: str, p, x, ctx, cache=None, cache_index=None):
    x, kv = pre_norm_attention(c, kind, p, x, ctx, cache=cache, cache_index=cache_index)
    y, stats = moe_mlp(p, rms_norm(x, p["mlp_norm"], c.rms_norm_eps), ctx, top_k=c.num_experts_per_tok, normalise=True)
    return x + y, kv, stats


def _from_hf(hf: dict, source: str) -> MoEConfig:
    check_activation(hf, source, ("silu",))
    common = common_from_hf(hf, source, "mixtral")
    jitter = float(hf.get("router_jitter_noise") or 0.0)
    if jitter:
        raise ConfigError(f"{source}: router_jitter_noise={jitter} is not supported (transformers scales the router "
                          "input by random noise in training; jaxalign routes deterministically); set it to 0.0")
    window = hf.get("sliding_window")
    return MoEConfig(
        **common, sliding_window=window, layer_types=("sliding_attention",) * common["num_layers"] if window else None,
        num_experts=int(hf.get("num_local_experts", hf.get("num_experts", 8))),
        num_experts_per_tok=int(hf.get("num_experts_per_tok", 2)),
        moe_intermediate_size=common["intermediate_size"], norm_topk_prob=True,
        router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),
    )


def _to_hf(c: MoEConfig) -> dict:
    if c.moe_intermediate_size != c.intermediate_size:
        raise ConfigError("mixtral experts have intermediate_size units (moe_intermediate_size must equal it)")
    if not c.norm_topk_prob:
        raise ConfigError("mixtral always renormalises the top-k router weights (norm_topk_prob=True)")
    if c.qkv_bias or c.o_bias or c.mlp_bias:
        raise ConfigError("mixtral has no attention or MLP biases")
    if c.layer_types and set(c.layer_types) != {"sliding_attention"}:
        raise ConfigError("mixtral slides its window over every layer or none")
    return {"hidden_act": "silu", "num_local_experts": c.num_experts, "num_experts_per_tok": c.num_experts_per_tok,
            "sliding_window": c.sliding_window, "router_aux_loss_coef": c.router_aux_loss_coef,
            "router_jitter_noise": 0.0, "output_router_logits": False}


register_family(Family(
    model_type="mixtral",
    causal_lm="MixtralForCausalLM",
    sequence_classification="MixtralForSequenceClassification",
    config_from_hf=_from_hf,
    config_to_hf=_to_hf,
    layer_params=layer_params,
    layer=layer,
    hf_layer_names=lambda c: with_fused_layout(c, layer_rules(c, HF_NAMES)),
    **MOE_AUX,
))
