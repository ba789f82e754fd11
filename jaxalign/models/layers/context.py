"""What every decoder layer needs besides its own weights, built once per forward pass."""

from __future__ import annotations

import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class LayerContext:
    """Per-forward inputs shared by all layers (arrays traced inside the decoder's jit).

    segment_ids `[B,T]` / kv_segment_ids `[B,S]`: packed-example ids (0 = padding) of the queries
    and of the keys attended to (S = T in training, the cache size when decoding);
    q_positions `[B,T]` / kv_positions `[B,S]`: the order causality and sliding windows use;
    rope: cos, sin `[B,T,Dh]` per rotary table name (a family may use several, e.g. Gemma 3's
    local and global bases); attention_impl: a `jaxalign.ops.attention` implementation;
    custom_grad: projections use the CPU-friendly custom VJP (off under `remat="dots"`).
    """

    segment_ids: jax.Array
    kv_segment_ids: jax.Array
    q_positions: jax.Array
    kv_positions: jax.Array
    rope: dict[str, tuple[jax.Array, jax.Array]]
    attention_impl: str = "xla"
    custom_grad: bool = True
