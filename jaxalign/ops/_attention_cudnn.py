"""cuDNN flash attention (NVIDIA GPUs) with packed segments as cuDNN's ragged ("THD") layout.

``jax.nn.dot_product_attention(implementation="cudnn")`` only takes one padding length per row, so
packed rows would attend across their segments. cuDNN itself takes per-row segment offsets and
lengths (``q_offsets`` / ``q_seqlen``, shape ``[B, M+1]`` / ``[B, M]``, -1 filled): this module
turns ``segment_ids`` into them (every run of equal ids is one segment; M = T, so any packing fits)
and calls the lower-level cuDNN entry point in ``jax._src.cudnn``, with causal masking and the
left sliding window that cuDNN applies inside each segment.

What cuDNN cannot express (``unsupported_reason``): float32 inputs, logit soft-capping, keys of
another length than the queries (decode/cache shapes), a sliding window without causal masking
(cuDNN's window is left-only). cuDNN masks by index inside each segment; ``attention`` routes calls
whose positions are not index-ordered to blockwise at run time. Padding runs (id 0) become segments
of their own: their queries attend among themselves, which callers ignore, and no real query sees
them. Not yet run on a GPU from this repository: ``benchmarks/gpu_check.py --issue10`` compares it
with ``"xla"`` on packed rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def unsupported_reason(q, k, *, causal: bool, sliding_window, logit_softcap) -> str | None:
    """Why cuDNN cannot run this call (None when it can)."""
    if sliding_window is not None and not causal:
        return "cuDNN attention's sliding window is causal (left) only"
    if q.dtype not in (jnp.bfloat16, jnp.float16):
        return f"cuDNN attention needs bfloat16/float16 inputs, got {q.dtype}"
    if logit_softcap is not None:
        return "cuDNN attention has no logit soft-capping"
    if k.shape[1] != q.shape[1]:
        return "cuDNN attention here covers self-attention only (keys as long as queries), not decode/cache shapes"
    return None


def segment_offsets(segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``[B,T]`` ids -> (offsets ``[B,T+1]``, lengths ``[B,T]``) of the runs of equal ids, -1 filled.

    Example: ids ``[1,1,2,0]`` -> offsets ``[0,2,3,4,-1]``, lengths ``[2,1,1,-1]``.
    """
    B, T = segment_ids.shape
    starts = jnp.concatenate([jnp.ones((B, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    count = starts.sum(-1)  # segments per row

    def row(s, n):
        begin = jnp.nonzero(s, size=T, fill_value=T)[0].astype(jnp.int32)  # starts, then T
        edges = jnp.concatenate([begin, jnp.full((1,), T, jnp.int32)])
        idx = jnp.arange(T + 1)
        offsets = jnp.where(idx <= n, edges, -1)
        lengths = jnp.where(idx[:T] < n, edges[1:] - edges[:-1], -1)
        return offsets.astype(jnp.int32), lengths.astype(jnp.int32)

    return jax.vmap(row)(starts, count)


def cudnn_attention(q, k, v, segment_ids, *, causal=True, sliding_window=None, scale=None) -> jax.Array:
    """cuDNN fused attention ``[B,T,H,Dh]`` on packed rows (q ``[B,T,H,Dh]``, k/v ``[B,T,K,Dh]`` bf16/fp16)."""
    from jax._src.cudnn.fused_attention_stablehlo import MaskType, dot_product_attention

    offsets, lengths = segment_offsets(jnp.asarray(segment_ids, jnp.int32))
    return dot_product_attention(
        q, k, v, None, None, lengths, lengths, offsets, offsets,
        scale=float(scale) if scale is not None else float(1.0 / np.sqrt(q.shape[-1])),
        mask_type=MaskType.PADDING_CAUSAL if causal else MaskType.PADDING,
        sliding_window_length=sliding_window, qkv_layout="BTNH")
