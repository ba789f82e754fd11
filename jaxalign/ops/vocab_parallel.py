"""Vocab-parallel token log-probs: the LM head's vocab is sharded over a mesh axis.

Inside ``jax.shard_map`` each shard holds ``lm_head[:, shard]``; per chunk it
computes local logits, and the log-softmax reduces across the axis
(``pmax`` for the max, ``psum`` for the sum of exponentials and for the target
logit, which only the shard owning the target id contributes). Nothing
``[B, T, V]``-sized exists on any device, and no shard ever sees the full vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from jaxalign.ops._chunking import chunked_over_time, f32_grad_accumulator
from jaxalign.ops.logprobs import _check_head_inputs, compute_logits, gather_last, token_logprobs

__all__ = ["vocab_parallel_token_logprobs", "sharded_token_logprobs", "BATCH_AXES", "VOCAB_AXIS"]

BATCH_AXES = ("data", "fsdp")
VOCAB_AXIS = "tensor"


def vocab_parallel_token_logprobs(
    hidden: jax.Array,
    lm_head_shard: jax.Array,
    targets: jax.Array,
    *,
    axis_name: str = VOCAB_AXIS,
    vocab_size: int | None = None,
    chunk_size: int = 256,
    logit_soft_cap: float | None = None,
) -> jax.Array:
    """``token_logprobs`` for use inside ``jax.shard_map`` with the vocab split over ``axis_name``.

    Args:
      hidden: ``[B, T, D]`` local batch shard, replicated over ``axis_name``.
      lm_head_shard: ``[D, V / n]``; shard ``i`` of the axis holds vocab ids
        ``[i * V/n, (i+1) * V/n)``.
      targets: ``[B, T]`` global token ids (out-of-range ids give 0, as in
        ``token_logprobs``).
      axis_name: the mesh axis the vocab is split over.
      vocab_size: true vocab size when the head was zero-padded to a multiple
        of the axis size; logits of ids ``>= vocab_size`` are masked to -inf.
      chunk_size, logit_soft_cap: as in ``token_logprobs``.

    Returns:
      ``[B, T]`` float32, identical on every shard of ``axis_name``.
    """
    _check_head_inputs(hidden, lm_head_shard, targets, chunk_size, logit_soft_cap)
    local_vocab = lm_head_shard.shape[1]
    padded_vocab = local_vocab * lax.axis_size(axis_name)
    vocab = padded_vocab if vocab_size is None else int(vocab_size)
    offset = lax.axis_index(axis_name) * local_vocab
    targets = jnp.asarray(targets, jnp.int32)
    head_acc, head_dtype = f32_grad_accumulator(lm_head_shard)

    def body(h, t):
        logits = compute_logits(h, head_acc.astype(head_dtype), logit_soft_cap)  # [B, C, V/n]
        if vocab < padded_vocab:
            ids = offset + jnp.arange(local_vocab)
            logits = jnp.where(ids < vocab, logits, -jnp.inf)
        local_max = jnp.max(lax.stop_gradient(logits), axis=-1)
        global_max = lax.pmax(local_max, axis_name)
        global_max = jnp.where(jnp.isfinite(global_max), global_max, 0.0)
        sum_exp = lax.psum(jnp.sum(jnp.exp(logits - global_max[..., None]), axis=-1), axis_name)
        lse = jnp.log(sum_exp) + global_max
        valid = (t >= 0) & (t < vocab)
        local_t = t - offset
        mine = valid & (local_t >= 0) & (local_t < local_vocab)
        picked = jnp.where(mine, gather_last(logits, jnp.where(mine, local_t, 0)), 0.0)
        target_logit = lax.psum(picked, axis_name)
        return jnp.where(valid, target_logit - lse, 0.0)

    return chunked_over_time(body, (hidden, targets), chunk_size)


def _mesh_axes(mesh: Mesh, batch_axes, vocab_axis):
    names = set(mesh.axis_names)
    batch = tuple(a for a in batch_axes if a in names)
    vocab = vocab_axis if vocab_axis in names and mesh.shape[vocab_axis] > 1 else None
    return batch, vocab


def sharded_token_logprobs(
    hidden: jax.Array,
    lm_head: jax.Array,
    targets: jax.Array,
    mesh: Mesh,
    *,
    chunk_size: int = 256,
    logit_soft_cap: float | None = None,
    batch_axes: tuple[str, ...] = BATCH_AXES,
    vocab_axis: str = VOCAB_AXIS,
) -> jax.Array:
    """``token_logprobs`` on a mesh: batch sharded over ``batch_axes``, vocab over ``vocab_axis``.

    Wraps ``vocab_parallel_token_logprobs`` in ``jax.shard_map``. Axes missing
    from the mesh are skipped (no ``tensor`` axis, or size 1: plain chunked
    log-probs per batch shard). A vocab that does not divide the axis size is
    zero-padded and the padding masked out. The batch must divide the product
    of the batch axes. Differentiable w.r.t. ``hidden`` and ``lm_head``.

    Takes global arrays ``hidden [B, T, D]``, ``lm_head [D, V]``,
    ``targets [B, T]``; returns ``[B, T]`` float32 sharded over the batch axes.
    """
    _check_head_inputs(hidden, lm_head, targets, chunk_size, logit_soft_cap)
    batch, vocab_ax = _mesh_axes(mesh, batch_axes, vocab_axis)
    batch_size = int(np.prod([mesh.shape[a] for a in batch])) if batch else 1
    if hidden.shape[0] % batch_size:
        raise ValueError(
            f"hidden has batch {hidden.shape[0]}, not divisible by the {batch_size} shards of mesh axes {batch}"
        )
    bspec = batch if batch else None
    vocab = lm_head.shape[1]
    if vocab_ax is None:
        fn = lambda h, w, t: token_logprobs(h, w, t, chunk_size=chunk_size, logit_soft_cap=logit_soft_cap)  # noqa: E731
        head_spec = P()
    else:
        n = mesh.shape[vocab_ax]
        if vocab % n:
            lm_head = jnp.pad(lm_head, [(0, 0), (0, n - vocab % n)])

        def fn(h, w, t):
            return vocab_parallel_token_logprobs(
                h, w, t, axis_name=vocab_ax, vocab_size=vocab, chunk_size=chunk_size, logit_soft_cap=logit_soft_cap
            )

        head_spec = P(None, vocab_ax)

    mapped = jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(P(bspec, None, None), head_spec, P(bspec, None)),
        out_specs=P(bspec, None),
    )
    return mapped(hidden, lm_head, jnp.asarray(targets, jnp.int32))
