"""Qwen3 (dense): the Qwen2 layer with a per-head RMSNorm on q and k before RoPE.

Pre-norm layers: RMSNorm -> grouped-query attention (q/k normed over the head dim, then RoPE) ->
residual -> RMSNorm -> SwiGLU MLP -> residual. Differences from Qwen2 in config.json: `head_dim`
is explicit (HF's default is 128, not hidden / heads), q/k/v/o are biased together only with
`attention_bias`, and the sliding window follows Qwen2's rule (`use_sliding_window`,
`max_window_layers`, or explicit `layer_types`).
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxalign.models.checkpoint_names import layer_rules
from jaxalign.models.config import ConfigError, ModelConfig, check_activation, common_from_hf
from jaxalign.models.families import Family, GGUFSpec, register_family
from jaxalign.models.families.llama import HF_NAMES
from jaxalign.models.families.llama import qwen_sliding_from_hf, qwen_sliding_to_hf
from jaxalign.models.layers.attention import attention_params, pre_norm_attention
from jaxalign.models.layers.mlp import gated_mlp, mlp_params
from jaxalign.models.layers.norms import rms_norm
from jaxalign.models.layers.params import VECTOR, ParamSpec

DEFAULT_HEAD_DIM = 128  # Qwen3Config's default when config.json has no head_dim


def layer_params(c: ModelConfig) -> dict[str, ParamSpec]:
    return {
        "attn_norm": ParamSpec((c.hidden_size,), VECTOR, "ones"),
        **attention_params(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, qkv_bias=c.qkv_bias,
                           o_bias=c.o_bias, qk_norm=True),
        "mlp_norm": ParamSpec((c.hidden_size,), VECTOR, "ones"),
        **mlp_params(c.hidden_size, c.intermediate_size),
    }


def layer(c: ModelConfig, kind: str, p, x, ctx, cache=None, cache_index=None):
    x, kv = pre_norm_attention(c, kind, p, x, ctx, qk_norm=True, cache=cache, cache_index=cache_index)
    x = x + gated_mlp(p, rms_norm(x, p["mlp_norm"], c.rms_norm_eps), ctx, "silu")
    return x, kv, jnp.zeros((), jnp.float32)


def config_from_hf(hf: dict, source: str) -> ModelConfig:
    check_activation(hf, source, ("silu",))
    common = common_from_hf(hf, source, "qwen3")
    common["head_dim"] = int(hf.get("head_dim") or DEFAULT_HEAD_DIM)
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(**common, qkv_bias=bias, o_bias=bias, **qwen_sliding_from_hf(hf, common["num_layers"], source))


def config_to_hf(c: ModelConfig) -> dict:
    if c.qkv_bias != c.o_bias or c.mlp_bias:
        raise ConfigError("qwen3 biases q, k, v and o together (attention_bias) and never the MLP")
    return {"hidden_act": "silu", "attention_bias": c.qkv_bias, **qwen_sliding_to_hf(c)}


register_family(Family(
    model_type="qwen3",
    causal_lm="Qwen3ForCausalLM",
    sequence_classification="Qwen3ForSequenceClassification",
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    layer_params=layer_params,
    layer=layer,
    hf_layer_names=lambda c: layer_rules(c, HF_NAMES),
    # llama.cpp `qwen3`: NeoX rotary (rows not permuted), no q/k/v biases, per-head q/k norms.
    gguf=GGUFSpec("qwen3", permute_qk=False, qkv_bias="never",
                  extra_config=(("use_sliding_window", False), ("sliding_window", None)),
                  extra_tensors=(("blk.{i}.attn_q_norm.weight", "model.layers.{i}.self_attn.q_norm.weight"),
                                 ("blk.{i}.attn_k_norm.weight", "model.layers.{i}.self_attn.k_norm.weight"))),
))
