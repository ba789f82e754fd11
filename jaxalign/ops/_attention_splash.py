"""TPU splash attention (Pallas kernel ``jax.experimental.pallas.ops.tpu.splash_attention``).

Grouped-query attention runs as the kernel's multi-query variant once per KV head (``vmap`` over
batch and KV heads): queries ``[G,T,Dh]`` of one KV head against its keys ``[T,Dh]``. Masking:
causal / local windows through the kernel's static mask classes (``CausalMask``, ``LocalMask``),
packed rows through ``SegmentIds``; the scale is folded into q, soft-capping is the kernel's own.
Lengths are padded to a multiple of 128 with segment id 0 (padding queries attend only to padding,
which callers ignore; real queries never see it).

What the kernel cannot express (``unsupported_reason``): keys of another length than the queries
(decode/cache shapes). Its masks are functions of indices; ``attention`` routes calls whose
positions are not index-ordered to blockwise at run time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LANE = 128


def unsupported_reason(q, k) -> str | None:
    """Why the splash kernel cannot run this call (None when it can)."""
    if k.shape[1] != q.shape[1]:
        return "splash attention covers self-attention only (keys as long as queries), not decode/cache shapes"
    return None


def _block(n: int) -> int:
    return next(b for b in (512, 256, 128) if n % b == 0)


def splash_attention(q, k, v, segment_ids, *, causal=True, sliding_window=None, logit_softcap=None,
                     scale=None, interpret: bool = False) -> jax.Array:
    """Splash attention ``[B,T,H,Dh]`` (q ``[B,T,H,Dh]``, k/v ``[B,T,K,Dh]``, segment_ids ``[B,T]``).

    ``interpret=True`` runs the kernel in Pallas interpret mode (any backend; tests on CPU).
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    B, T, H, Dh = q.shape
    K = k.shape[2]
    G = H // K
    Tp = -(-T // LANE) * LANE
    pad = [(0, 0), (0, Tp - T), (0, 0), (0, 0)]
    scale = float(scale) if scale is not None else float(1.0 / np.sqrt(Dh))
    qh = jnp.pad(q * jnp.asarray(scale, q.dtype), pad).reshape(B, Tp, K, G, Dh).transpose(0, 2, 3, 1, 4)
    kh = jnp.pad(k, pad).transpose(0, 2, 1, 3)  # [B,K,Tp,Dh]
    vh = jnp.pad(v, pad).transpose(0, 2, 1, 3)
    seg = jnp.pad(jnp.asarray(segment_ids, jnp.int32), [(0, 0), (0, Tp - T)])

    shape = (Tp, Tp)
    if sliding_window is not None:
        head_mask = sm.LocalMask(shape, window_size=(sliding_window - 1, 0 if causal else None), offset=0)
    elif causal:
        head_mask = sm.CausalMask(shape)
    else:
        head_mask = sm.FullMask(shape)
    b = _block(Tp)
    sizes = sk.BlockSizes(block_q=b, block_kv=b, block_kv_compute=b, block_q_dkv=b, block_kv_dkv=b,
                          block_kv_dkv_compute=b, block_q_dq=b, block_kv_dq=b)
    kernel = sk.make_splash_mqa(sm.MultiHeadMask([head_mask] * G), block_sizes=sizes, head_shards=1,
                                q_seq_shards=1, attn_logits_soft_cap=logit_softcap, interpret=interpret)

    def one_row(qr, kr, vr, sr):  # qr [K,G,Tp,Dh], kr/vr [K,Tp,Dh], sr [Tp]
        ids = sk.SegmentIds(q=sr, kv=sr)
        return jax.vmap(lambda a, b_, c: kernel(a, b_, c, segment_ids=ids))(qr, kr, vr)

    out = jax.vmap(one_row)(qh, kh, vh, seg)  # [B,K,G,Tp,Dh]
    return out.transpose(0, 3, 1, 2, 4).reshape(B, Tp, H, Dh)[:, :T]
