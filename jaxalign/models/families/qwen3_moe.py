"""Qwen3-MoE: Qwen3's attention (per-head RMSNorm of q and k before RoPE, optional q/k/v/o
biases) with a sparse mixture-of-experts MLP in every layer.

Pre-norm layers: RMSNorm -> attention -> residual -> RMSNorm -> top-k of `num_experts` SwiGLU
experts of `moe_intermediate_size` units (softmax router; the k weights renormalised only with
`norm_topk_prob`, then cast to the compute dtype as transformers does) -> residual. With
`use_sliding_window` every layer slides (transformers' Qwen3-MoE has no `max_window_layers`).
Configs whose `decoder_sparse_step` / `mlp_only_layers` make some layers dense are refused.
Checkpoints name the experts `mlp.experts.{j}.gate_proj/up_proj/down_proj`, as transformers'
`save_pretrained` writes them; its fused layout loads too (`layers.moe.with_fused_layout`).
No GGUF mapping: llama.cpp (`qwen3moe`) stacks the experts into one `ffn_*_exps` tensor per
layer, which its one-to-one name table cannot split into HF's per-expert tensors.
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
    "router": "mlp.gate.weight", "expert_gate": "mlp.experts.{j}.gate_proj.weight",
    "expert_up": "mlp.experts.{j}.up_proj.weight", "expert_down": "mlp.experts.{j}.down_proj.weight",
}


def layer_params(c: MoEConfig) -> dict[str, ParamSpec]:
    return {
        "attn_norm": ParamSpec((c.hidden_size,), VECTOR, "ones"),
        **attention_params(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, qkv_bias=c.qkv_bias,
                           o_bias=c.o_bias, qk_norm=True),
        "mlp_norm": ParamSpec((c.hidden_size,), VECTOR, "ones"),
        **moe_params(c.hidden_size, c.moe_intermediate_size, c.num_experts),
    }


def layer(c: MoEConfig, kind: str, p, x, ctx, cache=None, cache_index=None):
    x, kv = pre_norm_attention(c, kind, p, x, ctx, qk_norm=True, cache=cache, cache_index=cache_index)
    y, stats = moe_mlp(p, rms_norm(x, p["mlp_norm"], c.rms_norm_eps), ctx, top_k=c.num_experts_per_tok,
                       normalise=c.norm_topk_prob, weights_in_compute_dtype=True)
    return x + y, kv, stats


def _from_hf(hf: dict, source: str) -> MoEConfig:
    check_activation(hf, source, ("silu",))
    common = common_from_hf(hf, source, "qwen3_moe")
    L = common["num_layers"]
    step = int(hf.get("decoder_sparse_step", 1) or 1)
    only = list(hf.get("mlp_only_layers") or [])
    dense = [i for i in range(L) if i in only or (i + 1) % step]
    if dense:
        raise ConfigError(f"{source}: decoder_sparse_step={step} / mlp_only_layers={only} make layers {dense} dense MLPs; "
                          "jaxalign supports Qwen3-MoE with experts in every layer (decoder_sparse_step=1, "
                          "mlp_only_layers=[])")
    experts = hf.get("num_experts", hf.get("num_local_experts"))
    if experts is None:
        raise ConfigError(f"{source}: required field 'num_experts' (or 'num_local_experts') is missing")
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    bias = bool(hf.get("attention_bias", False))
    return MoEConfig(
        **common, qkv_bias=bias, o_bias=bias, sliding_window=window,
        layer_types=("sliding_attention",) * L if window else None,
        num_experts=int(experts), num_experts_per_tok=int(hf.get("num_experts_per_tok", 8)),
        moe_intermediate_size=int(hf.get("moe_intermediate_size", 768)),
        norm_topk_prob=bool(hf.get("norm_topk_prob", False)),
        router_aux_loss_coef=float(hf.get("router_aux_loss_coef", 0.001)),
    )


def _to_hf(c: MoEConfig) -> dict:
    if c.qkv_bias != c.o_bias or c.mlp_bias:
        raise ConfigError("qwen3_moe biases q, k, v and o together (attention_bias) and has no MLP bias")
    if c.layer_types and set(c.layer_types) != {"sliding_attention"}:
        raise ConfigError("qwen3_moe slides its window over every layer or none")
    return {"hidden_act": "silu", "attention_bias": c.qkv_bias, "num_experts": c.num_experts,
            "num_experts_per_tok": c.num_experts_per_tok, "moe_intermediate_size": c.moe_intermediate_size,
            "norm_topk_prob": c.norm_topk_prob, "router_aux_loss_coef": c.router_aux_loss_coef,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "output_router_logits": False,
            "use_sliding_window": bool(c.layer_types), "sliding_window": c.sliding_window}


register_family(Family(
    model_type="qwen3_moe",
    causal_lm="Qwen3MoeForCausalLM",
    sequence_classification="Qwen3MoeForSequenceClassification",
    config_from_hf=_from_hf,
    config_to_hf=_to_hf,
    layer_params=layer_params,
    layer=layer,
    hf_layer_names=lambda c: with_fused_layout(c, layer_rules(c, HF_NAMES)),
    **MOE_AUX,
))
