"""jaxalign.losses.kto: KTO with a detached, clamped batch KL estimate z₀."""

import jax
import numpy as np
import pytest

from jaxalign.losses import kto_loss

N = 12


def _batch(seed=0, kl_shift=0.0):
    rng = np.random.default_rng(seed)
    pl, rl = (-rng.uniform(5, 40, N)).astype(np.float32), (-rng.uniform(5, 40, N)).astype(np.float32)
    desirable = rng.random(N) < 0.5
    desirable[:2] = [True, False]
    pkl = (-rng.uniform(5, 40, N)).astype(np.float32)
    rkl = (pkl - rng.normal(kl_shift, 1.0, N)).astype(np.float32)
    w = rng.uniform(0.2, 2.0, N).astype(np.float32)
    return pl, rl, desirable, pkl, rkl, w


def numpy_kto(pl, rl, desirable, pkl, rkl, beta, lam_d, lam_u, w):
    pl, rl, pkl, rkl = (np.asarray(a, np.float64) for a in (pl, rl, pkl, rkl))
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    z0 = max(0.0, (pkl - rkl).mean())
    r = pl - rl
    per = np.where(desirable, lam_d * (1 - sig(beta * (r - z0))), lam_u * (1 - sig(beta * (z0 - r))))
    w = np.ones(N) if w is None else np.asarray(w, np.float64)
    return (w * per).mean(), z0, beta * r


@pytest.mark.parametrize("kl_shift", [2.0, -2.0], ids=["kl_positive", "kl_clamped"])
@pytest.mark.parametrize("use_weights", [False, True])
def test_kto_matches_numpy(kl_shift, use_weights):
    pl, rl, des, pkl, rkl, w = _batch(kl_shift=kl_shift)
    w = w if use_weights else None
    loss, metrics = kto_loss(pl, rl, des, pkl, rkl, beta=0.2, desirable_weight=1.3, undesirable_weight=0.7, weights=w)
    ref, z0, rewards = numpy_kto(pl, rl, des, pkl, rkl, 0.2, 1.3, 0.7, w)
    np.testing.assert_allclose(loss, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["kl"], z0, rtol=1e-6, atol=1e-6)
    if kl_shift < 0:
        assert float(metrics["kl"]) == 0.0
    np.testing.assert_allclose(metrics["rewards/chosen"], rewards[des].mean(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["rewards/rejected"], rewards[~des].mean(), rtol=1e-6, atol=1e-6)
    acc = np.where(des, rewards > 0, rewards < 0).mean()
    np.testing.assert_allclose(metrics["rewards/accuracies"], acc, rtol=1e-6)
    np.testing.assert_allclose(metrics["logps/chosen"], pl[des].astype(np.float64).mean(), rtol=1e-6)


def test_kto_kl_estimate_is_detached():
    pl, rl, des, pkl, rkl, _ = _batch(1, kl_shift=3.0)
    grads = jax.jit(jax.grad(lambda a, b: kto_loss(a, rl, des, b, rkl)[0], argnums=(0, 1)))(pl, pkl)
    assert np.any(np.asarray(grads[0]) != 0) and np.all(np.asarray(grads[1]) == 0)


def test_kto_without_kl_inputs_uses_zero():
    pl, rl, des, _, _, _ = _batch(2)
    loss, metrics = kto_loss(pl, rl, des, beta=0.1)
    ref, _, _ = numpy_kto(pl, rl, des, np.zeros(N), np.zeros(N), 0.1, 1.0, 1.0, None)
    np.testing.assert_allclose(loss, ref, rtol=1e-6, atol=1e-6)
    assert float(metrics["kl"]) == 0.0


def test_kto_single_class_batch_metrics_are_finite():
    pl, rl, _, pkl, rkl, _ = _batch(3)
    loss, metrics = kto_loss(pl, rl, np.ones(N, bool), pkl, rkl)
    assert np.isfinite(loss) and all(np.isfinite(v) for v in metrics.values())
    assert float(metrics["rewards/rejected"]) == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta=-1.0), "beta"),
        (dict(desirable_weight=-1.0), "desirable_weight"),
        (dict(ref_kl_logps=None), "ref_kl_logps"),
        (dict(ref_logps=np.zeros(N - 1, np.float32)), "ref_logps"),
        (dict(is_desirable=np.ones(N - 1, bool)), "is_desirable"),
    ],
)
def test_kto_invalid_arguments_raise(kwargs, match):
    pl, rl, des, pkl, rkl, _ = _batch()
    args = dict(policy_logps=pl, ref_logps=rl, is_desirable=des, policy_kl_logps=pkl, ref_kl_logps=rkl)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        kto_loss(**args)
