"""jaxalign.losses.reward: Bradley–Terry reward-model loss."""

import numpy as np
import pytest

from jaxalign.losses import bradley_terry_loss

N = 16


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=N).astype(np.float32) * 3,
        rng.normal(size=N).astype(np.float32) * 3,
        rng.uniform(0.2, 2.0, N).astype(np.float32),
        rng.uniform(0, 1, N).astype(np.float32),
    )


@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("margin", ["none", "scalar", "per_pair"])
def test_bradley_terry_matches_numpy(use_weights, margin):
    rc, rr, w, m = _batch()
    w = w if use_weights else None
    m = {"none": None, "scalar": 0.5, "per_pair": m}[margin]
    loss, metrics = bradley_terry_loss(rc, rr, weights=w, margin=m)
    z = rc.astype(np.float64) - rr - (0.0 if m is None else np.asarray(m, np.float64))
    ww = np.ones(N) if w is None else w.astype(np.float64)
    np.testing.assert_allclose(loss, (ww * np.logaddexp(0.0, -z)).mean(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["rewards/margins"], (rc.astype(np.float64) - rr).mean(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["rewards/accuracies"], (rc > rr).mean(), rtol=1e-6)
    np.testing.assert_allclose(metrics["rewards/chosen"], rc.astype(np.float64).mean(), rtol=1e-6, atol=1e-6)


def test_bradley_terry_invalid_arguments_raise():
    rc, rr, _, _ = _batch()
    with pytest.raises(ValueError, match="rejected_rewards"):
        bradley_terry_loss(rc, rr[:-1])
    with pytest.raises(ValueError, match="margin"):
        bradley_terry_loss(rc, rr, margin=np.zeros(N - 1, np.float32))
