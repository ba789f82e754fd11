"""Per-example sequence log-probs of a model on a batch of (possibly packed) rows.

The LM head and log-softmax run chunked (`jaxalign.ops.token_logprobs`), so
`[rows, seq, vocab]` logits are never materialised. Row `t` of the hidden
states predicts token `t+1`; `loss_mask[:, 1:]` selects the scored targets.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from jaxalign.ops import segment_logprobs, sharded_token_logprobs, token_logprobs


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


def sequence_logps(model, seqs: Sequences, num_segments: int, *, chunk_size: int, mesh: Mesh | None = None) -> SequenceOutput:
    """Summed log-probs and lengths per example `[N, K]`.

    With a mesh whose `tensor` axis is larger than 1 the LM head runs
    vocab-parallel inside `shard_map`; otherwise chunked under GSPMD.
    """
    hidden = model.hidden_states(seqs.input_ids, seqs.positions, seqs.segment_ids)
    head = model.lm_head_weight()
    targets = seqs.input_ids[:, 1:]
    if mesh is not None and mesh.shape.get("tensor", 1) > 1:
        tok = sharded_token_logprobs(hidden[:, :-1], head, targets, mesh, chunk_size=chunk_size)
    else:
        tok = token_logprobs(hidden[:, :-1], head, targets, chunk_size=chunk_size)
    mask, seg = seqs.loss_mask[:, 1:], seqs.segment_ids[:, 1:]
    logps = segment_logprobs(tok, mask, seg, num_segments)
    lengths = segment_logprobs(jnp.ones_like(tok), mask, seg, num_segments)
    return SequenceOutput(logps, lengths, hidden)


def split_pairs(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`[2B, K]` (chosen rows then rejected rows) -> two flat `[B*K]` arrays."""
    half = x.shape[0] // 2
    return x[:half].reshape(-1), x[half:].reshape(-1)


def scalar_scores(model, seqs_ids, positions, segment_ids, last_index) -> jax.Array:
    """Scalar-head outputs `[N]` read at `last_index` (reward / difference models)."""
    return model(seqs_ids, positions, segment_ids, last_index)
