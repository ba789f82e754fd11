"""jaxalign.losses.dadpo: daDPO logit z = β₁(Δθ − Δref) + β₂(Δθ − Δte)."""

import jax
import numpy as np
import pytest

from jaxalign.losses import dadpo_loss, dpo_loss

N = 16


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    logps = [(-rng.uniform(5, 60, N)).astype(np.float32) for _ in range(6)]
    return logps, rng.uniform(0.2, 2.0, N).astype(np.float32)


def numpy_dadpo(pc, pr, rc, rr, tc, tr, b1, b2, w):
    pc, pr, rc, rr, tc, tr = (np.asarray(a, np.float64) for a in (pc, pr, rc, rr, tc, tr))
    dp = pc - pr
    z = b1 * (dp - (rc - rr)) + b2 * (dp - (tc - tr))
    per = np.logaddexp(0.0, -z)  # -log σ(z)
    w = np.ones(N) if w is None else np.asarray(w, np.float64)
    cr = b1 * (pc - rc) + b2 * (pc - tc)
    rj = b1 * (pr - rr) + b2 * (pr - tr)
    metrics = {
        "rewards/chosen": cr.mean(),
        "rewards/rejected": rj.mean(),
        "rewards/margins": (cr - rj).mean(),
        "rewards/accuracies": (cr > rj).mean(),
        "rewards/ref_margins": (b1 * (dp - (rc - rr))).mean(),
        "rewards/teacher_margins": (b2 * (dp - (tc - tr))).mean(),
        "logps/chosen": pc.mean(),
        "logps/rejected": pr.mean(),
        "logps/teacher_chosen": tc.mean(),
        "logps/teacher_rejected": tr.mean(),
    }
    return (w * per).mean(), metrics


@pytest.mark.parametrize("use_weights", [False, True])
def test_dadpo_matches_numpy(use_weights):
    logps, w = _batch()
    w = w if use_weights else None
    loss, metrics = dadpo_loss(*logps, beta_ref=0.2, beta_teacher=0.05, weights=w)
    ref, ref_metrics = numpy_dadpo(*logps, 0.2, 0.05, w)
    np.testing.assert_allclose(loss, ref, rtol=1e-6, atol=1e-6)
    assert set(metrics) == set(ref_metrics)
    for k, v in ref_metrics.items():
        np.testing.assert_allclose(metrics[k], v, rtol=1e-6, atol=1e-5, err_msg=k)


def test_dadpo_with_zero_teacher_beta_is_dpo():
    logps, w = _batch(1)
    loss, metrics = dadpo_loss(*logps, beta_ref=0.3, beta_teacher=0.0, weights=w)
    ref_loss, ref_metrics = dpo_loss(*logps[:4], beta=0.3, weights=w)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-7, atol=0)
    for k, v in ref_metrics.items():
        np.testing.assert_allclose(metrics[k], v, rtol=1e-7, atol=0, err_msg=k)


def test_dadpo_reference_and_teacher_get_no_gradient():
    logps, _ = _batch(2)
    grads = jax.jit(jax.grad(lambda *a: dadpo_loss(*a)[0], argnums=(0, 1, 2, 3, 4, 5)))(*logps)
    assert np.any(np.asarray(grads[0]) != 0) and np.any(np.asarray(grads[1]) != 0)
    assert all(np.all(np.asarray(g) == 0) for g in grads[2:])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(beta_ref=-0.1), "beta_ref"),
        (dict(beta_teacher=-1.0), "beta_teacher"),
        (dict(beta_ref=0.0, beta_teacher=0.0), "beta_ref \\+ beta_teacher"),
    ],
)
def test_dadpo_invalid_betas_raise(kwargs, match):
    logps, _ = _batch()
    with pytest.raises(ValueError, match=match):
        dadpo_loss(*logps, **kwargs)


def test_dadpo_teacher_shape_mismatch_raises():
    logps, _ = _batch()
    logps[5] = logps[5][:3]
    with pytest.raises(ValueError, match="teacher_rejected_logps"):
        dadpo_loss(*logps)


def test_dadpo_average_logps_matches_numpy():
    """Length normalisation: policy, reference and teacher log-probs divided by the response lengths."""
    logps, w = _batch(4)
    rng = np.random.default_rng(5)
    cl, rl = (rng.integers(1, 40, N).astype(np.float32) for _ in range(2))
    loss, metrics = dadpo_loss(*logps, beta_ref=0.2, beta_teacher=0.05, weights=w, chosen_lengths=cl,
                               rejected_lengths=rl, average_logps=True)
    pc, pr, rc, rr, tc, tr = logps
    ref, ref_metrics = numpy_dadpo(pc / cl, pr / rl, rc / cl, rr / rl, tc / cl, tr / rl, 0.2, 0.05, w)
    np.testing.assert_allclose(loss, ref, rtol=1e-6, atol=1e-6)
    for k, v in ref_metrics.items():
        np.testing.assert_allclose(metrics[k], v, rtol=1e-6, atol=1e-5, err_msg=k)
    with pytest.raises(ValueError, match="chosen_lengths is required with average_logps"):
        dadpo_loss(*logps, average_logps=True)
