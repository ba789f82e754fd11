"""Per-example sequence log-probs of a model on a batch of (possibly packed) rows.

Row `t` of the hidden states predicts token `t+1`; `loss_mask[:, 1:]` selects the scored targets.
The LM head and log-softmax run only on those scored positions
(`jaxalign.ops.masked_token_logprobs`: packed, chunked, chunks without a scored position skipped),
so `[rows, seq, vocab]` logits are never materialised and prompt / padding positions cost no head
FLOPs. With a mesh whose `tensor` axis is larger than 1 the head runs vocab-parallel on every
position instead (`jaxalign.ops.sharded_token_logprobs`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign.ops import masked_token_logprobs, segment_logprobs, sharded_token_logprobs

BATCH_AXES = ("data", "fsdp")  # the mesh axes the rows are sharded over (jaxalign.parallel.mesh)


@dataclasses.dataclass(frozen=True)
class Sequences:
    """One model input: rows `[N, T]` int32 (with per-example slots K per row)."""

    input_ids: jax.Array
    positions: jax.Array
    segment_ids: jax.Array
    loss_mask: jax.Array

    @classmethod
    def from_batch(cls, batch: dict, prefix: str = "") -> "Sequences":
        return cls(*(batch[f"{prefix}{k}"] for k in ("input_ids", "positions", "segment_ids", "loss_mask")))

    @staticmethod
    def concat(a: "Sequences", b: "Sequences") -> "Sequences":
        """Rows of `a` then rows of `b` (chosen and rejected in one forward pass)."""
        return Sequences(*(jnp.concatenate([x, y], axis=0) for x, y in zip(dataclasses.astuple(a), dataclasses.astuple(b))))


@dataclasses.dataclass
class SequenceOutput:
    logps: jax.Array  # [N, K] summed response log-probs per example
    lengths: jax.Array  # [N, K] response token counts
    hidden: jax.Array  # [N, T, D] final hidden states (for token-level distillation)
    aux_loss: jax.Array  # scalar: the layers' auxiliary loss (MoE router load balancing; 0 for dense models)


def batch_groups(rows: int, mesh: Mesh | None) -> int:
    """Row groups for `masked_token_logprobs`: one per batch shard of `mesh` (1 without a mesh).

    Packing each shard's rows on their own keeps the head's work on the device holding them under
    GSPMD; falls back to 1 when the shards do not divide `rows`.
    """
    if mesh is None:
        return 1
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES if a in mesh.shape)
    return shards if shards >= 1 and rows % shards == 0 else 1


def scored_token_logps(hidden, head, targets, mask, *, chunk_size: int, mesh: Mesh | None = None,
                       save_logits: bool | None = None, logit_softcap: float | None = None) -> jax.Array:
    """`[N, T]` log-probs of `targets` at the positions where `mask != 0` (0 elsewhere).

    `hidden` `[N, T, D]` is already shifted against `targets` `[N, T]`. Runs
    `masked_token_logprobs` with `chunk_size` packed positions per chunk; the forward's logits are
    kept for the backward pass (no recomputation) when the packed buffer holds at most
    `N * chunk_size` positions, i.e. when keeping them costs no more memory than one chunk of a
    per-row chunked head (`[N, chunk_size, V]`); `save_logits` overrides. `logit_softcap`: the
    model's final soft-cap (Gemma 2), applied before the log-softmax.
    """
    N, T = targets.shape
    groups = batch_groups(N, mesh)
    per_group = (N // groups) * T
    chunk = max(1, min(int(chunk_size), per_group)) if per_group else 1
    packed = groups * math.ceil(per_group / chunk) * chunk
    if save_logits is None:
        save_logits = packed <= N * int(chunk_size)
    return masked_token_logprobs(hidden, head, targets, mask, chunk_size=chunk, groups=groups,
                                 save_logits=save_logits, logit_soft_cap=logit_softcap)


def sequence_logps(model, seqs: Sequences, num_segments: int, *, chunk_size: int,
                   mesh: Mesh | None = None) -> SequenceOutput:
    """Summed log-probs and lengths per example `[N, K]` (and the layers' auxiliary loss).

    With a mesh whose `tensor` axis is larger than 1 the LM head runs vocab-parallel inside
    `shard_map` on every position; otherwise only on the scored positions (`scored_token_logps`,
    `chunk_size` packed positions per chunk).
    """
    hidden, aux = model.hidden_states(seqs.input_ids, seqs.positions, seqs.segment_ids, with_aux=True)
    head = model.lm_head_weight()
    targets = seqs.input_ids[:, 1:]
    mask, seg = seqs.loss_mask[:, 1:], seqs.segment_ids[:, 1:]
    if mesh is not None and mesh.shape.get("tensor", 1) > 1:
        tok = sharded_token_logprobs(hidden[:, :-1], head, targets, mesh, chunk_size=chunk_size,
                                     logit_soft_cap=model.logit_softcap)
    else:
        tok = scored_token_logps(hidden[:, :-1], head, targets, mask, chunk_size=chunk_size, mesh=mesh,
                                 logit_softcap=model.logit_softcap)
    logps = segment_logprobs(tok, mask, seg, num_segments)
    lengths = segment_logprobs(jnp.ones_like(tok), mask, seg, num_segments)
    return SequenceOutput(logps, lengths, hidden, aux)


def split_pairs(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`[2B, K]` (chosen rows then rejected rows) -> two flat `[B*K]` arrays."""
    half = x.shape[0] // 2
    return x[:half].reshape(-1), x[half:].reshape(-1)
