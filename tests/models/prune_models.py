"""Tiny random models for the pruning and importance tests, and a way to make chosen structures carry
nothing (their weights zeroed), so importance must rank them last and pruning them must change nothing."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from jaxalign.models import Decoder, ModelConfig

SIZES = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8)


def tiny_config(model_type: str = "llama", **changes) -> ModelConfig:
    """A 3-layer GQA config (4 heads, 2 KV heads) of `model_type` (llama, qwen3, gemma2)."""
    kw = {**SIZES, "model_type": model_type, **changes}
    if model_type == "gemma2":
        from jaxalign.models.families.gemma2 import GemmaConfig

        return GemmaConfig(**{"tie_word_embeddings": True, "query_pre_attn_scalar": 8, **kw})
    return ModelConfig(**kw)


def random_model(config: ModelConfig, seed: int = 0) -> Decoder:
    """jaxalign's random init with every norm weight perturbed too (so a missed norm rescale shows)."""
    model = Decoder(config, rngs=nnx.Rngs(seed))
    key = jax.random.key(seed + 1)
    for name in model.layers.names:
        if name.endswith("norm"):
            v = getattr(model.layers, name)
            key, sub = jax.random.split(key)
            v[...] = v[...] + 0.1 * jax.random.normal(sub, v.shape)
    model.final_norm[...] = model.final_norm[...] + 0.1 * jax.random.normal(key, model.final_norm.shape)
    return model


def _zero(param, index):
    param[...] = param[...].at[index].set(0)


def zero_structures(model: Decoder, *, hidden=(), mlp=(), kv_groups=(), layers_identity=()) -> Decoder:
    """Zero, in every layer, what feeds hidden channels `hidden` (embedding columns and the residual writes),
    MLP channels `mlp` and KV groups `kv_groups` (their values and their query heads' output rows); make
    the layers `layers_identity` identities (no residual writes at all)."""
    c, L = model.config, model.layers
    hidden, mlp = list(hidden), list(mlp)
    G, Dh = c.num_heads // c.num_kv_heads, c.head_dim
    if hidden:
        _zero(model.embed, (slice(None), hidden))
        for name in ("o_proj", "down_proj"):
            _zero(getattr(L, name), (slice(None), slice(None), hidden))
    if mlp:
        for name in ("gate_proj", "up_proj"):
            _zero(getattr(L, name), (slice(None), slice(None), mlp))
        _zero(L.down_proj, (slice(None), mlp, slice(None)))
    for g in kv_groups:
        _zero(L.v_proj, (slice(None), slice(None), slice(g * Dh, (g + 1) * Dh)))
        _zero(L.o_proj, (slice(None), slice(g * G * Dh, (g + 1) * G * Dh), slice(None)))
    for i in layers_identity:
        for name in ("o_proj", "down_proj"):
            _zero(getattr(L, name), (i,))
    return model


def random_ids(vocab: int, rows: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(3, vocab, (rows, length)).astype(np.int32)
