"""jaxalign.losses.sft: token-mean (default) and sequence-mean NLL."""

import jax
import numpy as np
import pytest

from jaxalign.losses import sft_loss

N = 10


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return (
        (-rng.uniform(5, 60, N)).astype(np.float32),
        rng.integers(1, 40, N).astype(np.float32),
        rng.uniform(0.2, 2.0, N).astype(np.float32),
    )


@pytest.mark.parametrize("use_weights", [False, True])
def test_sft_token_mean_matches_numpy(use_weights):
    lp, ln, w = _batch()
    w = w if use_weights else None
    loss, metrics = sft_loss(lp, ln, weights=w)
    ww = np.ones(N) if w is None else w.astype(np.float64)
    np.testing.assert_allclose(loss, -(ww * lp).sum() / ln.sum(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["loss/nll"], loss, rtol=0)
    np.testing.assert_allclose(metrics["num_tokens"], ln.sum(), rtol=0)
    np.testing.assert_allclose(metrics["logps/per_token"], lp.astype(np.float64).sum() / ln.sum(), rtol=1e-6)


@pytest.mark.parametrize("use_weights", [False, True])
def test_sft_sequence_mean_matches_numpy(use_weights):
    lp, ln, w = _batch(1)
    w = w if use_weights else None
    loss, _ = sft_loss(lp, ln, normalization="sequence", weights=w)
    ww = np.ones(N) if w is None else w.astype(np.float64)
    np.testing.assert_allclose(loss, -(ww * lp / ln).mean(), rtol=1e-6, atol=1e-6)


def test_sft_zero_lengths_are_finite():
    lp, ln, _ = _batch(2)
    ln[:3] = 0
    lp[:3] = 0.0
    for norm in ("token", "sequence"):
        val, g = jax.jit(jax.value_and_grad(lambda a, norm=norm: sft_loss(a, ln, normalization=norm)[0]))(lp)
        assert np.isfinite(val) and np.all(np.isfinite(g))
    val, g = jax.jit(jax.value_and_grad(lambda a: sft_loss(a, np.zeros(N, np.float32))[0]))(np.zeros(N, np.float32))
    assert float(val) == 0.0 and np.all(np.isfinite(g))


def test_sft_invalid_arguments_raise():
    lp, ln, _ = _batch()
    with pytest.raises(ValueError, match="normalization"):
        sft_loss(lp, ln, normalization="batch")
    with pytest.raises(ValueError, match="lengths"):
        sft_loss(lp, ln[:-1])
