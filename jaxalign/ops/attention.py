"""Attention as one op with several implementations, used by training, scoring and the KV-cache decoder.

``attention(q, k, v, segment_ids, ...)`` is the only entry point the model layer calls; which kernel
runs is a config choice (``model.attention``), so the families never change when a kernel does.

Masking rule (every implementation): query ``t`` attends to key ``s`` iff both lie in the same
non-zero segment, and, with ``causal``, ``kv_positions[s] <= q_positions[t]``, and, with a
``sliding_window`` W, ``q_positions[t] - kv_positions[s] < W`` (HF's convention: W keys including
the query's own). Positions default to ``arange`` (packed rows: segments are contiguous, so index
order is position order inside each segment). A query with no key to attend to (padding) gives
finite values that callers ignore.

Implementations (``impl``):
- ``"xla"``: dense math, ``O(T*S)`` memory (the ``[B,T,S]`` mask and float32 scores).
- ``"blockwise"``: flash-style pure JAX (``_attention_blockwise``), memory linear in T; every backend.
- ``"cudnn"``: cuDNN fused attention on NVIDIA GPUs, packed segments as ragged offsets
  (``_attention_cudnn``).
- ``"splash"``: the Pallas splash-attention kernel on TPU (``_attention_splash``).
- ``"auto"``: cudnn on GPU, splash on TPU, on CPU blockwise when T or S is at least
  ``AUTO_BLOCKWISE_MIN_LENGTH`` and xla below.
A kernel that cannot express a call (float32 or soft-capping for cuDNN, decode/cache shapes for both)
falls back to blockwise, logging why once; forcing a kernel on a backend that cannot run it is an
error. The kernels mask by index inside each segment, so when the caller passes kv segment ids or
positions, a run-time check (``index_ordered``) sends the call to blockwise unless they say the same
(packed training rows: positions step by one inside each segment).
"""

from __future__ import annotations

import logging
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.ops import _attention_cudnn, _attention_splash
from jaxalign.ops._attention_blockwise import blockwise_attention

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "cudnn", "splash")
KERNEL_BACKENDS = {"cudnn": "gpu", "splash": "tpu"}
# On CPU, blockwise from this many query (or key) tokens; below it xla's dense attention is faster.
# Chosen from benchmarks/attention.py (forward+backward time ratio xla/blockwise per T, one run).
AUTO_BLOCKWISE_MIN_LENGTH = 1024

_log = logging.getLogger(__name__)
_logged: set[str] = set()


def _log_once(message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        _log.warning(message)


def resolve_impl(impl: str, q, k, *, causal: bool, sliding_window,
                 logit_softcap, backend: str | None = None) -> str:
    """The implementation that runs: ``auto`` picked per backend and length, kernels that cannot
    express the call replaced by ``blockwise`` (logged once). Raises for a kernel forced on the wrong backend."""
    backend = backend or jax.default_backend()
    if impl in KERNEL_BACKENDS and backend != KERNEL_BACKENDS[impl]:
        raise ValueError(f"attention impl={impl!r} (model.attention) needs a {KERNEL_BACKENDS[impl].upper()} "
                         f"backend, this one is {backend!r}; use 'blockwise' or 'xla'")
    if impl == "auto":
        if backend == "gpu":
            impl = "cudnn"
        elif backend == "tpu":
            impl = "splash"
        else:
            long = max(q.shape[1], k.shape[1]) >= AUTO_BLOCKWISE_MIN_LENGTH
            return "blockwise" if long else "xla"
    if impl == "cudnn":
        reason = _attention_cudnn.unsupported_reason(q, k, causal=causal,
                                                     sliding_window=sliding_window, logit_softcap=logit_softcap)
    elif impl == "splash":
        reason = _attention_splash.unsupported_reason(q, k)
    else:
        reason = None
    if reason is not None:
        _log_once(f"attention: {reason}; using 'blockwise' instead of {impl!r}")
        return "blockwise"
    return impl


def _check(q, k, v, segment_ids, kv_segment_ids, impl):
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"attention impl={impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    if q.ndim != 4 or k.ndim != 4 or v.shape != k.shape:
        raise ValueError(f"q must be [B,T,H,Dh] and k, v [B,S,K,Dh]; got {q.shape}, {k.shape}, {v.shape}")
    B, T, H, Dh = q.shape
    if k.shape[0] != B or k.shape[3] != Dh or H % k.shape[2]:
        raise ValueError(f"k/v {k.shape} do not match q {q.shape} (batch, head dim, heads a multiple of kv heads)")
    if segment_ids is not None and segment_ids.shape != (B, T):
        raise ValueError(f"segment_ids must be [B,T] = {(B, T)}, got {segment_ids.shape}")
    if kv_segment_ids is not None and kv_segment_ids.shape != (B, k.shape[1]):
        raise ValueError(f"kv_segment_ids must be [B,S] = {(B, k.shape[1])}, got {kv_segment_ids.shape}")


def attention_mask(segment_ids, kv_segment_ids, q_positions, kv_positions, *, causal: bool = True,
                   sliding_window: int | None = None) -> jax.Array:
    """Bool ``[B,T,S]``: which keys each query attends to (the rule in the module docstring)."""
    mask = (segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (kv_segment_ids[:, None, :] != 0)
    distance = q_positions[:, :, None] - kv_positions[:, None, :]
    if causal:
        mask &= distance >= 0
    if sliding_window is not None:
        mask &= distance < sliding_window
    return mask


def xla_attention(q, k, v, mask, *, logit_softcap=None, scale=None) -> jax.Array:
    """Dense attention: ``jax.nn.dot_product_attention``'s XLA math (same masking value, float32 softmax),
    with the G query heads of each KV head stacked into one ``[G*T, Dh] x [Dh, S]`` matmul per
    (batch, KV head) instead of a dot vmapped over G (about 1.5x faster on CPU). Memory ``O(T*S)``.

    q ``[B,T,H,Dh]``; k, v ``[B,S,K,Dh]``; mask bool ``[B,T,S]``.
    """
    B, T, H, Dh = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    qg = q.reshape(B, T, K, G, Dh).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, Dh)
    logits = jnp.einsum("bkqd,bskd->bkqs", qg, k, preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
    logits = logits * jnp.asarray(scale if scale is not None else 1.0 / np.sqrt(Dh), logits.dtype)
    if logit_softcap is not None:
        logits = logit_softcap * jnp.tanh(logits / logit_softcap)
    m = jnp.broadcast_to(mask[:, None, None], (B, 1, G, T, S)).reshape(B, 1, G * T, S)
    large_negative = -0.7 * min(float(jnp.finfo(logits.dtype).max), float(jnp.finfo(jnp.float32).max))
    logits = jnp.where(m, logits, jnp.asarray(large_negative, logits.dtype))
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)  # logits are float32 at least
    out = jnp.einsum("bkqs,bskd->bkqd", probs, v)
    return out.reshape(B, K, G, T, Dh).transpose(0, 3, 1, 2, 4).reshape(B, T, H, Dh)


def index_ordered(segment_ids, kv_segment_ids, q_positions, kv_positions) -> jax.Array:
    """Scalar bool: the index-based masks of the kernels give this call's mask (rule above). True when
    keys and queries carry the same ids and positions and, inside every segment, each position is
    the previous one plus one (so index order and distance are position order and distance)."""
    if segment_ids.shape != kv_segment_ids.shape:
        return jnp.asarray(False)
    same = jnp.all(segment_ids == kv_segment_ids) & jnp.all(q_positions == kv_positions)
    inside = (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] != 0)
    steps = jnp.where(inside, kv_positions[:, 1:] - kv_positions[:, :-1], 1)
    return same & jnp.all(steps == 1)


def attention(q, k, v, segment_ids=None, *, kv_segment_ids=None, q_positions=None, kv_positions=None,
              impl: str = "auto", causal: bool = True, sliding_window: int | None = None,
              logit_softcap: float | None = None, scale: float | None = None) -> jax.Array:
    """Grouped-query attention ``[B,T,H,Dh]``.

    q ``[B,T,H,Dh]``; k, v ``[B,S,K,Dh]`` (H a multiple of K; S = T in training, the cache size when
    decoding); segment_ids ``[B,T]`` int (0 = padding; default all 1); kv_segment_ids ``[B,S]``
    (default ``segment_ids``; required when S != T); q_positions ``[B,T]`` / kv_positions ``[B,S]``
    (default ``arange``); scale default ``Dh**-0.5``; logit_softcap: ``c * tanh(logits / c)``
    after scaling (Gemma 2). impl: one of ``IMPLEMENTATIONS``.
    """
    _check(q, k, v, segment_ids, kv_segment_ids, impl)
    B, T = q.shape[:2]
    S = k.shape[1]
    if segment_ids is None:
        segment_ids = jnp.ones((B, T), jnp.int32)
    if kv_segment_ids is None:
        if S != T:
            raise ValueError(f"kv_segment_ids is required when keys ({S}) and queries ({T}) differ in length")
        kv_segment_ids = segment_ids
    layout_given = q_positions is not None or kv_positions is not None or kv_segment_ids is not segment_ids
    impl = resolve_impl(impl, q, k, causal=causal, sliding_window=sliding_window, logit_softcap=logit_softcap)
    if q_positions is None:
        q_positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    if kv_positions is None:
        kv_positions = jnp.broadcast_to(jnp.arange(S, dtype=jnp.int32), (B, S))

    def blockwise(q, k, v):
        return blockwise_attention(q, k, v, segment_ids, kv_segment_ids, q_positions, kv_positions,
                                   causal=causal, sliding_window=sliding_window, logit_softcap=logit_softcap,
                                   scale=scale)

    if impl in ("cudnn", "splash"):
        if impl == "cudnn":
            kernel = partial(_attention_cudnn.cudnn_attention, segment_ids=segment_ids, causal=causal,
                             sliding_window=sliding_window, scale=scale)
        else:
            kernel = partial(_attention_splash.splash_attention, segment_ids=segment_ids, causal=causal,
                             sliding_window=sliding_window, logit_softcap=logit_softcap, scale=scale)
        if not layout_given:
            return kernel(q, k, v)
        ordered = index_ordered(segment_ids, kv_segment_ids, q_positions, kv_positions)
        return jax.lax.cond(ordered, kernel, blockwise, q, k, v)
    if impl == "blockwise":
        return blockwise(q, k, v)
    mask = attention_mask(segment_ids, kv_segment_ids, q_positions, kv_positions, causal=causal,
                          sliding_window=sliding_window)
    return xla_attention(q, k, v, mask, logit_softcap=logit_softcap, scale=scale)
