"""Flash-style attention in pure JAX: online softmax over key/value blocks, memory linear in T.

The ``[T,S]`` mask is never built: each (query block, key block) pair computes its own
``[bq,bk]`` mask from segment ids, positions and the window. A static-shape ``[nq,nk]`` table of
*possibly active* block pairs (from per-block min/max of segment ids and positions) lets
``lax.cond`` skip pairs that are fully masked: causal upper blocks, blocks outside the window,
blocks of other segments, padding. The backward is blockwise too (custom VJP, FlashAttention-2):
it recomputes each block's probabilities from the per-query logsumexp saved by the forward.

Layout inside: queries ``[nq, B, K, G, bq, Dh]`` (the G query heads of one KV head together),
keys/values ``[nk, B, K, bk, Dh]``; lengths are padded to whole blocks with segment id 0.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

BLOCK_Q = 512
BLOCK_K = 512


def _pad_to(x, n, axis, value=0):
    extra = n - x.shape[axis]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def _blocks(length: int, block: int) -> tuple[int, int]:
    """(block size, number of blocks): one block when the length fits in one."""
    b = min(block, length)
    return b, -(-length // b)


def _block_q(q, nq, bq, K):
    """``[B,T,H,Dh]`` -> ``[nq, B, K, G, bq, Dh]``."""
    B, _, H, Dh = q.shape
    q = _pad_to(q, nq * bq, 1).reshape(B, nq, bq, K, H // K, Dh)
    return q.transpose(1, 0, 3, 4, 2, 5)


def _unblock_q(x, T):
    """``[nq, B, K, G, bq, Dh]`` -> ``[B,T,H,Dh]``."""
    nq, B, K, G, bq, Dh = x.shape
    return x.transpose(1, 0, 4, 2, 3, 5).reshape(B, nq * bq, K * G, Dh)[:, :T]


def _block_kv(k, nk, bk):
    """``[B,S,K,Dh]`` -> ``[nk, B, K, bk, Dh]``."""
    B, _, K, Dh = k.shape
    return _pad_to(k, nk * bk, 1).reshape(B, nk, bk, K, Dh).transpose(1, 0, 3, 2, 4)


def _unblock_kv(x, S):
    nk, B, K, bk, Dh = x.shape
    return x.transpose(1, 0, 3, 2, 4).reshape(B, nk * bk, K, Dh)[:, :S]


def _block_ids(ids, n, b):
    """``[B,L]`` -> ``[n, B, b]`` (padding gets id 0)."""
    return _pad_to(ids, n * b, 1).reshape(ids.shape[0], n, b).transpose(1, 0, 2)


def _block_ranges(seg, pos):
    """Per block and row, over its non-padding tokens: (any, seg min, seg max, pos min, pos max); ``[n, B]``."""
    valid = seg != 0
    big = jnp.iinfo(jnp.int32).max
    lo = lambda x: jnp.min(jnp.where(valid, x, big), axis=-1)  # noqa: E731
    hi = lambda x: jnp.max(jnp.where(valid, x, -big), axis=-1)  # noqa: E731
    return valid.any(-1), lo(seg), hi(seg), lo(pos), hi(pos)


def active_blocks(qseg, qpos, kseg, kpos, *, causal, sliding_window):
    """Bool ``[nq, nk]``: block pairs where some (row, query, key) may be unmasked (a superset)."""
    qa, qs0, qs1, qp0, qp1 = (x[:, None] for x in _block_ranges(qseg, qpos))
    ka, ks0, ks1, kp0, kp1 = (x[None, :] for x in _block_ranges(kseg, kpos))
    act = qa & ka & (qs0 <= ks1) & (ks0 <= qs1)
    if causal:
        act &= kp0 <= qp1
    if sliding_window is not None:
        act &= qp0 - kp1 < sliding_window
    return act.any(-1)  # any batch row


def _block_mask(qseg, qpos, kseg, kpos, causal, sliding_window):
    """Bool ``[B,1,1,bq,bk]`` for one block pair (the rule of ``attention``'s docstring)."""
    m = (qseg[:, :, None] == kseg[:, None, :]) & (kseg[:, None, :] != 0)
    d = qpos[:, :, None] - kpos[:, None, :]
    if causal:
        m &= d >= 0
    if sliding_window is not None:
        m &= d < sliding_window
    return m[:, None, None]


def _logits(qb, kb, scale, logit_softcap):
    """Scaled (and soft-capped) float32 logits ``[B,K,G,bq,bk]``; also tanh for the softcap VJP."""
    s = jnp.einsum("bkgqd,bksd->bkgqs", qb, kb, preferred_element_type=jnp.float32) * scale
    if logit_softcap is None:
        return s, None
    t = jnp.tanh(s / logit_softcap)
    return logit_softcap * t, t


def _forward(q, k, v, qseg, kseg, qpos, kpos, causal, sliding_window, logit_softcap, scale, block_q, block_k):
    """Output ``[B,T,H,Dh]`` and logsumexp ``[nq,B,K,G,bq]`` (0 for queries with no key)."""
    B, T, H, Dh = q.shape
    S, K = k.shape[1], k.shape[2]
    bq, nq = _blocks(T, block_q)
    bk, nk = _blocks(S, block_k)
    qb, kb, vb = _block_q(q, nq, bq, K), _block_kv(k, nk, bk), _block_kv(v, nk, bk)
    qs, qp = _block_ids(qseg, nq, bq), _block_ids(qpos, nq, bq)
    ks, kp = _block_ids(kseg, nk, bk), _block_ids(kpos, nk, bk)
    active = active_blocks(qs, qp, ks, kp, causal=causal, sliding_window=sliding_window)
    G = H // K

    def one_query_block(i):
        qi = qb[i]

        def update(j, carry):
            m, l, acc = carry
            s, _ = _logits(qi, kb[j], scale, logit_softcap)
            mask = _block_mask(qs[i], qp[i], ks[j], kp[j], causal, sliding_window)
            s = jnp.where(mask, s, -jnp.inf)
            m_new = jnp.maximum(m, s.max(-1))
            m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
            p = jnp.exp(s - m_safe[..., None])
            alpha = jnp.exp(m - m_safe)
            pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(vb.dtype), vb[j], preferred_element_type=jnp.float32)
            return m_new, alpha * l + p.sum(-1), alpha[..., None] * acc + pv

        def body(j, carry):
            return jax.lax.cond(active[i, j], update, lambda _, c: c, j, carry)

        init = (jnp.full((B, K, G, bq), -jnp.inf, jnp.float32), jnp.zeros((B, K, G, bq), jnp.float32),
                jnp.zeros((B, K, G, bq, Dh), jnp.float32))
        m, l, acc = jax.lax.fori_loop(0, nk, body, init)
        seen = l > 0
        out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
        lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
        return out.astype(q.dtype), lse

    out, lse = jax.lax.map(one_query_block, jnp.arange(nq))
    return _unblock_q(out, T), lse


def _backward(q, k, v, qseg, kseg, qpos, kpos, out, lse, dout, causal, sliding_window, logit_softcap, scale,
              block_q, block_k):
    """dq, dk, dv: for each key block, loop over query blocks recomputing p from the saved logsumexp."""
    B, T, H, Dh = q.shape
    S, K = k.shape[1], k.shape[2]
    bq, nq = _blocks(T, block_q)
    bk, nk = _blocks(S, block_k)
    qb, kb, vb = _block_q(q, nq, bq, K), _block_kv(k, nk, bk), _block_kv(v, nk, bk)
    dob = _block_q(dout, nq, bq, K)
    delta = jnp.sum(dob.astype(jnp.float32) * _block_q(out, nq, bq, K).astype(jnp.float32), axis=-1)
    qs, qp = _block_ids(qseg, nq, bq), _block_ids(qpos, nq, bq)
    ks, kp = _block_ids(kseg, nk, bk), _block_ids(kpos, nk, bk)
    active = active_blocks(qs, qp, ks, kp, causal=causal, sliding_window=sliding_window)

    def one_key_block(dq, j):
        kj, vj = kb[j], vb[j]

        def update(i, carry):
            dq, dk, dv = carry
            qi, doi = qb[i], dob[i]
            s, t = _logits(qi, kj, scale, logit_softcap)
            mask = _block_mask(qs[i], qp[i], ks[j], kp[j], causal, sliding_window)
            p = jnp.where(mask, jnp.exp(s - lse[i][..., None]), 0.0)
            dv = dv + jnp.einsum("bkgqs,bkgqd->bksd", p.astype(doi.dtype), doi, preferred_element_type=jnp.float32)
            dp = jnp.einsum("bkgqd,bksd->bkgqs", doi, vj, preferred_element_type=jnp.float32)
            ds = p * (dp - delta[i][..., None])
            if logit_softcap is not None:
                ds = ds * (1.0 - t * t)
            ds = (ds * scale).astype(q.dtype)
            dqi = jnp.einsum("bkgqs,bksd->bkgqd", ds, kj, preferred_element_type=jnp.float32)
            dk = dk + jnp.einsum("bkgqs,bkgqd->bksd", ds, qi, preferred_element_type=jnp.float32)
            return dq.at[i].add(dqi), dk, dv

        def body(i, carry):
            return jax.lax.cond(active[i, j], update, lambda _, c: c, i, carry)

        zeros_kv = jnp.zeros((B, K, bk, Dh), jnp.float32)
        dq, dk, dv = jax.lax.fori_loop(0, nq, body, (dq, zeros_kv, zeros_kv))
        return dq, (dk, dv)

    dq0 = jnp.zeros(qb.shape, jnp.float32)
    dq, (dk, dv) = jax.lax.scan(one_key_block, dq0, jnp.arange(nk))
    return (_unblock_q(dq, T).astype(q.dtype), _unblock_kv(dk, S).astype(k.dtype),
            _unblock_kv(dv, S).astype(v.dtype))


@partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11, 12))
def _blockwise(q, k, v, qseg, kseg, qpos, kpos, causal, sliding_window, logit_softcap, scale, block_q, block_k):
    return _forward(q, k, v, qseg, kseg, qpos, kpos, causal, sliding_window, logit_softcap, scale,
                    block_q, block_k)[0]


def _blockwise_fwd(q, k, v, qseg, kseg, qpos, kpos, causal, sliding_window, logit_softcap, scale, block_q, block_k):
    out, lse = _forward(q, k, v, qseg, kseg, qpos, kpos, causal, sliding_window, logit_softcap, scale,
                        block_q, block_k)
    return out, (q, k, v, qseg, kseg, qpos, kpos, out, lse)


def _blockwise_bwd(causal, sliding_window, logit_softcap, scale, block_q, block_k, res, dout):
    q, k, v, qseg, kseg, qpos, kpos, out, lse = res
    dq, dk, dv = _backward(q, k, v, qseg, kseg, qpos, kpos, out, lse, dout, causal, sliding_window,
                           logit_softcap, scale, block_q, block_k)
    return dq, dk, dv, None, None, None, None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(q, k, v, segment_ids, kv_segment_ids, q_positions, kv_positions, *, causal=True,
                        sliding_window=None, logit_softcap=None, scale=None, block_q: int = BLOCK_Q,
                        block_k: int = BLOCK_K) -> jax.Array:
    """Flash-style grouped-query attention ``[B,T,H,Dh]`` (all id/position arrays given, int32).

    q ``[B,T,H,Dh]``; k, v ``[B,S,K,Dh]``; segment ids and positions ``[B,T]`` / ``[B,S]``.
    Temp memory ``O(B*H*(T + block_q*block_k))``; queries with no key to attend to get 0 (and no gradient).
    """
    scale = float(scale) if scale is not None else float(1.0 / np.sqrt(q.shape[-1]))
    softcap = float(logit_softcap) if logit_softcap is not None else None
    window = int(sliding_window) if sliding_window is not None else None
    ids = [jnp.asarray(x, jnp.int32) for x in (segment_ids, kv_segment_ids, q_positions, kv_positions)]
    return _blockwise(q, k, v, *ids, bool(causal), window, softcap, scale, int(block_q), int(block_k))
