"""Self-attention block: q/k/v projections (optional biases, optional per-head q/k norms), RoPE,
`jaxalign.ops.attention` with the implementation the context names, output projection, KV cache."""

from __future__ import annotations

import functools
from typing import Callable

import jax

from jaxalign.models.layers.context import LayerContext
from jaxalign.models.layers.linear import linear
from jaxalign.models.layers.norms import rms_norm
from jaxalign.models.layers.params import IN_OUT, OUT_IN, VECTOR, WIDE_VECTOR, ParamSpec
from jaxalign.models.layers.rope import apply_rope
from jaxalign.ops.attention import attention


def attention_params(hidden: int, heads: int, kv_heads: int, head_dim: int, *, qkv_bias: bool = False,
                     o_bias: bool = False, qk_norm: bool = False, qk_norm_init: str = "ones") -> dict[str, ParamSpec]:
    """The block's parameters: projections `[D, H*Dh]` etc. (input dim first), optional biases and
    per-head-dim q/k norm weights `[Dh]`."""
    q, kv = heads * head_dim, kv_heads * head_dim
    specs = {
        "q_proj": ParamSpec((hidden, q), IN_OUT),
        "k_proj": ParamSpec((hidden, kv), IN_OUT),
        "v_proj": ParamSpec((hidden, kv), IN_OUT),
        "o_proj": ParamSpec((q, hidden), OUT_IN),
    }
    if qkv_bias:
        specs.update(q_bias=ParamSpec((q,), WIDE_VECTOR, "zeros"), k_bias=ParamSpec((kv,), WIDE_VECTOR, "zeros"),
                     v_bias=ParamSpec((kv,), WIDE_VECTOR, "zeros"))
    if o_bias:
        specs["o_bias"] = ParamSpec((hidden,), VECTOR, "zeros")
    if qk_norm:
        specs.update(q_norm=ParamSpec((head_dim,), VECTOR, qk_norm_init), k_norm=ParamSpec((head_dim,), VECTOR, qk_norm_init))
    return specs


def self_attention(p: dict[str, jax.Array], h: jax.Array, ctx: LayerContext, *, heads: int, kv_heads: int,
                   head_dim: int, rope: str = "default", qk_norm: Callable | None = None,
                   sliding_window: int | None = None, logit_softcap: float | None = None, scale: float | None = None,
                   cache: tuple[jax.Array, jax.Array] | None = None, cache_index: jax.Array | None = None):
    """Attention of the normed hidden states `h` `[B,T,D]`; returns (`[B,T,D]`, (k, v)).

    qk_norm: `(x [B,T,heads,Dh], w [Dh]) -> x`, applied before RoPE (Qwen3, Gemma 3). With a cache
    (k, v) `[B,S,K,Dh]` the new keys/values are written at slot `cache_index` and (k, v) returned
    is the updated cache; otherwise the keys/values of this call.
    """
    B, T, _ = h.shape
    q = linear(h, p["q_proj"], p.get("q_bias"), custom_grad=ctx.custom_grad).reshape(B, T, heads, head_dim)
    k = linear(h, p["k_proj"], p.get("k_bias"), custom_grad=ctx.custom_grad).reshape(B, T, kv_heads, head_dim)
    v = linear(h, p["v_proj"], p.get("v_bias"), custom_grad=ctx.custom_grad).reshape(B, T, kv_heads, head_dim)
    if qk_norm is not None:
        q, k = qk_norm(q, p["q_norm"]), qk_norm(k, p["k_norm"])
    cos, sin = ctx.rope[rope]
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache is not None:
        k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, cache_index, 0, 0))
        v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, cache_index, 0, 0))
    out = attention(q, k.astype(q.dtype), v.astype(q.dtype), ctx.segment_ids, kv_segment_ids=ctx.kv_segment_ids,
                    q_positions=ctx.q_positions, kv_positions=ctx.kv_positions, impl=ctx.attention_impl,
                    sliding_window=sliding_window, logit_softcap=logit_softcap, scale=scale)
    out = linear(out.reshape(B, T, heads * head_dim), p["o_proj"], p.get("o_bias"), custom_grad=ctx.custom_grad)
    return out, (k, v)


def pre_norm_attention(c, kind: str, p: dict[str, jax.Array], x: jax.Array, ctx: LayerContext, *,
                       qk_norm: bool = False, cache=None, cache_index=None):
    """The attention half of a Llama-style pre-norm layer: `x + attention(rms_norm(x))`, with the
    window of layer `kind` and, for Qwen3-style layers, RMS q/k norms; returns (`[B,T,D]`, (k, v)).
    `c` is the model's config (heads, head_dim, eps, windows)."""
    norm = functools.partial(rms_norm, eps=c.rms_norm_eps)
    a, kv = self_attention(p, norm(x, p["attn_norm"]), ctx, heads=c.num_heads, kv_heads=c.num_kv_heads,
                           head_dim=c.head_dim, qk_norm=norm if qk_norm else None, sliding_window=c.window(kind),
                           cache=cache, cache_index=cache_index)
    return x + a, kv
