"""Jitted, pure scoring functions of the offline stages (score, eval).

Each ``make_*`` takes a model's graphdef (static) and returns a jitted
``(state(s), batch) -> arrays`` function; batches follow the schema of
``jaxalign.data.collate`` (unpacked: K = 1). The functions are cached by
graphdef, so models of one architecture (a student before and after training)
share one compiled function per batch shape.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxalign.ops import teacher_topk, token_distill_divergence
from jaxalign.train.forward import Sequences, sequence_logps, split_pairs

__all__ = ["make_pair_logps", "make_pair_topk", "make_sft_logps", "make_pair_rewards", "make_pair_differences", "make_token_kl"]


@functools.lru_cache(maxsize=32)
def make_pair_logps(graphdef, chunk_size: int):
    """`(state, preference batch) -> (chosen [B], rejected [B])` summed response log-probs."""

    @jax.jit
    def fn(state, batch):
        model = nnx.merge(graphdef, state)
        both = Sequences.concat(Sequences.from_batch(batch, "chosen_"), Sequences.from_batch(batch, "rejected_"))
        return split_pairs(sequence_logps(model, both, 1, chunk_size=chunk_size).logps)

    return fn


@functools.lru_cache(maxsize=32)
def make_pair_topk(graphdef, chunk_size: int, k: int):
    """`(state, preference batch) -> {name: array}` from one forward pass: `chosen`/`rejected` `[B]` summed response
    log-probs and, per side, `{side}_ids`/`{side}_logps` `[B, T-1, k]` and `{side}_residual` `[B, T-1]`: the top-k
    next-token log-probs and residual log-mass at every position (`jaxalign.ops.teacher_topk`; entry t is the
    distribution of token t+1)."""

    @jax.jit
    def fn(state, batch):
        model = nnx.merge(graphdef, state)
        both = Sequences.concat(Sequences.from_batch(batch, "chosen_"), Sequences.from_batch(batch, "rejected_"))
        out = sequence_logps(model, both, 1, chunk_size=chunk_size)
        top = teacher_topk(out.hidden[:, :-1], model.lm_head_weight(), k, chunk_size=chunk_size,
                           logit_soft_cap=model.logit_softcap)
        half = both.input_ids.shape[0] // 2
        result = dict(zip(("chosen", "rejected"), split_pairs(out.logps)))
        for name, x in zip(("ids", "logps", "residual"), top):
            result[f"chosen_{name}"], result[f"rejected_{name}"] = x[:half], x[half:]
        return result

    return fn


@functools.lru_cache(maxsize=32)
def make_sft_logps(graphdef, chunk_size: int):
    """`(state, sft batch) -> (logps [B], tokens [B])`: response log-prob sums and lengths."""

    @jax.jit
    def fn(state, batch):
        out = sequence_logps(nnx.merge(graphdef, state), Sequences.from_batch(batch), 1, chunk_size=chunk_size)
        return out.logps[:, 0], out.lengths[:, 0]

    return fn


@functools.lru_cache(maxsize=32)
def make_pair_rewards(graphdef):
    """Reward model: `(state, preference batch) -> (r_chosen [B], r_rejected [B])`."""

    @jax.jit
    def fn(state, batch):
        model = nnx.merge(graphdef, state)
        both = Sequences.concat(Sequences.from_batch(batch, "chosen_"), Sequences.from_batch(batch, "rejected_"))
        scores = model(both.input_ids, both.positions, both.segment_ids)
        half = scores.shape[0] // 2
        return scores[:half], scores[half:]

    return fn


@functools.lru_cache(maxsize=32)
def make_pair_differences(graphdef):
    """Difference model: `(state, pairwise batch) -> (D(x,a,b) [B], D(x,b,a) [B])`; their antisymmetric
    part (`jaxalign.losses.antisymmetric_difference`) is the predicted reward difference r(a) − r(b)."""

    @jax.jit
    def fn(state, batch):
        model = nnx.merge(graphdef, state)
        fwd = model(batch["fwd_input_ids"], batch["fwd_positions"], batch["fwd_segment_ids"], batch["fwd_last_index"])
        bwd = model(batch["bwd_input_ids"], batch["bwd_positions"], batch["bwd_segment_ids"], batch["bwd_last_index"])
        return fwd, bwd

    return fn


@functools.lru_cache(maxsize=32)
def make_token_kl(student_graphdef, teacher_graphdef, chunk_size: int):
    """`(student_state, teacher_state, sft batch) -> (kl_sum [B], tokens [B])`: forward KL(teacher‖student)
    summed over each response's tokens (chunked; the full-vocabulary distributions of both models)."""

    @jax.jit
    def fn(student_state, teacher_state, batch):
        seqs = Sequences.from_batch(batch)
        student = nnx.merge(student_graphdef, student_state)
        teacher = nnx.merge(teacher_graphdef, teacher_state)
        hs = student.hidden_states(seqs.input_ids, seqs.positions, seqs.segment_ids)[:, :-1]
        ht = teacher.hidden_states(seqs.input_ids, seqs.positions, seqs.segment_ids)[:, :-1]
        kl = token_distill_divergence(hs, student.lm_head_weight(), ht, teacher.lm_head_weight(),
                                      divergence="forward_kl", chunk_size=chunk_size,
                                      logit_soft_cap=student.logit_softcap, teacher_logit_soft_cap=teacher.logit_softcap)
        mask = seqs.loss_mask[:, 1:].astype(jnp.float32)
        return jnp.sum(kl * mask, axis=1), jnp.sum(mask, axis=1)

    return fn
