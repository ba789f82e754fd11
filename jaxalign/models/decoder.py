"""Llama-family decoder as a Flax NNX module with layer-stacked parameters.

All decoder layers share one set of stacked parameters `[num_layers, ...]` and run
under `jax.lax.scan`, so a 30-layer model compiles like a 1-layer one and pruning
a layer is an index deletion. Parameters carry `out_sharding` metadata for the
mesh axes `fsdp` and `tensor`; `jaxalign.parallel` turns them into shardings.

Shapes: B batch, T query length, S key length (T, or the KV-cache size),
D hidden, H heads, K kv heads, Dh head dim, F MLP width, V vocab, L layers.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.models.config import ModelConfig
from jaxalign.models.rope import apply_rope, inverse_frequencies, rope_cos_sin

# Remat policies for the per-layer scan body, selected by name from configs.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "save_all": jax.checkpoint_policies.everything_saveable,
}

# name -> (shape builder, sharding names, initialiser kind); shapes exclude the layer axis.
_LAYER_PARAMS = {
    "attn_norm": (lambda c: (c.hidden_size,), (None,), "ones"),
    "q_proj": (lambda c: (c.hidden_size, c.num_heads * c.head_dim), ("fsdp", "tensor"), "normal"),
    "k_proj": (lambda c: (c.hidden_size, c.num_kv_heads * c.head_dim), ("fsdp", "tensor"), "normal"),
    "v_proj": (lambda c: (c.hidden_size, c.num_kv_heads * c.head_dim), ("fsdp", "tensor"), "normal"),
    "o_proj": (lambda c: (c.num_heads * c.head_dim, c.hidden_size), ("tensor", "fsdp"), "normal"),
    "mlp_norm": (lambda c: (c.hidden_size,), (None,), "ones"),
    "gate_proj": (lambda c: (c.hidden_size, c.intermediate_size), ("fsdp", "tensor"), "normal"),
    "up_proj": (lambda c: (c.hidden_size, c.intermediate_size), ("fsdp", "tensor"), "normal"),
    "down_proj": (lambda c: (c.intermediate_size, c.hidden_size), ("tensor", "fsdp"), "normal"),
}
_BIAS_PARAMS = {
    "q_bias": ("qkv_bias", lambda c: (c.num_heads * c.head_dim,), ("tensor",)),
    "k_bias": ("qkv_bias", lambda c: (c.num_kv_heads * c.head_dim,), ("tensor",)),
    "v_bias": ("qkv_bias", lambda c: (c.num_kv_heads * c.head_dim,), ("tensor",)),
    "o_bias": ("o_bias", lambda c: (c.hidden_size,), (None,)),
    "gate_bias": ("mlp_bias", lambda c: (c.intermediate_size,), ("tensor",)),
    "up_bias": ("mlp_bias", lambda c: (c.intermediate_size,), ("tensor",)),
    "down_bias": ("mlp_bias", lambda c: (c.hidden_size,), (None,)),
}


def _param(rngs: nnx.Rngs, shape, names, kind: str, dtype) -> nnx.Param:
    if kind == "normal":
        value = 0.02 * jax.random.normal(rngs.params(), shape, jnp.float32)
    elif kind == "ones":
        value = jnp.ones(shape, jnp.float32)
    else:
        value = jnp.zeros(shape, jnp.float32)
    return nnx.Param(value.astype(dtype), out_sharding=tuple(names), eager_sharding=False)


class DecoderLayers(nnx.Module):
    """Stacked parameters of all decoder layers (leading axis L)."""

    def __init__(self, config: ModelConfig, *, param_dtype, rngs: nnx.Rngs):
        L = config.num_layers
        for name, (shape, names, kind) in _LAYER_PARAMS.items():
            setattr(self, name, _param(rngs, (L, *shape(config)), (None, *names), kind, param_dtype))
        for name, (flag, shape, names) in _BIAS_PARAMS.items():
            value = _param(rngs, (L, *shape(config)), (None, *names), "zeros", param_dtype) if getattr(config, flag) else None
            setattr(self, name, value)

    def arrays(self) -> dict[str, jax.Array]:
        names = list(_LAYER_PARAMS) + [n for n in _BIAS_PARAMS if getattr(self, n) is not None]
        return {n: getattr(self, n)[...] for n in names}


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """HF RMSNorm: normalise in float32, cast back, then scale."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * xf.astype(x.dtype)


@jax.custom_vjp
def _matmul(x, w):
    """``x[B,T,D] @ w[D,F]`` whose weight gradient is ordered so that XLA:CPU transposes the smaller operand.

    Autodiff computes ``dw`` as ``(g^T x)^T``, and XLA:CPU's dot wants the contracting dim of its
    left operand minor, so it copies ``g`` (``[B*T, F]``) transposed, fused with whatever produced
    ``g``: for the MLP's gate/up projections a strided loop over ``[B*T, 1376]`` that cost about
    15% of a train step on a 2-core CPU (benchmarks/train_step.py). Here ``dw`` is ``x^T g`` when
    ``D <= F`` (the transposed copy is of ``x``) and ``(g^T x)^T`` otherwise. Same values.
    """
    return jnp.einsum("btd,df->btf", x, w)


def _matmul_fwd(x, w):
    return _matmul(x, w), (x, w)


def _matmul_bwd(res, g):
    x, w = res
    dx = jnp.einsum("btf,df->btd", g, w)
    if x.shape[-1] <= g.shape[-1]:
        dw = jnp.einsum("btd,btf->df", x, g)
    else:
        dw = jnp.einsum("btf,btd->fd", g, x).T
    return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def _linear(x, w, b=None, custom_grad: bool = True):
    w = w.astype(x.dtype)
    # custom_vjp is opaque to checkpoint policies: remat="dots" must see the plain dot_general.
    y = _matmul(x, w) if custom_grad else jnp.einsum("btd,df->btf", x, w)
    return y if b is None else y + b.astype(x.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """``jax.nn.dot_product_attention(q, k, v, mask=mask)`` (its XLA path: same scale, masking
    value, float32 softmax and dtypes), with the G query heads of each KV head stacked into one
    ``[G*T, Dh] x [Dh, S]`` matmul per (batch, KV head) instead of a dot vmapped over G (about 1.5x
    faster forward and backward on CPU).

    q `[B,T,H,Dh]`; k, v `[B,S,K,Dh]` (H a multiple of K); mask bool `[B or 1, 1, T, S]`.
    """
    B, T, H, Dh = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    qg = q.reshape(B, T, K, G, Dh).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, Dh)
    logits = jnp.einsum("bkqd,bskd->bkqs", qg, k, preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
    logits = logits * jnp.asarray(1.0 / np.sqrt(Dh), logits.dtype)
    mb = mask.shape[0]
    m = jnp.broadcast_to(mask.reshape(mb, 1, 1, T, S), (mb, 1, G, T, S)).reshape(mb, 1, G * T, S)
    large_negative = -0.7 * min(float(jnp.finfo(logits.dtype).max), float(jnp.finfo(jnp.float32).max))
    logits = jnp.where(m, logits, jnp.asarray(large_negative, logits.dtype))
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(k.dtype)
    out = jnp.einsum("bkqs,bskd->bkqd", probs, v)
    return out.reshape(B, K, G, T, Dh).transpose(0, 3, 1, 2, 4).reshape(B, T, H, Dh)


def decoder_layer(config: ModelConfig, p: dict[str, jax.Array], x, cos, sin, mask, cache_kv=None, cache_index=None,
                  *, custom_grad: bool = True):
    """One pre-norm decoder layer.

    x `[B,T,D]`; cos/sin `[B,T,Dh]`; mask bool `[B,1,T,S]`; cache_kv optional
    (k, v) `[B,S,K,Dh]` written at `cache_index`. Returns (x, (k, v)) where k, v
    are the keys/values attended to (the updated cache when one is given).
    `custom_grad=False` differentiates the projections with plain autodiff (see `_matmul`).
    """
    B, T, _ = x.shape
    H, K, Dh = config.num_heads, config.num_kv_heads, config.head_dim
    lin = functools.partial(_linear, custom_grad=custom_grad)
    h = rms_norm(x, p["attn_norm"], config.rms_norm_eps)
    q = lin(h, p["q_proj"], p.get("q_bias")).reshape(B, T, H, Dh)
    k = lin(h, p["k_proj"], p.get("k_bias")).reshape(B, T, K, Dh)
    v = lin(h, p["v_proj"], p.get("v_bias")).reshape(B, T, K, Dh)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    if cache_kv is not None:
        k = jax.lax.dynamic_update_slice(cache_kv[0], k.astype(cache_kv[0].dtype), (0, cache_index, 0, 0))
        v = jax.lax.dynamic_update_slice(cache_kv[1], v.astype(cache_kv[1].dtype), (0, cache_index, 0, 0))
    attn = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
    x = x + lin(attn.reshape(B, T, H * Dh), p["o_proj"], p.get("o_bias"))
    h = rms_norm(x, p["mlp_norm"], config.rms_norm_eps)
    gate = lin(h, p["gate_proj"], p.get("gate_bias"))
    up = lin(h, p["up_proj"], p.get("up_bias"))
    x = x + lin(jax.nn.silu(gate) * up, p["down_proj"], p.get("down_bias"))
    return x, (k, v)


def attention_mask(segment_ids: jax.Array) -> jax.Array:
    """Causal mask restricted to equal, non-zero segments: bool `[B,1,T,T]`."""
    T = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((T, T), dtype=bool))
    same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] != 0)
    return (causal[None] & same)[:, None]


def default_positions(segment_ids: jax.Array) -> jax.Array:
    """Positions restarting at 0 in each segment `[B,T]` (plain arange for one segment)."""
    T = segment_ids.shape[1]
    idx = jnp.arange(T)[None, :]
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return (idx - start_idx).astype(jnp.int32)


class Decoder(nnx.Module):
    """Llama-family causal LM.

    `hidden_states(ids)` -> `[B,T,D]` after the final norm (what the chunked
    log-prob ops consume); `lm_head_weight()` -> `[D,V]`; `model(ids)` -> float32
    logits `[B,T,V]` for evaluation and parity checks.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        remat: str = "none",
        lm_head: bool = True,
    ):
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat={remat!r} is not one of {', '.join(REMAT_POLICIES)}")
        self.config = config
        self.dtype = jnp.dtype(dtype)
        self.remat = remat
        D, V = config.hidden_size, config.vocab_size
        self.embed = _param(rngs, (V, D), ("tensor", "fsdp"), "normal", param_dtype)
        self.layers = DecoderLayers(config, param_dtype=param_dtype, rngs=rngs)
        self.final_norm = _param(rngs, (D,), (None,), "ones", param_dtype)
        untied = lm_head and not config.tie_word_embeddings
        self.lm_head = _param(rngs, (D, V), ("fsdp", "tensor"), "normal", param_dtype) if untied else None

    def lm_head_weight(self) -> jax.Array:
        """The output projection `[D, V]` (the transposed embedding when tied)."""
        if self.lm_head is not None:
            return self.lm_head[...]
        return self.embed[...].T

    def _run_layers(self, x, positions, mask, return_kv: bool = False):
        """All layers under `lax.scan` over the stacked parameters (training, scoring, prefill).

        Returns final-norm hidden states, and with `return_kv` the stacked keys and
        values `[L,B,T,K,Dh]` each.
        """
        cos, sin = rope_cos_sin(positions, inverse_frequencies(self.config))
        config = self.config

        custom_grad = self.remat != "dots"  # the "dots" policy must see the projections' dot_general

        def body(carry, p):
            out, kv = decoder_layer(config, p, carry, cos, sin, mask, custom_grad=custom_grad)
            return out, (kv if return_kv else None)

        if self.remat != "none":
            body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat], prevent_cse=False)
        x, kv = jax.lax.scan(body, x, self.layers.arrays())
        x = rms_norm(x, self.final_norm[...], config.rms_norm_eps)
        return (x, kv) if return_kv else x

    def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
        return jnp.take(self.embed[...], input_ids, axis=0).astype(self.dtype)

    def hidden_states(self, input_ids, positions=None, segment_ids=None) -> jax.Array:
        """Final-norm hidden states `[B,T,D]` in the compute dtype.

        segment_ids `[B,T]` (0 = padding) restrict attention to each packed
        example; positions default to 0.. within each segment.
        """
        if segment_ids is None:
            segment_ids = jnp.ones(input_ids.shape, jnp.int32)
        if positions is None:
            positions = default_positions(segment_ids)
        return self._run_layers(self.embed_tokens(input_ids), positions, attention_mask(segment_ids))

    def __call__(self, input_ids, positions=None, segment_ids=None) -> jax.Array:
        """Float32 logits `[B,T,V]` (materialised: for evaluation and tests, not training)."""
        h = self.hidden_states(input_ids, positions, segment_ids)
        return jnp.einsum("btd,dv->btv", h, self.lm_head_weight().astype(h.dtype), preferred_element_type=jnp.float32)

    # ----------------------------------------------------------------- KV cache
    def unstacked_layers(self) -> list[dict[str, jax.Array]]:
        """Per-layer parameter dicts. Decoding slices them once, outside its loop: on CPU a
        dynamic slice of the stacked weights is copied at every use, tripling per-token cost."""
        stacked = self.layers.arrays()
        return [{k: v[i] for k, v in stacked.items()} for i in range(self.config.num_layers)]

    def init_cache(self, batch_size: int, cache_size: int, dtype=None) -> list[tuple[jax.Array, jax.Array]]:
        """Zeroed KV cache: one (k, v) pair `[B, S, K, Dh]` per layer."""
        c = self.config
        shape = (batch_size, cache_size, c.num_kv_heads, c.head_dim)
        dtype = dtype or self.dtype
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(c.num_layers)]

    def prefill(self, input_ids, prompt_mask, cache_size: int):
        """Run left-padded prompts `[B,P]` (mask 1 on real tokens) through the stacked layers
        and return (hidden `[B,P,D]`, a KV cache of `cache_size` slots holding them)."""
        P = input_ids.shape[1]
        positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0).astype(jnp.int32)
        hidden, (k, v) = self._run_layers(self.embed_tokens(input_ids), positions, attention_mask(prompt_mask), True)
        cache = self.init_cache(input_ids.shape[0], cache_size)
        cache = [(ck.at[:, :P].set(k[i].astype(ck.dtype)), cv.at[:, :P].set(v[i].astype(cv.dtype)))
                 for i, (ck, cv) in enumerate(cache)]
        return hidden, cache

    def forward_cached(self, input_ids, positions, kv_valid, cache, cache_index, layers=None):
        """Run T new tokens against the cache; their keys land at `cache_index`.

        input_ids/positions `[B,T]`; kv_valid bool `[B,S]` marks filled, non-padding
        cache slots *including* the T new ones; layers: `unstacked_layers()` (pass
        it in from outside a decode loop). Returns (hidden `[B,T,D]`, cache).
        """
        T, S = input_ids.shape[1], cache[0][0].shape[1]
        q_slot = cache_index + jnp.arange(T)
        causal = jnp.arange(S)[None, :] <= q_slot[:, None]  # [T,S]
        mask = (causal[None] & kv_valid[:, None, :])[:, None]
        cos, sin = rope_cos_sin(positions, inverse_frequencies(self.config))
        x = self.embed_tokens(input_ids)
        new_cache = []
        for p, kv in zip(layers if layers is not None else self.unstacked_layers(), cache):
            x, kv = decoder_layer(self.config, p, x, cos, sin, mask, kv, cache_index)
            new_cache.append(kv)
        return rms_norm(x, self.final_norm[...], self.config.rms_norm_eps), new_cache


class ScalarHeadModel(nnx.Module):
    """Decoder + linear head on the last non-padding token: reward or pairwise difference model.

    Saved as HF `*ForSequenceClassification` with `num_labels=1` (`score.weight`).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32, remat="none"):
        self.config = config
        self.decoder = Decoder(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype, remat=remat, lm_head=False)
        self.score = _param(rngs, (config.hidden_size, 1), ("fsdp", None), "normal", param_dtype)

    def __call__(self, input_ids, positions=None, segment_ids=None, last_index=None) -> jax.Array:
        """Scores `[B]` float32 read at `last_index` `[B]` (default: last non-padding token)."""
        if segment_ids is None:
            segment_ids = jnp.ones(input_ids.shape, jnp.int32)
        if last_index is None:
            T = input_ids.shape[1]
            last_index = T - 1 - jnp.argmax((segment_ids != 0)[:, ::-1], axis=1)
        h = self.decoder.hidden_states(input_ids, positions, segment_ids)
        last = jnp.take_along_axis(h, last_index[:, None, None].astype(jnp.int32), axis=1)[:, 0]
        return jnp.einsum("bd,do->bo", last, self.score[...].astype(last.dtype), preferred_element_type=jnp.float32)[:, 0]
