"""jaxalign.losses.rrhf: length-normalised ranking hinge + NLL of the chosen response."""

import jax
import numpy as np
import pytest

from jaxalign.losses import rrhf_loss

N = 16


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    pc, pr = (-rng.uniform(5, 60, N)).astype(np.float32), (-rng.uniform(5, 60, N)).astype(np.float32)
    cl, rl = rng.integers(1, 40, N).astype(np.float32), rng.integers(1, 40, N).astype(np.float32)
    return pc, pr, cl, rl, rng.uniform(0.2, 2.0, N).astype(np.float32)


def numpy_rrhf(pc, pr, cl, rl, nll_weight, w):
    pw, pl = np.asarray(pc, np.float64) / cl, np.asarray(pr, np.float64) / rl
    w = np.ones(N) if w is None else np.asarray(w, np.float64)
    ranking = (w * np.maximum(0.0, pl - pw)).mean()
    nll = -pw.mean()
    return ranking + nll_weight * nll, ranking, nll


@pytest.mark.parametrize("use_weights", [False, True])
def test_rrhf_matches_numpy(use_weights):
    pc, pr, cl, rl, w = _batch()
    w = w if use_weights else None
    loss, metrics = rrhf_loss(pc, pr, cl, rl, nll_weight=0.5, weights=w)
    ref, ranking, nll = numpy_rrhf(pc, pr, cl, rl, 0.5, w)
    np.testing.assert_allclose(loss, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["loss/ranking"], ranking, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["loss/nll"], nll, rtol=1e-6, atol=1e-6)
    pw, pl = pc / cl, pr / rl
    np.testing.assert_allclose(metrics["rewards/accuracies"], (pw > pl).mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["logps/chosen"], pc.astype(np.float64).mean(), rtol=1e-6)


def test_rrhf_weights_apply_to_ranking_term_only():
    pc, pr, cl, rl, w = _batch(1)
    _, m_w = rrhf_loss(pc, pr, cl, rl, weights=w)
    _, m_1 = rrhf_loss(pc, pr, cl, rl)
    np.testing.assert_allclose(m_w["loss/nll"], m_1["loss/nll"], rtol=0, atol=0)
    assert float(m_w["loss/ranking"]) != float(m_1["loss/ranking"])


def test_rrhf_zero_length_responses_are_finite():
    pc, pr, cl, rl, _ = _batch(2)
    cl[:2] = 0
    pc[:2] = 0.0
    rl[3] = 0
    val, grads = jax.jit(jax.value_and_grad(lambda a, b: rrhf_loss(a, b, cl, rl)[0], argnums=(0, 1)))(pc, pr)
    assert np.isfinite(val) and all(np.all(np.isfinite(g)) for g in grads)


def test_rrhf_invalid_arguments_raise():
    pc, pr, cl, rl, _ = _batch()
    with pytest.raises(ValueError, match="nll_weight"):
        rrhf_loss(pc, pr, cl, rl, nll_weight=-1.0)
    with pytest.raises(ValueError, match="policy_rejected_logps"):
        rrhf_loss(pc, pr[:-1], cl, rl)
    with pytest.raises(ValueError, match="rejected_lengths"):
        rrhf_loss(pc, pr, cl, rl[:-1])
