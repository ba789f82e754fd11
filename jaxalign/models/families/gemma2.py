"""Gemma 2: alternating sliding-window / global layers with soft-capped attention logits.

Each layer: Gemma norm -> attention -> Gemma norm -> residual -> Gemma norm -> GeGLU MLP ->
Gemma norm -> residual (four (1 + w) RMS norms in float32, identity weight 0). Attention scores are
scaled by `query_pre_attn_scalar ** -0.5` (not `head_dim ** -0.5`) and soft-capped
(`attn_logit_softcapping`); the final logits too (`final_logit_softcapping`, applied by the decoder
and the log-prob ops). Embeddings are multiplied by sqrt(hidden) in the compute dtype. HF's default
`layer_types` slide the window over the even layers (0, 2, ...).

`gemma_layer` is shared with Gemma 3, which adds per-head q/k norms and a RoPE table per layer kind.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax.numpy as jnp

from jaxalign.models.checkpoint_names import ATTENTION_HF_NAMES, GATED_MLP_HF_NAMES, layer_rules
from jaxalign.models.config import ConfigError, ModelConfig, check_activation, common_from_hf, layer_types_from_hf
from jaxalign.models.families import Family, register_family
from jaxalign.models.layers.attention import attention_params, self_attention
from jaxalign.models.layers.mlp import gated_mlp, mlp_params
from jaxalign.models.layers.norms import rms_norm_plus_one
from jaxalign.models.layers.params import VECTOR, ParamSpec

ACTIVATIONS = ("gelu_pytorch_tanh", "gelu")

HF_NAMES = {
    **ATTENTION_HF_NAMES,
    "post_attn_norm": "post_attention_layernorm.weight",
    "mlp_norm": "pre_feedforward_layernorm.weight",
    **GATED_MLP_HF_NAMES,
    "post_mlp_norm": "post_feedforward_layernorm.weight",
}


@dataclasses.dataclass(frozen=True)
class GemmaConfig(ModelConfig):
    """`ModelConfig` plus Gemma's attention scale (`query_pre_attn_scalar`), attention soft-cap and
    MLP activation."""

    query_pre_attn_scalar: int | float = 256
    attn_logit_softcap: float | None = None
    activation: str = "gelu_pytorch_tanh"

    @property
    def attention_scale(self) -> float:
        return float(self.query_pre_attn_scalar) ** -0.5


def layer_params(c: GemmaConfig, *, qk_norm: bool = False) -> dict[str, ParamSpec]:
    norm = ParamSpec((c.hidden_size,), VECTOR, "zeros")
    return {
        "attn_norm": norm,
        **attention_params(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, qkv_bias=c.qkv_bias,
                           o_bias=c.o_bias, qk_norm=qk_norm, qk_norm_init="zeros"),
        "post_attn_norm": norm,
        "mlp_norm": norm,
        **mlp_params(c.hidden_size, c.intermediate_size),
        "post_mlp_norm": norm,
    }


def gemma_layer(c: GemmaConfig, kind: str, p, x, ctx, cache=None, cache_index=None, *, rope: str = "default",
                qk_norm: Callable | None = None):
    """One Gemma 2/3 layer `[B,T,D] -> [B,T,D]`; `rope` names the layer's rotary table, `qk_norm`
    the per-head q/k norm (Gemma 3)."""
    norm = functools.partial(rms_norm_plus_one, eps=c.rms_norm_eps)
    a, kv = self_attention(p, norm(x, p["attn_norm"]), ctx, heads=c.num_heads, kv_heads=c.num_kv_heads,
                           head_dim=c.head_dim, rope=rope, qk_norm=qk_norm, sliding_window=c.window(kind),
                           logit_softcap=c.attn_logit_softcap, scale=c.attention_scale, cache=cache,
                           cache_index=cache_index)
    x = x + norm(a, p["post_attn_norm"])
    m = gated_mlp(p, norm(x, p["mlp_norm"]), ctx, c.activation)
    x = x + norm(m, p["post_mlp_norm"])
    return x, kv, jnp.zeros((), jnp.float32)


def gemma_common_from_hf(hf: dict, source: str, model_type: str, default_pattern: int) -> dict:
    """The fields Gemma 2 and 3 read alike, as `GemmaConfig` kwargs; a missing key takes HF's class
    default (window 4096, scalar 256, tied embeddings). `default_pattern`: HF's default
    `layer_types` make every `default_pattern`-th layer global, the others sliding."""
    act = check_activation(hf, source, ACTIVATIONS, key="hidden_activation")
    if hf.get("use_bidirectional_attention"):
        raise ConfigError(f"{source}: use_bidirectional_attention=true (an encoder) is not supported; "
                          "jaxalign's decoders are causal")
    common = common_from_hf(hf, source, model_type)
    common["tie_word_embeddings"] = bool(hf.get("tie_word_embeddings", True))
    L = common["num_layers"]
    window = hf.get("sliding_window", 4096)
    default = tuple("sliding_attention" if (i + 1) % default_pattern else "full_attention" for i in range(L))
    types = layer_types_from_hf(hf, L, window, source, default)
    bias = bool(hf.get("attention_bias", False))
    return dict(common, qkv_bias=bias, o_bias=bias, sliding_window=window if types else None, layer_types=types,
                query_pre_attn_scalar=_positive(hf, "query_pre_attn_scalar", source, 256), activation=act)


def softcap_from_hf(hf: dict, key: str, source: str, default: float | None) -> float | None:
    """A soft-cap value (None: no capping); `default` when the key is absent (HF's class default)."""
    return None if hf.get(key, default) is None else float(_positive(hf, key, source, default))


def _positive(hf: dict, key: str, source: str, default):
    value = hf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{source}: {key}={value!r} must be a positive number")
    return value


def gemma_common_to_hf(c: GemmaConfig) -> dict:
    if c.qkv_bias != c.o_bias or c.mlp_bias:
        raise ConfigError(f"{c.model_type} biases q, k, v and o together (attention_bias) and never the MLP")
    return {"hidden_activation": c.activation, "attention_bias": c.qkv_bias,
            "query_pre_attn_scalar": c.query_pre_attn_scalar, "sliding_window": c.sliding_window,
            "layer_types": list(c.layer_kinds), "final_logit_softcapping": c.final_logit_softcap,
            "attn_logit_softcapping": c.attn_logit_softcap, "use_bidirectional_attention": False}


def _from_hf(hf: dict, source: str) -> GemmaConfig:
    return GemmaConfig(**gemma_common_from_hf(hf, source, "gemma2", default_pattern=2),
                       final_logit_softcap=softcap_from_hf(hf, "final_logit_softcapping", source, 30.0),
                       attn_logit_softcap=softcap_from_hf(hf, "attn_logit_softcapping", source, 50.0))


def embed_scale(c: ModelConfig) -> float:
    """HF multiplies the embeddings by sqrt(hidden) cast to the embedding dtype."""
    return c.hidden_size ** 0.5


register_family(Family(
    model_type="gemma2",
    causal_lm="Gemma2ForCausalLM",
    sequence_classification="Gemma2ForSequenceClassification",
    config_from_hf=_from_hf,
    config_to_hf=gemma_common_to_hf,
    layer_params=layer_params,
    layer=gemma_layer,
    hf_layer_names=lambda c: layer_rules(c, HF_NAMES),
    final_norm=rms_norm_plus_one,
    embed_scale=embed_scale,
))
