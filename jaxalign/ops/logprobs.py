"""Token and sequence log-probabilities without materialising ``[batch, seq, vocab]`` logits.

``token_logprobs`` runs the LM head, the log-softmax and the target gather in
sequence chunks (``lax.scan`` + ``jax.checkpoint``), accumulating in float32
from bfloat16 or float32 inputs. ``masked_token_logprobs`` does the same only
at the positions a mask selects (the scored response tokens): they are packed
into a static buffer, chunks holding none are skipped, and the gradient is a
hand-written VJP that can reuse the forward's logits. ``sequence_logprobs`` and
``segment_logprobs`` reduce the per-token values over response tokens (plain
rows, or packed rows holding several examples).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxalign.ops._chunking import chunked_over_time, f32_grad_accumulator
from jaxalign.ops._validate import check_positive_int, check_scalar

__all__ = ["compute_logits", "token_logprobs", "masked_token_logprobs", "sequence_logprobs", "segment_logprobs"]


def compute_logits(hidden: jax.Array, lm_head: jax.Array, logit_soft_cap: float | None = None) -> jax.Array:
    """``hidden[..., D] @ lm_head[D, V]`` in float32 (accumulated in float32 from bf16 inputs).

    Optional Gemma-style soft cap ``cap * tanh(logits / cap)``.
    """
    dtype = jnp.result_type(hidden.dtype, lm_head.dtype)
    logits = jnp.einsum(
        "...d,dv->...v",
        hidden.astype(dtype),
        lm_head.astype(dtype),
        preferred_element_type=jnp.float32,
    )
    if logit_soft_cap is not None:
        logits = logit_soft_cap * jnp.tanh(logits / logit_soft_cap)
    return logits


def gather_last(x: jax.Array, index: jax.Array) -> jax.Array:
    """``x[..., index]`` for an integer ``index`` with ``x``'s leading shape; index must be in range."""
    return jnp.take_along_axis(x, index[..., None], axis=-1, mode="clip")[..., 0]


def _check_head_inputs(hidden, lm_head, targets, chunk_size, logit_soft_cap) -> None:
    if np.ndim(hidden) != 3:
        raise ValueError(f"hidden must have shape [batch, seq, hidden_dim], got shape {tuple(np.shape(hidden))}")
    if np.ndim(lm_head) != 2:
        raise ValueError(f"lm_head must have shape [hidden_dim, vocab], got shape {tuple(np.shape(lm_head))}")
    if hidden.shape[-1] != lm_head.shape[0]:
        raise ValueError(
            f"lm_head has hidden_dim {lm_head.shape[0]} but hidden has {hidden.shape[-1]}: "
            "pass lm_head as [hidden_dim, vocab] (embedding.T for tied heads)"
        )
    if tuple(np.shape(targets)) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"targets has shape {tuple(np.shape(targets))} but hidden has [batch, seq] = {tuple(hidden.shape[:2])}"
        )
    if not jnp.issubdtype(jnp.asarray(targets).dtype, jnp.integer):
        raise ValueError(f"targets must be an integer array, got dtype {jnp.asarray(targets).dtype}")
    check_positive_int("chunk_size", chunk_size)
    if logit_soft_cap is not None:
        check_scalar("logit_soft_cap", logit_soft_cap, positive=True)


def token_logprobs(
    hidden: jax.Array,
    lm_head: jax.Array,
    targets: jax.Array,
    *,
    chunk_size: int = 256,
    logit_soft_cap: float | None = None,
) -> jax.Array:
    """Per-token ``log softmax(hidden @ lm_head)[target]``, chunked over the sequence.

    Args:
      hidden: ``[B, T, D]`` final hidden states (float32 or bfloat16).
      lm_head: ``[D, V]`` output projection (``embedding.T`` for tied heads).
      targets: ``[B, T]`` int token ids. The caller shifts
        (``hidden[:, :-1]`` against ``ids[:, 1:]``). Ids outside ``[0, V)``
        (e.g. an ignore index of -100) give a log-prob of exactly 0 and no
        gradient, so they are safe at masked positions.
      chunk_size: sequence positions per chunk; peak memory is about
        ``B * chunk_size * V`` float32 (a few such buffers in the backward pass).
        Need not divide T.
      logit_soft_cap: optional ``cap * tanh(logits / cap)`` before the softmax.

    Returns:
      ``[B, T]`` float32 log-probabilities. Differentiable w.r.t. ``hidden``
      and ``lm_head``; the backward pass is chunked as well.
    """
    _check_head_inputs(hidden, lm_head, targets, chunk_size, logit_soft_cap)
    vocab = lm_head.shape[1]
    targets = jnp.asarray(targets, jnp.int32)
    head_acc, head_dtype = f32_grad_accumulator(lm_head)

    def body(h, t):
        logits = compute_logits(h, head_acc.astype(head_dtype), logit_soft_cap)  # [B, C, V] float32
        lse = jax.nn.logsumexp(logits, axis=-1)
        valid = (t >= 0) & (t < vocab)
        picked = gather_last(logits, jnp.where(valid, t, 0))
        return jnp.where(valid, picked - lse, 0.0)

    return chunked_over_time(body, (hidden, targets), chunk_size)


def _masked_values(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(values * mask with masked entries exactly 0 — even if they are -inf/NaN —, float mask)."""
    maskf = jnp.asarray(mask).astype(jnp.float32)
    vals = jnp.where(maskf != 0, values.astype(jnp.float32) * maskf, 0.0)
    return vals, maskf


def sequence_logprobs(token_logps: jax.Array, mask: jax.Array, *, average: bool = False) -> jax.Array:
    """Reduce ``[B, T]`` per-token log-probs to ``[B]`` over the tokens where ``mask`` is set.

    ``average=False`` gives the masked sum (``logp(y|x)``); ``average=True``
    the masked mean (length-normalised), which is 0 for a fully masked row.
    ``mask`` may be bool or float (float values act as per-token weights;
    the mean then divides by the weight sum).
    """
    if tuple(np.shape(mask)) != tuple(np.shape(token_logps)):
        raise ValueError(f"mask has shape {tuple(np.shape(mask))} but token_logps has {tuple(np.shape(token_logps))}")
    vals, maskf = _masked_values(token_logps, mask)
    total = vals.sum(axis=-1)
    if not average:
        return total
    count = maskf.sum(axis=-1)
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def segment_logprobs(
    token_logps: jax.Array,
    mask: jax.Array,
    segment_ids: jax.Array,
    num_segments: int,
    *,
    average: bool = False,
) -> jax.Array:
    """Per-example sums (or means) of log-probs inside packed rows.

    Args:
      token_logps: ``[B, T]`` per-token log-probs.
      mask: ``[B, T]`` response-token mask (prompt and padding off).
      segment_ids: ``[B, T]`` int; example ``k`` of a packed row has id
        ``k`` in ``1..num_segments``; 0 marks padding (ignored, as are ids
        above ``num_segments``).
      num_segments: static max number of examples per row.
      average: length-normalise (mean over each segment's masked tokens; 0 for empty).

    Returns:
      ``[B, num_segments]`` float32; column ``k-1`` belongs to segment id ``k``.
    """
    num_segments = check_positive_int("num_segments", num_segments)
    for name, arr in (("mask", mask), ("segment_ids", segment_ids)):
        if tuple(np.shape(arr)) != tuple(np.shape(token_logps)):
            raise ValueError(
                f"{name} has shape {tuple(np.shape(arr))} but token_logps has {tuple(np.shape(token_logps))}"
            )
    vals, maskf = _masked_values(token_logps, mask)
    seg = jnp.asarray(segment_ids, jnp.int32)
    # Ids outside 1..K go to the dropped bucket 0 (segment_sum drops out-of-range ids anyway).
    seg = jnp.where((seg >= 1) & (seg <= num_segments), seg, 0)
    seg_sum = jax.vmap(lambda v, s: jax.ops.segment_sum(v, s, num_segments=num_segments + 1))
    total = seg_sum(vals, seg)[:, 1:]
    if not average:
        return total
    count = seg_sum(maskf, seg)[:, 1:]
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


# ------------------------------------------------------------------------------------------------
# Log-probs at the scored positions only.


def masked_token_logprobs(
    hidden: jax.Array,
    lm_head: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    chunk_size: int = 1024,
    groups: int = 1,
    save_logits: bool = False,
    logit_soft_cap: float | None = None,
) -> jax.Array:
    """``token_logprobs`` computed only where ``mask`` is set: the LM head skips every other position.

    The scored positions (``mask != 0`` and a target in ``[0, V)``) of each group of rows are packed,
    in order, to the front of a static ``[rows_per_group * T]`` buffer, which is cut into chunks of
    ``chunk_size`` positions run under ``lax.scan``. A chunk that holds no scored position of any
    group is skipped (``lax.cond``), forward and backward, so the head costs about
    ``ceil(max scored per group / chunk_size) * chunk_size`` positions per group instead of
    ``rows_per_group * T``. All shapes are static (they depend on ``B``, ``T`` and the arguments only).

    The gradient is a hand-written VJP (``jax.custom_vjp``): per chunk
    ``dlogits = g * (onehot(target) - softmax)``, ``d hidden = dlogits @ lm_head.T`` and
    ``d lm_head += hidden.T @ dlogits`` (accumulated in float32). The softmax comes from logits the
    forward saved (``save_logits=True``: no recompute, but ``[groups * chunks * chunk_size, V]``
    float32 kept from the forward to the backward pass, about ``[B, T, V]``) or from logits
    recomputed chunk by chunk (``save_logits=False``: one more head matmul per chunk, and at most a
    few ``[groups, chunk_size, V]`` float32 buffers live at once).

    Args:
      hidden: ``[B, T, D]`` final hidden states (float32 or bfloat16).
      lm_head: ``[D, V]`` output projection (``embedding.T`` for tied heads).
      targets: ``[B, T]`` int token ids, shifted by the caller as for ``token_logprobs``.
      mask: ``[B, T]`` bool / int / float; positions with ``mask != 0`` are scored (a float mask's
        weights are *not* applied here: reduce with ``sequence_logprobs`` / ``segment_logprobs``).
      chunk_size: packed positions per group per chunk (need not divide anything).
      groups: the rows are split into this many consecutive groups (must divide ``B``), each packed
        on its own. Under GSPMD with the batch sharded over ``n`` devices, ``groups=n`` keeps every
        device's work on its own rows; ``1`` packs all rows together (the fewest positions).
      save_logits: keep the forward's logits for the backward pass instead of recomputing them.
      logit_soft_cap: optional ``cap * tanh(logits / cap)`` before the softmax.

    Returns:
      ``[B, T]`` float32: the log-prob where ``mask != 0`` (0 for an out-of-range target), exactly 0
      elsewhere. Differentiable w.r.t. ``hidden`` and ``lm_head``; unscored positions get no
      gradient, and a row (or batch) with nothing scored gives zeros and zero gradients.
    """
    _check_head_inputs(hidden, lm_head, targets, chunk_size, logit_soft_cap)
    if tuple(np.shape(mask)) != tuple(np.shape(targets)):
        raise ValueError(f"mask has shape {tuple(np.shape(mask))} but targets has {tuple(np.shape(targets))}")
    groups = check_positive_int("groups", groups)
    B, T, D = hidden.shape
    V = lm_head.shape[1]
    if B % groups:
        raise ValueError(f"groups={groups} does not divide the batch of {B} rows")
    targets = jnp.asarray(targets, jnp.int32)
    scored = (jnp.asarray(mask) != 0) & (targets >= 0) & (targets < V)
    G, M = groups, (B // groups) * T
    if M == 0:
        return jnp.zeros((B, T), jnp.float32)
    C = max(1, min(int(chunk_size), M))
    n = math.ceil(M / C)

    s = scored.reshape(G, M)
    # Scored positions first, in their original order (stable); the rest after them.
    order = jnp.argsort(jnp.where(s, 0, 1).astype(jnp.int32), axis=1, stable=True)
    count = jnp.sum(s, axis=1, dtype=jnp.int32)  # [G]
    order_p = jnp.pad(order, ((0, 0), (0, n * C - M)))  # padding slots point at position 0; never scored
    hs = jnp.take_along_axis(hidden.reshape(G, M, D), order_p[..., None], axis=1)
    ts = jnp.take_along_axis(targets.reshape(G, M), order_p, axis=1)
    live = jnp.arange(n * C, dtype=jnp.int32)[None, :] < count[:, None]  # [G, n*C] slot holds a scored position
    ts = jnp.where(live, ts, 0)

    def to_chunks(x):  # [G, n*C, ...] -> [n, G, C, ...]
        return jnp.moveaxis(x.reshape(G, n, C, *x.shape[2:]), 1, 0)

    active = jnp.arange(n, dtype=jnp.int32) * C < jnp.max(count)  # [n] chunk holds a scored position
    head_fn = _packed_head_logps(bool(save_logits), None if logit_soft_cap is None else float(logit_soft_cap))
    ys = head_fn(to_chunks(hs), lm_head, to_chunks(ts), to_chunks(live), active)  # [n, G, C]
    ys = jnp.moveaxis(ys, 0, 1).reshape(G, n * C)[:, :M]
    inverse = jax.vmap(lambda o: jnp.zeros((M,), jnp.int32).at[o].set(jnp.arange(M, dtype=jnp.int32)))(order)
    out = jnp.take_along_axis(ys, inverse, axis=1)
    return jnp.where(s, out, 0.0).reshape(B, T)


@functools.lru_cache(maxsize=None)
def _packed_head_logps(save_logits: bool, soft_cap: float | None):
    """``custom_vjp`` of the chunked head over packed positions: ``(hs, lm_head, ts, live, active) -> [n, G, C]``.

    ``hs`` ``[n, G, C, D]``, ``ts`` ``[n, G, C]`` (in range), ``live`` ``[n, G, C]`` bool (slot holds
    a scored position; other slots give 0 and no gradient), ``active`` ``[n]`` bool (chunk computed).
    """

    def chunk_forward(hc, head, tc):
        logits = compute_logits(hc, head, soft_cap)  # [G, C, V] float32
        lse = jax.nn.logsumexp(logits, axis=-1)
        return gather_last(logits, tc) - lse, lse, logits

    def scan_forward(hs, head, ts, live, active, keep):
        _, G, C, _ = hs.shape
        V = head.shape[1]

        def skip(hc, tc):
            zeros = jnp.zeros((G, C), jnp.float32)
            return (zeros, zeros) + ((jnp.zeros((G, C, V), jnp.float32),) if keep else ())

        def compute(hc, tc):
            y, lse, logits = chunk_forward(hc, head, tc)
            return (y, lse) + ((logits,) if keep else ())

        def body(_, xs):
            on, hc, tc = xs
            return None, lax.cond(on, compute, skip, hc, tc)

        _, outs = lax.scan(body, None, (active, hs, ts))
        return (jnp.where(live, outs[0], 0.0),) + tuple(outs[1:])

    @jax.custom_vjp
    def head_logps(hs, head, ts, live, active):
        return scan_forward(hs, head, ts, live, active, False)[0]

    def fwd(hs, head, ts, live, active):
        outs = scan_forward(hs, head, ts, live, active, save_logits)
        saved = outs[2] if save_logits else None
        return outs[0], (hs, head, ts, live, active, outs[1], saved)

    def bwd(res, g):
        hs, head, ts, live, active, lses, saved = res
        _, G, C, D = hs.shape
        V = head.shape[1]
        dtype = jnp.result_type(hs.dtype, head.dtype)
        w = head.astype(dtype)
        vocab_ids = jnp.arange(V, dtype=jnp.int32)
        g = jnp.where(live, g.astype(jnp.float32), 0.0)
        hs = jnp.where(live[..., None], hs, 0)  # unscored slots: no inf * 0 in d lm_head

        def compute(dW, hc, tc, lse, gc, logits):
            if logits is None:
                logits = compute_logits(hc, w, soft_cap)
            onehot = vocab_ids == tc[..., None]
            # Where gc == 0 (unscored slots) dlogits is exactly 0, even for non-finite logits.
            dl = jnp.where(gc[..., None] != 0, gc[..., None] * (onehot - jnp.exp(logits - lse[..., None])), 0.0)
            if soft_cap is not None:
                dl = dl * (1.0 - jnp.square(logits / soft_cap))
            dl = dl.astype(dtype)
            dh = jnp.einsum("gcv,dv->gcd", dl, w, preferred_element_type=jnp.float32)
            dW = dW + jnp.einsum("gcd,gcv->dv", hc.astype(dtype), dl, preferred_element_type=jnp.float32)
            return dW, dh

        def body(dW, xs):
            on, hc, tc, lse, gc = xs[:5]
            logits = xs[5] if save_logits else None
            return lax.cond(on, lambda dW: compute(dW, hc, tc, lse, gc, logits),
                            lambda dW: (dW, jnp.zeros((G, C, D), jnp.float32)), dW)

        xs = (active, hs, ts, lses, g) + ((saved,) if save_logits else ())
        dW, dhs = lax.scan(body, jnp.zeros(head.shape, jnp.float32), xs)
        return dhs.astype(hs.dtype), dW.astype(head.dtype), None, None, None

    head_logps.defvjp(fwd, bwd)
    return head_logps
