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

__all__ = ["DIVERGENCES", "logits_divergence", "token_distill_divergence", "token_distill_loss"]

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
    logq = jax.nn.log_softmax(s, axis=-1)
    logp = jax.nn.log_softmax(t, axis=-1)
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
    maskf = jnp.asarray(mask).astype(jnp.float32)
    total = jnp.sum(jnp.where(maskf != 0, per_token * maskf, 0.0))
    count = jnp.sum(maskf)
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)
