"""jaxalign.ops.distill, cached teacher: top-k + residual extraction and the divergence over k + 1 buckets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.ops import DIVERGENCES, cached_distill_divergence, cached_distill_loss, teacher_topk, token_distill_loss
from tests.ops.test_distill import LAM, B, T, V, _inputs, _log_softmax64

K = 4


def numpy_topk(ht, wt, k):
    """Float64 oracle of teacher_topk: ids of the k largest log-probs, those log-probs, log(1 − Σ p)."""
    lp = _log_softmax64(np.asarray(ht, np.float64) @ np.asarray(wt, np.float64))
    ids = np.argsort(-lp, axis=-1, kind="stable")[..., :k]
    top = np.take_along_axis(lp, ids, -1)
    with np.errstate(divide="ignore"):
        residual = np.log1p(-np.exp(top).sum(-1))
    return ids, top, residual


def numpy_cached_divergence(hs, ws, ids, logps, residual, divergence, lam=LAM):
    """Float64 oracle: teacher (p_1..p_k, 1 − Σp) against student (q at ids, 1 − Σ q at ids)."""
    lq = _log_softmax64(np.asarray(hs, np.float64) @ np.asarray(ws, np.float64))
    q = np.exp(np.take_along_axis(lq, ids, -1))
    q = np.concatenate([q, np.clip(1.0 - q.sum(-1, keepdims=True), 0.0, None)], -1)
    p = np.concatenate([np.exp(np.asarray(logps, np.float64)), np.exp(np.asarray(residual, np.float64))[..., None]], -1)

    def kl(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * (np.log(a) - np.log(b)), 0.0).sum(-1)

    if divergence == "forward_kl":
        return kl(p, q)
    if divergence == "reverse_kl":
        return kl(q, p)
    m = lam * p + (1 - lam) * q
    return lam * kl(p, m) + (1 - lam) * kl(q, m)


def test_teacher_topk_matches_numpy():
    _, _, ht, wt, _ = _inputs(0)
    ids, logps, residual = jax.jit(lambda h, w: teacher_topk(h, w, K, chunk_size=5))(ht, wt)
    rid, rlogps, rres = numpy_topk(ht, wt, K)
    np.testing.assert_array_equal(ids, rid)
    np.testing.assert_allclose(logps, rlogps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(residual, rres, rtol=1e-5, atol=1e-6)
    assert ids.dtype == jnp.int32 and logps.dtype == jnp.float32
    # k = V: every id once, no residual mass.
    ids, _, residual = teacher_topk(ht, wt, V, chunk_size=5)
    assert np.all(np.sort(np.asarray(ids), -1) == np.arange(V)) and np.all(np.asarray(residual) == -np.inf)


@pytest.mark.parametrize("divergence", DIVERGENCES)
def test_cached_divergence_matches_float64_oracle(divergence):
    hs, ws, ht, wt, mask = _inputs(1)
    ids, logps, residual = numpy_topk(ht, wt, K)
    got = cached_distill_divergence(hs, ws, ids.astype(np.int32), logps.astype(np.float32),
                                    residual.astype(np.float32), np.ones((B, T), bool), divergence=divergence,
                                    jsd_lambda=LAM, chunk_size=5)
    ref = numpy_cached_divergence(hs, ws, ids, logps, residual, divergence)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    loss = cached_distill_loss(hs, ws, ids.astype(np.int32), logps.astype(np.float32), residual.astype(np.float32),
                               mask, divergence=divergence, jsd_lambda=LAM, chunk_size=5)
    np.testing.assert_allclose(loss, (ref * mask).sum() / mask.sum(), rtol=1e-5)


@jax.jit
def _both_losses(hs, ws, ht, wt, mask):
    """{divergence: ((teacher-in-step loss, grads), (cached k = V loss, grads))} w.r.t. the student."""
    ids, logps, residual = teacher_topk(ht, wt, V, chunk_size=5)
    out = {}
    for d in DIVERGENCES:
        kw = dict(divergence=d, jsd_lambda=LAM, chunk_size=5)
        direct = jax.value_and_grad(lambda a, b: token_distill_loss(a, b, ht, wt, mask, **kw), argnums=(0, 1))(hs, ws)
        cached = jax.value_and_grad(lambda a, b: cached_distill_loss(a, b, ids, logps, residual, mask, **kw),
                                    argnums=(0, 1))(hs, ws)
        out[d] = direct, cached
    return out


def test_full_vocab_cache_equals_teacher_in_step():
    hs, ws, ht, wt, mask = _inputs(2)
    for d, ((loss, grads), (closs, cgrads)) in _both_losses(hs, ws, ht, wt, mask).items():
        np.testing.assert_allclose(closs, loss, rtol=1e-5, atol=1e-6, err_msg=d)
        for g, c in zip(grads, cgrads):
            assert np.all(np.isfinite(np.asarray(c))), d
            np.testing.assert_allclose(c, g, rtol=1e-5, atol=1e-6, err_msg=d)


def test_top_k_option_equals_renormalised_top_k_of_the_teacher_in_step():
    hs, ws, ht, wt, mask = _inputs(3)
    ids, logps, residual = teacher_topk(ht, wt, K + 2)
    for d in DIVERGENCES:
        got = cached_distill_loss(hs, ws, ids, logps, residual, mask, divergence=d, jsd_lambda=LAM, top_k=K)
        ref = token_distill_loss(hs, ws, ht, wt, mask, divergence=d, jsd_lambda=LAM, top_k=K)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6, err_msg=d)


@pytest.mark.parametrize("k", [K, V])
def test_garbage_off_the_mask_gives_finite_loss_and_gradients(k):
    """Off-mask positions (padding) may hold anything: repeated ids, -inf or NaN values."""
    hs, ws, ht, wt, mask = _inputs(4)
    ids, logps, residual = (np.array(x) for x in teacher_topk(ht, wt, k))
    off = ~mask
    ids[off], logps[off], residual[off] = 0, np.nan, -np.inf
    for d in DIVERGENCES:
        loss, grads = jax.value_and_grad(
            lambda a, b: cached_distill_loss(a, b, ids, logps, residual, mask, divergence=d, chunk_size=4),
            argnums=(0, 1))(hs, ws)
        assert np.isfinite(loss) and all(np.all(np.isfinite(np.asarray(g))) for g in grads), d


def test_bad_shapes_and_options_raise():
    hs, ws, ht, wt, mask = _inputs(5)
    ids, logps, residual = teacher_topk(ht, wt, K)
    with pytest.raises(ValueError, match="teacher_ids has shape"):
        cached_distill_loss(hs, ws, ids[:, :-1], logps, residual, mask)
    with pytest.raises(ValueError, match="top_k=5 exceeds"):
        cached_distill_loss(hs, ws, ids, logps, residual, mask, top_k=K + 1)
    with pytest.raises(ValueError, match="exceeds the student's vocab"):
        cached_distill_loss(hs, ws[:, :3], ids, logps, residual, mask)
    with pytest.raises(ValueError, match="exceeds the vocab size"):
        teacher_topk(ht, wt, V + 1)
