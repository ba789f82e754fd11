"""Token-level distillation: divergence between teacher and student next-token distributions.

Computed over the full vocabulary (or the teacher's top-k support) at
temperature τ, chunked over the sequence exactly like ``token_logprobs``
(``lax.scan`` + ``jax.checkpoint``): at most ``[B, chunk, V]`` float32 logits
of each model are live at once, forward and backward.

Conventions (p = teacher, q = student, both ``softmax(logits / τ)``):

- ``forward_kl``: KL(p‖q) = Σ p (log p − log q) — mode-covering, standard KD.
- ``reverse_kl``: KL(q‖p) = Σ q (log q − log p) — mode-seeking.
- ``jsd``: generalised Jensen–Shannon with weight λ (``jsd_lambda``) on the
  teacher, as in GKD / TRL: m = λ·p + (1−λ)·q,
  JSD_λ = λ·KL(p‖m) + (1−λ)·KL(q‖m). λ = 0.5 is the symmetric JSD. The
  divergence is *not* rescaled by 1/(λ(1−λ)); λ must lie strictly inside
  (0, 1) (at either end it is identically 0 — use forward_kl/reverse_kl).

No τ² factor is applied (fold it into ``kd_weight`` if wanted). Terms with
zero probability in the first argument of a KL contribute exactly 0, so
vocab entries masked to -inf in both models give finite values and gradients.
The teacher is under ``stop_gradient``.

Cached teacher distributions (``teacher_topk`` writes them, ``cached_distill_loss`` reads them):
the teacher's k largest log-probs at temperature 1 with their token ids, plus its residual
log-mass ``log(1 − Σ_k p)``. The divergence then runs over k + 1 buckets: the k ids and one
bucket for the rest of the vocabulary, where the student's mass is ``1 − Σ_k q`` at the same ids.
With k = V the residual bucket is empty for both and the result is the full-vocabulary divergence.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxalign.ops._chunking import chunked_over_time, f32_grad_accumulator
from jaxalign.ops._validate import check_choice, check_positive_int, check_scalar
from jaxalign.ops.logprobs import compute_logits

__all__ = ["DIVERGENCES", "cached_distill_divergence", "cached_distill_loss", "logits_divergence", "teacher_topk",
           "token_distill_divergence", "token_distill_loss"]

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def _kl(logp: jax.Array, logq: jax.Array) -> jax.Array:
    """Σ_v p (log p − log q) over the last axis, with 0·log 0 = 0 (NaN-free gradients too)."""
    p = jnp.exp(logp)
    pos = p > 0
    diff = jnp.where(pos, logp, 0.0) - jnp.where(pos, logq, 0.0)
    return jnp.sum(jnp.where(pos, p * diff, 0.0), axis=-1)


def _log_mixture(logp: jax.Array, logq: jax.Array, lam: float) -> jax.Array:
    """log(λ·p + (1−λ)·q), -inf where both are 0, with finite gradients everywhere."""
    a = logp + math.log(lam)
    b = logq + math.log1p(-lam)
    both_zero = (a == -jnp.inf) & (b == -jnp.inf)
    mix = jnp.logaddexp(jnp.where(both_zero, 0.0, a), jnp.where(both_zero, 0.0, b))
    return jnp.where(both_zero, -jnp.inf, mix)


def _check_distill_options(divergence, temperature, jsd_lambda, top_k, vocab) -> None:
    check_choice("divergence", divergence, DIVERGENCES)
    check_scalar("temperature", temperature, positive=True)
    if divergence == "jsd":
        check_scalar("jsd_lambda", jsd_lambda, lower=0.0, upper=1.0, lower_inclusive=False, upper_inclusive=False)
    if top_k is not None:
        top_k = check_positive_int("top_k", top_k)
        if vocab is not None and top_k > vocab:
            raise ValueError(f"top_k={top_k} exceeds the vocab size {vocab}")


def logits_divergence(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    jsd_lambda: float = 0.5,
    top_k: int | None = None,
) -> jax.Array:
    """Per-position divergence from logits ``[..., V]`` (both float32) → ``[...]``.

    The building block of the chunked ops, also handy for metrics on small
    inputs. ``teacher_logits`` is stop-gradiented. With ``top_k`` both
    distributions are renormalised over the teacher's top-k ids.
    """
    _check_distill_options(divergence, temperature, jsd_lambda, top_k, student_logits.shape[-1])
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher_logits has shape {teacher_logits.shape} but student_logits has {student_logits.shape}"
        )
    s = student_logits.astype(jnp.float32) / temperature
    t = lax.stop_gradient(teacher_logits.astype(jnp.float32)) / temperature
    if top_k is not None:
        t, idx = lax.top_k(t, top_k)
        s = jnp.take_along_axis(s, idx, axis=-1)
    return _divergence(jax.nn.log_softmax(t, axis=-1), jax.nn.log_softmax(s, axis=-1), divergence, jsd_lambda)


def _divergence(logp: jax.Array, logq: jax.Array, divergence: str, jsd_lambda: float) -> jax.Array:
    """The divergence between teacher log-probs ``logp`` and student log-probs ``logq`` over the last axis."""
    if divergence == "forward_kl":
        return _kl(logp, logq)
    if divergence == "reverse_kl":
        return _kl(logq, logp)
    logm = _log_mixture(logp, logq, float(jsd_lambda))
    return jsd_lambda * _kl(logp, logm) + (1.0 - jsd_lambda) * _kl(logq, logm)


def _check_distill_inputs(student_hidden, student_head, teacher_hidden, teacher_head) -> None:
    for name, arr, nd, what in (
        ("student_hidden", student_hidden, 3, "[batch, seq, hidden_dim]"),
        ("teacher_hidden", teacher_hidden, 3, "[batch, seq, teacher_hidden_dim]"),
        ("student_head", student_head, 2, "[hidden_dim, vocab]"),
        ("teacher_head", teacher_head, 2, "[teacher_hidden_dim, vocab]"),
    ):
        if np.ndim(arr) != nd:
            raise ValueError(f"{name} must have shape {what}, got shape {tuple(np.shape(arr))}")
    if teacher_head.shape[1] != student_head.shape[1]:
        raise ValueError(
            f"teacher_head has vocab {teacher_head.shape[1]} but student_head has {student_head.shape[1]}: "
            "teacher and student must share a tokenizer"
        )
    if student_hidden.shape[-1] != student_head.shape[0]:
        raise ValueError(
            f"student_head has hidden_dim {student_head.shape[0]} but student_hidden has {student_hidden.shape[-1]}"
        )
    if teacher_hidden.shape[-1] != teacher_head.shape[0]:
        raise ValueError(
            f"teacher_head has hidden_dim {teacher_head.shape[0]} but teacher_hidden has {teacher_hidden.shape[-1]}"
        )
    if teacher_hidden.shape[:2] != student_hidden.shape[:2]:
        raise ValueError(
            f"teacher_hidden has [batch, seq] {tuple(teacher_hidden.shape[:2])} but student_hidden has "
            f"{tuple(student_hidden.shape[:2])}: both must score the same tokens"
        )


def token_distill_divergence(
    student_hidden: jax.Array,
    student_head: jax.Array,
    teacher_hidden: jax.Array,
    teacher_head: jax.Array,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    jsd_lambda: float = 0.5,
    top_k: int | None = None,
    chunk_size: int = 256,
    logit_soft_cap: float | None = None,
    teacher_logit_soft_cap: float | None | str = "same",
) -> jax.Array:
    """Per-token divergence ``[B, T]`` float32 between teacher and student next-token distributions.

    Args:
      student_hidden: ``[B, T, Ds]``; student_head: ``[Ds, V]``.
      teacher_hidden: ``[B, T, Dt]``; teacher_head: ``[Dt, V]`` (same V:
        teacher and student must share a tokenizer). Teacher inputs get no gradient.
      divergence, temperature, jsd_lambda, top_k: see the module docstring.
      chunk_size: sequence positions per chunk (need not divide T).
      logit_soft_cap: optional soft cap ``c * tanh(logits / c)`` of the student's logits (Gemma 2), and
        of the teacher's unless ``teacher_logit_soft_cap`` (a cap or None) says otherwise.
    """
    teacher_cap = logit_soft_cap if teacher_logit_soft_cap == "same" else teacher_logit_soft_cap
    _check_distill_inputs(student_hidden, student_head, teacher_hidden, teacher_head)
    _check_distill_options(divergence, temperature, jsd_lambda, top_k, student_head.shape[1])
    check_positive_int("chunk_size", chunk_size)
    teacher_hidden = lax.stop_gradient(teacher_hidden)
    teacher_head = lax.stop_gradient(teacher_head)
    head_acc, head_dtype = f32_grad_accumulator(student_head)

    def body(hs, ht):
        return logits_divergence(
            compute_logits(hs, head_acc.astype(head_dtype), logit_soft_cap),
            compute_logits(ht, teacher_head, teacher_cap),
            divergence=divergence,
            temperature=temperature,
            jsd_lambda=jsd_lambda,
            top_k=top_k,
        )

    return chunked_over_time(body, (student_hidden, teacher_hidden), chunk_size)


def token_distill_loss(
    student_hidden: jax.Array,
    student_head: jax.Array,
    teacher_hidden: jax.Array,
    teacher_head: jax.Array,
    mask: jax.Array,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    jsd_lambda: float = 0.5,
    top_k: int | None = None,
    chunk_size: int = 256,
    logit_soft_cap: float | None = None,
    teacher_logit_soft_cap: float | None | str = "same",
) -> jax.Array:
    """Scalar token-level KD loss: masked mean over response tokens of ``token_distill_divergence``.

    ``mask`` is ``[B, T]`` (bool or float weights) over the positions whose
    next-token distributions are compared (the same shifted positions as
    ``token_logprobs``'s targets). 0 if the mask is empty. Returns float32.
    """
    _check_distill_inputs(student_hidden, student_head, teacher_hidden, teacher_head)
    if tuple(np.shape(mask)) != tuple(student_hidden.shape[:2]):
        raise ValueError(
            f"mask has shape {tuple(np.shape(mask))} but student_hidden has [batch, seq] "
            f"{tuple(student_hidden.shape[:2])}"
        )
    per_token = token_distill_divergence(
        student_hidden,
        student_head,
        teacher_hidden,
        teacher_head,
        divergence=divergence,
        temperature=temperature,
        jsd_lambda=jsd_lambda,
        top_k=top_k,
        chunk_size=chunk_size,
        logit_soft_cap=logit_soft_cap,
        teacher_logit_soft_cap=teacher_logit_soft_cap,
    )
    return _masked_mean(per_token, mask)


def _masked_mean(per_token: jax.Array, mask) -> jax.Array:
    """Mean of ``per_token`` ``[B, T]`` weighted by ``mask`` (values off the mask ignored); 0 if it is empty."""
    maskf = jnp.asarray(mask).astype(jnp.float32)
    total = jnp.sum(jnp.where(maskf != 0, per_token * maskf, 0.0))
    count = jnp.sum(maskf)
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


# ----------------------------------------------------------------------------- cached top-k teacher


def _log_rest(logp: jax.Array, ids: jax.Array) -> jax.Array:
    """``log Σ_{v ∉ ids} exp(logp_v)`` over the last axis: ``logp`` ``[..., V]``, ``ids`` ``[..., k]``.

    Exact (a log-sum-exp of the other entries, not ``log(1 − Σ)``): -inf when ids cover the vocab,
    with finite (zero) gradients then."""
    in_top = jnp.put_along_axis(jnp.zeros(logp.shape, bool), ids, True, axis=-1, inplace=False)
    has_rest = jnp.any(~in_top, axis=-1)
    others = jnp.where(has_rest[..., None], jnp.where(in_top, -jnp.inf, logp), 0.0)  # finite when nothing is left
    rest = jax.nn.logsumexp(others, axis=-1)
    return jnp.where(has_rest, rest, -jnp.inf)


def teacher_topk(
    hidden: jax.Array, head: jax.Array, k: int, *, chunk_size: int = 256, logit_soft_cap: float | None = None
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The teacher's cached distribution at every position: ``(ids [B, T, k] int32, logps [B, T, k]
    float32, residual [B, T] float32)``.

    ``hidden`` ``[B, T, D]``, ``head`` ``[D, V]``; ``logps`` are the k largest raw log-softmax values
    (temperature 1) in descending order with their token ``ids``; ``residual`` is ``log(1 − Σ exp(logps))``,
    computed exactly (-inf when k = V). Chunked over T like the other LM-head ops.
    """
    check_positive_int("k", k)
    if k > head.shape[1]:
        raise ValueError(f"k={k} exceeds the vocab size {head.shape[1]}")
    check_positive_int("chunk_size", chunk_size)
    if head.shape[1] > 2**24:
        raise ValueError(f"vocab size {head.shape[1]}: token ids above 2**24 do not round-trip through float32")

    def body(h):
        logp = jax.nn.log_softmax(compute_logits(h, head, logit_soft_cap), axis=-1)
        values, ids = lax.top_k(logp, k)
        return jnp.concatenate([values, ids.astype(jnp.float32), _log_rest(logp, ids)[..., None]], axis=-1)

    out = chunked_over_time(body, (lax.stop_gradient(hidden),), chunk_size)
    return out[..., k:2 * k].astype(jnp.int32), out[..., :k], out[..., 2 * k]


def _check_cache_inputs(student_hidden, student_head, ids, logps, residual, mask) -> None:
    B, T = student_hidden.shape[:2]
    for name, arr, want in (("teacher_ids", ids, (B, T, None)), ("teacher_logps", logps, (B, T, None)),
                            ("teacher_residual", residual, (B, T)), ("mask", mask, (B, T))):
        shape = tuple(np.shape(arr))
        if len(shape) != len(want) or any(w is not None and s != w for s, w in zip(shape, want)):
            raise ValueError(f"{name} has shape {shape} but student_hidden has [batch, seq] {(B, T)}"
                             + (" (and a last axis of k)" if len(want) == 3 else ""))
    if np.shape(ids) != np.shape(logps):
        raise ValueError(f"teacher_ids has shape {tuple(np.shape(ids))} but teacher_logps has {tuple(np.shape(logps))}")
    if np.shape(ids)[-1] > student_head.shape[1]:
        raise ValueError(f"the cache's k={np.shape(ids)[-1]} exceeds the student's vocab size {student_head.shape[1]}: "
                         "teacher and student must share a tokenizer")


def cached_distill_divergence(
    student_hidden: jax.Array,
    student_head: jax.Array,
    teacher_ids: jax.Array,
    teacher_logps: jax.Array,
    teacher_residual: jax.Array,
    mask: jax.Array,
    *,
    divergence: str = "forward_kl",
    jsd_lambda: float = 0.5,
    top_k: int | None = None,
    chunk_size: int = 256,
    logit_soft_cap: float | None = None,
) -> jax.Array:
    """Per-token divergence ``[B, T]`` between a cached top-k teacher distribution and the student.

    Args:
      student_hidden: ``[B, T, D]``; student_head: ``[D, V]``.
      teacher_ids / teacher_logps: ``[B, T, k]`` (``teacher_topk``: distinct ids, temperature-1
        log-probs); teacher_residual: ``[B, T]`` = ``log(1 − Σ_k p)``. No gradient reaches them.
      mask: ``[B, T]``: positions off it are given a stand-in teacher (any value there is ignored,
        NaN-free forward and backward); the caller masks the result.
      top_k: None = k buckets + the residual bucket:
        teacher ``(p_1..p_k, r_p)``, student ``(q_{id_1}..q_{id_k}, log Σ_{v ∉ ids} q_v)``, where
        ``q = softmax(student logits)``, and the divergence (see the module docstring) over these k + 1
        buckets. An int ≤ k = the first ``top_k`` ids, both renormalised over them, no residual bucket
        (exactly ``logits_divergence``'s ``top_k`` at temperature 1).
    Chunked over T (``[B, chunk, V]`` student logits at most), rematerialised in the backward pass.
    """
    _check_cache_inputs(student_hidden, student_head, teacher_ids, teacher_logps, teacher_residual, mask)
    k, vocab = teacher_ids.shape[-1], student_head.shape[1]
    _check_distill_options(divergence, 1.0, jsd_lambda, top_k, k)
    check_positive_int("chunk_size", chunk_size)
    head_acc, head_dtype = f32_grad_accumulator(student_head)
    # Stand-in teacher off the mask: uniform over k + 1 buckets, or k when the residual bucket is empty
    # for the student too (k = V): positive wherever the student's mass is, so every divergence is finite.
    full = k == vocab
    pad_logp = -math.log(k if full else k + 1)
    pad_residual = -jnp.inf if full else pad_logp

    def body(hs, ids, logps, residual, m):
        on = m != 0
        ids = jnp.where(on[..., None], ids, jnp.arange(k, dtype=ids.dtype))
        logps = jnp.where(on[..., None], logps.astype(jnp.float32), pad_logp)
        residual = jnp.where(on, residual.astype(jnp.float32), pad_residual)
        logq_all = jax.nn.log_softmax(compute_logits(hs, head_acc.astype(head_dtype), logit_soft_cap), axis=-1)
        logq = jnp.take_along_axis(logq_all, ids, axis=-1)
        if top_k is not None:
            return _divergence(jax.nn.log_softmax(logps[..., :top_k], axis=-1),
                               jax.nn.log_softmax(logq[..., :top_k], axis=-1), divergence, jsd_lambda)
        logp = jnp.concatenate([logps, residual[..., None]], axis=-1)
        logq = jnp.concatenate([logq, _log_rest(logq_all, ids)[..., None]], axis=-1)
        return _divergence(logp, logq, divergence, jsd_lambda)

    teacher = [lax.stop_gradient(jnp.asarray(x)) for x in (teacher_ids, teacher_logps, teacher_residual)]
    return chunked_over_time(body, (student_hidden, *teacher, jnp.asarray(mask)), chunk_size)


def cached_distill_loss(
    student_hidden: jax.Array,
    student_head: jax.Array,
    teacher_ids: jax.Array,
    teacher_logps: jax.Array,
    teacher_residual: jax.Array,
    mask: jax.Array,
    **kwargs,
) -> jax.Array:
    """Scalar KD loss from a cached top-k teacher: the ``mask``-weighted mean of ``cached_distill_divergence``
    (same keyword arguments), 0 if the mask is empty. The counterpart of ``token_distill_loss``."""
    per_token = cached_distill_divergence(student_hidden, student_head, teacher_ids, teacher_logps, teacher_residual,
                                          mask, **kwargs)
    return _masked_mean(per_token, mask)
