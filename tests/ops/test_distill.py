"""jaxalign.ops.distill: chunked teacher–student divergences vs the naive full-logits computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.ops import DIVERGENCES, token_distill_divergence, token_distill_loss

B, T, DS, DT, V = 2, 13, 8, 6, 11
TAU = 1.7
LAM = 0.3


def _inputs(seed=0, dtype=np.float32, scale=1.0):
    rng = np.random.default_rng(seed)
    hs = (rng.normal(size=(B, T, DS)) * scale).astype(dtype)
    ws = (rng.normal(size=(DS, V)) / np.sqrt(DS)).astype(dtype)
    ht = (rng.normal(size=(B, T, DT)) * scale).astype(dtype)
    wt = (rng.normal(size=(DT, V))).astype(dtype)
    mask = rng.random((B, T)) < 0.7
    return hs, ws, ht, wt, mask


def _log_softmax64(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def numpy_divergence(hs, ws, ht, wt, divergence, temperature=TAU, lam=LAM, top_k=None):
    """Per-token divergence in float64 from full logits."""
    s = (np.asarray(hs, np.float64) @ np.asarray(ws, np.float64)) / temperature
    t = (np.asarray(ht, np.float64) @ np.asarray(wt, np.float64)) / temperature
    if top_k is not None:
        idx = np.argsort(-t, axis=-1)[..., :top_k]
        s, t = np.take_along_axis(s, idx, -1), np.take_along_axis(t, idx, -1)
    logq, logp = _log_softmax64(s), _log_softmax64(t)
    p, q = np.exp(logp), np.exp(logq)
    if divergence == "forward_kl":
        return (p * (logp - logq)).sum(-1)
    if divergence == "reverse_kl":
        return (q * (logq - logp)).sum(-1)
    logm = np.log(lam * p + (1 - lam) * q)
    return lam * (p * (logp - logm)).sum(-1) + (1 - lam) * (q * (logq - logm)).sum(-1)


def naive_loss(hs, ws, ht, wt, mask, divergence):
    """Full [B, T, V] float32 logits in JAX: the gradient reference."""
    s = jnp.einsum("btd,dv->btv", hs, ws) / TAU
    t = jax.lax.stop_gradient(jnp.einsum("btd,dv->btv", ht, wt)) / TAU
    logq, logp = jax.nn.log_softmax(s), jax.nn.log_softmax(t)
    p, q = jnp.exp(logp), jnp.exp(logq)
    if divergence == "forward_kl":
        per = jnp.sum(p * (logp - logq), -1)
    elif divergence == "reverse_kl":
        per = jnp.sum(q * (logq - logp), -1)
    else:
        logm = jnp.log(LAM * p + (1 - LAM) * q)
        per = LAM * jnp.sum(p * (logp - logm), -1) + (1 - LAM) * jnp.sum(q * (logq - logm), -1)
    return jnp.sum(per * mask) / jnp.sum(mask)


@pytest.fixture(scope="module")
def naive_grads():
    hs, ws, ht, wt, mask = _inputs()
    f = jax.jit(
        lambda hs, ws: {d: jax.value_and_grad(naive_loss, argnums=(0, 1))(hs, ws, ht, wt, mask, d) for d in DIVERGENCES}
    )
    return f(hs, ws)


@jax.jit(static_argnames=("divergences", "chunk_size", "top_k"))
def distill_value_and_grads(hs, ws, ht, wt, mask, divergences=DIVERGENCES, chunk_size=5, top_k=None):
    """{divergence: (loss, grads w.r.t. hs, ws, ht, wt)} at τ = TAU, λ = LAM — one jit, shared by the tests."""

    def one(d):
        kw = dict(divergence=d, temperature=TAU, jsd_lambda=LAM, chunk_size=chunk_size, top_k=top_k)
        return jax.value_and_grad(token_distill_loss, argnums=(0, 1, 2, 3))(hs, ws, ht, wt, mask, **kw)

    return {d: one(d) for d in divergences}


def _run(*args, divergences=DIVERGENCES, chunk_size=5, top_k=None):
    # Static arguments always passed the same way so that tests share compilations.
    return distill_value_and_grads(*args, divergences=divergences, chunk_size=chunk_size, top_k=top_k)


@pytest.mark.parametrize(
    "chunk_size, divergences",
    [
        (5, DIVERGENCES),  # every divergence with several chunks and a ragged last one
        (1, ("forward_kl",)),  # chunking itself is divergence-independent: rotate the rest
        (4, ("reverse_kl",)),
        (13, ("jsd",)),
        (64, ("forward_kl",)),
    ],
)
def test_token_distill_matches_naive_values_and_grads(chunk_size, divergences, naive_grads):
    hs, ws, ht, wt, mask = _inputs()
    got = _run(hs, ws, ht, wt, mask, divergences=divergences, chunk_size=chunk_size)
    for d in divergences:
        loss, grads = got[d]
        ref = numpy_divergence(hs, ws, ht, wt, d)
        np.testing.assert_allclose(loss, (ref * mask).sum() / mask.sum(), rtol=1e-6, atol=1e-7, err_msg=d)
        ref_loss, ref_grads = naive_grads[d]
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-6, err_msg=d)
        for g, r in zip(grads[:2], ref_grads):
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-6, err_msg=d)


def test_per_token_divergence_on_teacher_top_k_matches_numpy():
    """Per-token values, both distributions renormalised on the teacher's top-k support."""
    hs, ws, ht, wt, mask = _inputs(1)
    top_k = 4
    kw = dict(temperature=TAU, jsd_lambda=LAM, top_k=top_k, chunk_size=5)
    got = jax.jit(
        lambda hs, ws: {d: token_distill_divergence(hs, ws, ht, wt, divergence=d, **kw) for d in DIVERGENCES}
    )(hs, ws)
    for d in DIVERGENCES:
        ref = numpy_divergence(hs, ws, ht, wt, d, top_k=top_k)
        np.testing.assert_allclose(got[d], ref, rtol=1e-6, atol=1e-6, err_msg=d)


def test_teacher_receives_no_gradient():
    hs, ws, ht, wt, mask = _inputs(2)
    for d, (_, grads) in _run(hs, ws, ht, wt, mask).items():
        assert np.any(np.asarray(grads[0]) != 0) and np.any(np.asarray(grads[1]) != 0), d
        assert np.all(np.asarray(grads[2]) == 0) and np.all(np.asarray(grads[3]) == 0), d


def _losses_and_grads(*args, top_k=None):
    out = _run(*args, top_k=top_k)
    return np.array([out[d][0] for d in DIVERGENCES]), [g for d in DIVERGENCES for g in out[d][1]]


def test_fully_masked_rows_give_finite_loss_and_gradients():
    hs, ws, ht, wt, _ = _inputs(3)
    mask = np.zeros((B, T), bool)
    mask[1, :4] = True  # row 0 fully masked
    losses, grads = _losses_and_grads(hs, ws, ht, wt, mask)
    assert np.all(np.isfinite(losses)) and all(np.all(np.isfinite(g)) for g in grads)
    losses, grads = _losses_and_grads(hs, ws, ht, wt, np.zeros((B, T), bool))
    assert np.all(np.asarray(losses) == 0.0) and all(np.all(np.asarray(g) == 0.0) for g in grads)


def test_neg_inf_logits_give_finite_loss_and_gradients():
    # Vocab entry 2 is masked out in both models: a head column of -3e38 with positive hidden overflows to -inf.
    hs, ws, ht, wt, mask = _inputs(4)
    hs, ht = np.abs(hs) + 0.1, np.abs(ht) + 0.1
    ws[:, 2] = -3e38
    wt[:, 2] = -3e38
    losses, grads = _losses_and_grads(hs, ws, ht, wt, mask)
    assert np.all(np.isfinite(losses)) and all(np.all(np.isfinite(g)) for g in grads)
    keep = np.arange(V) != 2  # masked entry has probability 0 in both: same as dropping it
    for d, got in zip(DIVERGENCES, losses):
        ref = numpy_divergence(hs, ws[:, keep], ht, wt[:, keep], d)
        np.testing.assert_allclose(got, (ref * mask).sum() / mask.sum(), rtol=1e-5, err_msg=d)
    # Top-k larger than the finite support pulls the -inf entry into the support.
    losses, grads = _losses_and_grads(hs, ws, ht, wt, mask, top_k=V)
    assert np.all(np.isfinite(losses)) and all(np.all(np.isfinite(g)) for g in grads)


def test_bf16_large_magnitude_inputs_are_finite():
    hs, ws, ht, wt, mask = _inputs(5, jnp.bfloat16, scale=1e3)
    losses, grads = _losses_and_grads(hs, ws, ht, wt, mask)
    assert np.all(np.isfinite(losses))
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)


def test_vocab_mismatch_raises():
    hs, ws, ht, wt, mask = _inputs()
    with pytest.raises(ValueError, match=r"teacher_head has vocab 12 but student_head has 11.*tokenizer"):
        token_distill_loss(hs, ws, ht, np.zeros((DT, V + 1), np.float32), mask)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(divergence="kl"), "divergence"),
        (dict(temperature=0.0), "temperature"),
        (dict(divergence="jsd", jsd_lambda=1.0), "jsd_lambda"),
        (dict(top_k=0), "top_k"),
        (dict(top_k=V + 1), "top_k"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_invalid_options_raise(kwargs, match):
    hs, ws, ht, wt, mask = _inputs()
    with pytest.raises(ValueError, match=match):
        token_distill_loss(hs, ws, ht, wt, mask, **kwargs)


def test_mismatched_positions_raise():
    hs, ws, ht, wt, mask = _inputs()
    with pytest.raises(ValueError, match="teacher_hidden"):
        token_distill_loss(hs, ws, ht[:, :-1], wt, mask)
    with pytest.raises(ValueError, match="mask"):
        token_distill_loss(hs, ws, ht, wt, mask[:, :-1])
