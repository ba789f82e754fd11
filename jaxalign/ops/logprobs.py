"""Token and sequence log-probabilities without materialising ``[batch, seq, vocab]`` logits.

``token_logprobs`` runs the LM head, the log-softmax and the target gather in
sequence chunks (``lax.scan`` + ``jax.checkpoint``), accumulating in float32
from bfloat16 or float32 inputs. ``sequence_logprobs`` and
``segment_logprobs`` reduce the per-token values over response tokens (plain
rows, or packed rows holding several examples).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxalign.ops._chunking import chunked_over_time, f32_grad_accumulator
from jaxalign.ops._validate import check_positive_int, check_scalar

__all__ = ["compute_logits", "token_logprobs", "sequence_logprobs", "segment_logprobs"]


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
