"""Llama 2/3, Mistral (with or without a sliding window), Qwen2/2.5 and SmolLM2.

Pre-norm layers: RMSNorm -> grouped-query attention (RoPE: default, linear or llama3 scaling) ->
residual -> RMSNorm -> SwiGLU MLP -> residual. The three HF families differ only in config.json:
Qwen2 always biases q/k/v; Llama may bias q/k/v/o together (`attention_bias`) and the MLP
(`mlp_bias`); Mistral slides a window over every layer; Qwen2 over the layers from
`max_window_layers` on, when `use_sliding_window` is set.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp

from jaxalign.models.checkpoint_names import ATTENTION_HF_NAMES, GATED_MLP_HF_NAMES, layer_rules
from jaxalign.models.config import ConfigError, ModelConfig, check_activation, common_from_hf, layer_types_from_hf
from jaxalign.models.families import Family, GGUFSpec, register_family
from jaxalign.models.layers.attention import attention_params, pre_norm_attention
from jaxalign.models.layers.mlp import gated_mlp, mlp_params
from jaxalign.models.layers.norms import rms_norm
from jaxalign.models.layers.params import VECTOR, ParamSpec

HF_NAMES = {**ATTENTION_HF_NAMES, "mlp_norm": "post_attention_layernorm.weight", **GATED_MLP_HF_NAMES}


def layer_params(c: ModelConfig) -> dict[str, ParamSpec]:
    return {
        "attn_norm": ParamSpec((c.hidden_size,), VECTOR, "ones"),
        **attention_params(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, qkv_bias=c.qkv_bias, o_bias=c.o_bias),
        "mlp_norm": ParamSpec((c.hidden_size,), VECTOR, "ones"),
        **mlp_params(c.hidden_size, c.intermediate_size, bias=c.mlp_bias),
    }


def layer(c: ModelConfig, kind: str, p, x, ctx, cache=None, cache_index=None):
    x, kv = pre_norm_attention(c, kind, p, x, ctx, cache=cache, cache_index=cache_index)
    x = x + gated_mlp(p, rms_norm(x, p["mlp_norm"], c.rms_norm_eps), ctx, "silu")
    return x, kv, jnp.zeros((), jnp.float32)


def qwen_sliding_from_hf(hf: dict, num_layers: int, source: str) -> dict:
    """Qwen2 / Qwen3 sliding layers as `ModelConfig` fields: only with `use_sliding_window`, on the
    layers from `max_window_layers` on unless `layer_types` lists them (HF ignores `sliding_window`
    otherwise)."""
    window = hf.get("sliding_window")
    types = None
    if hf.get("use_sliding_window") and window:
        first = int(hf.get("max_window_layers", num_layers))
        default = tuple("sliding_attention" if i >= first else "full_attention" for i in range(num_layers))
        types = layer_types_from_hf(hf, num_layers, window, source, default)
    return dict(sliding_window=window if types else None, layer_types=types)


def qwen_sliding_to_hf(c: ModelConfig) -> dict:
    """The config.json fields `qwen_sliding_from_hf` reads back into the same layers."""
    if c.layer_types:
        return dict(use_sliding_window=True, sliding_window=c.sliding_window, layer_types=list(c.layer_types),
                    max_window_layers=c.layer_types.index("sliding_attention"))
    return dict(use_sliding_window=False, sliding_window=None)


def _from_hf(model_type: str, hf: dict, source: str) -> ModelConfig:
    check_activation(hf, source, ("silu",))
    common = common_from_hf(hf, source, model_type)
    L = common["num_layers"]
    window = hf.get("sliding_window")
    if model_type == "qwen2":
        return ModelConfig(**common, qkv_bias=True, **qwen_sliding_from_hf(hf, L, source))
    window = window if model_type == "mistral" else None  # transformers' Llama has no window (ignores the field)
    types = ("sliding_attention",) * L if window else None
    bias = bool(hf.get("attention_bias", False))
    return ModelConfig(**common, qkv_bias=bias, o_bias=bias, mlp_bias=bool(hf.get("mlp_bias", False)),
                       sliding_window=window, layer_types=types)


def _to_hf(c: ModelConfig) -> dict:
    out = {"hidden_act": "silu"}
    if c.model_type == "qwen2":
        if c.o_bias or c.mlp_bias:
            raise ConfigError("qwen2 has no o_proj/mlp bias option")
        return {**out, **qwen_sliding_to_hf(c)}
    if c.qkv_bias != c.o_bias:
        raise ConfigError(f"{c.model_type} biases q, k, v and o together (attention_bias)")
    out.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
    if c.model_type == "mistral":
        if c.layer_types and set(c.layer_types) != {"sliding_attention"}:
            raise ConfigError("mistral slides its window over every layer or none")
        out["sliding_window"] = c.sliding_window
    elif c.layer_types:
        raise ConfigError("llama has no sliding-window layers")
    return out


def _family(model_type: str, prefix: str, gguf: GGUFSpec | None) -> Family:
    return Family(
        model_type=model_type,
        causal_lm=f"{prefix}ForCausalLM",
        sequence_classification=f"{prefix}ForSequenceClassification",
        config_from_hf=functools.partial(_from_hf, model_type),
        config_to_hf=_to_hf,
        layer_params=layer_params,
        layer=layer,
        hf_layer_names=lambda c: layer_rules(c, HF_NAMES),
        gguf=gguf,
    )


register_family(_family("llama", "Llama", GGUFSpec("llama", permute_qk=True, qkv_bias="optional",
                                                   extra_config=(("mlp_bias", False), ("pretraining_tp", 1)))))
register_family(_family("mistral", "Mistral", None))
register_family(_family("qwen2", "Qwen2", GGUFSpec("qwen2", permute_qk=False, qkv_bias="always",
                                                   extra_config=(("use_sliding_window", False), ("sliding_window", None)))))
