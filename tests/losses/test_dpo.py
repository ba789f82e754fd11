"""jaxalign.losses.dpo: sigmoid / cDPO, IPO, hinge and robust DPO against NumPy float64 references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.losses import dpo_loss

N = 16


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    logps = [(-rng.uniform(5, 60, N)).astype(np.float32) for _ in range(4)]
    lengths = [rng.integers(1, 40, N).astype(np.float32) for _ in range(2)]
    weights = rng.uniform(0.2, 2.0, N).astype(np.float32)
    return logps, lengths, weights


def numpy_dpo(pc, pr, rc, rr, beta, loss_type, eps, weights, cl, rl):
    pc, pr, rc, rr, cl, rl = (np.asarray(a, np.float64) for a in (pc, pr, rc, rr, cl, rl))
    z = beta * ((pc - pr) - (rc - rr))
    if loss_type == "sigmoid":
        per = -(1 - eps) * log_sigmoid(z) - eps * log_sigmoid(-z)
    elif loss_type == "robust":
        per = (-(1 - eps) * log_sigmoid(z) + eps * log_sigmoid(-z)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        per = np.maximum(0.0, 1.0 - z)
    else:
        per = ((pc / cl - pr / rl) - (rc / cl - rr / rl) - 1 / (2 * beta)) ** 2
    w = np.ones(N) if weights is None else np.asarray(weights, np.float64)
    cr, rj = beta * (pc - rc), beta * (pr - rr)
    metrics = {
        "rewards/chosen": cr.mean(),
        "rewards/rejected": rj.mean(),
        "rewards/margins": (cr - rj).mean(),
        "rewards/accuracies": (cr > rj).mean(),
        "logps/chosen": pc.mean(),
        "logps/rejected": pr.mean(),
    }
    return (w * per).mean(), metrics


@pytest.mark.parametrize(
    "loss_type, eps",
    [("sigmoid", 0.0), ("sigmoid", 0.2), ("ipo", 0.0), ("hinge", 0.0), ("robust", 0.0), ("robust", 0.2)],
)
@pytest.mark.parametrize("use_weights", [False, True])
def test_dpo_matches_numpy(loss_type, eps, use_weights):
    (pc, pr, rc, rr), (cl, rl), w = _batch()
    w = w if use_weights else None
    beta = 0.3
    loss, metrics = dpo_loss(
        pc,
        pr,
        rc,
        rr,
        beta=beta,
        loss_type=loss_type,
        label_smoothing=eps,
        weights=w,
        chosen_lengths=cl,
        rejected_lengths=rl,
    )
    ref, ref_metrics = numpy_dpo(pc, pr, rc, rr, beta, loss_type, eps, w, cl, rl)
    assert loss.dtype == jnp.float32 and loss.shape == ()
    np.testing.assert_allclose(loss, ref, rtol=1e-6, atol=1e-6)
    assert set(metrics) == set(ref_metrics)
    for k, v in ref_metrics.items():
        assert metrics[k].dtype == jnp.float32 and metrics[k].shape == ()
        np.testing.assert_allclose(metrics[k], v, rtol=1e-6, atol=1e-5, err_msg=k)


def test_sigmoid_dpo_is_ln2_when_policy_equals_reference():
    (pc, pr, _, _), _, w = _batch(1)
    loss, metrics = dpo_loss(pc, pr, pc, pr, beta=0.1)
    # A batch mean of 16 float32 values: within float32 rounding (~2 ulp) of ln 2.
    assert abs(float(loss) - math.log(2.0)) <= 3e-7
    # A single pair: exactly ln 2 rounded to float32.
    single, _ = dpo_loss(pc[:1], pr[:1], pc[:1], pr[:1], beta=0.1)
    assert float(single) == float(np.float32(math.log(2.0)))
    assert float(metrics["rewards/margins"]) == 0.0 and float(metrics["rewards/accuracies"]) == 0.0


def test_dpo_gradient_matches_analytic_and_reference_is_frozen():
    (pc, pr, rc, rr), _, w = _batch(2)
    beta = 0.5
    grads = jax.jit(jax.grad(lambda *a: dpo_loss(*a, beta=beta, weights=w)[0], argnums=(0, 1, 2, 3)))(pc, pr, rc, rr)
    z = beta * ((pc.astype(np.float64) - pr) - (rc.astype(np.float64) - rr))
    d = -beta * w / (1 + np.exp(z)) / N  # d/dz of -log σ(z) = -σ(-z)
    np.testing.assert_allclose(grads[0], d, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(grads[1], -d, rtol=1e-5, atol=1e-9)
    assert np.all(np.asarray(grads[2]) == 0) and np.all(np.asarray(grads[3]) == 0)


def test_ipo_zero_length_responses_are_finite():
    (pc, pr, rc, rr), (cl, rl), _ = _batch(3)
    cl[:3] = 0
    pc[:3] = 0.0
    rc[:3] = 0.0
    rl[5] = 0

    def f(pc, pr):
        return dpo_loss(pc, pr, rc, rr, loss_type="ipo", chosen_lengths=cl, rejected_lengths=rl)[0]

    val, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(pc, pr)
    assert np.isfinite(val) and all(np.all(np.isfinite(g)) for g in grads)


def test_dpo_works_under_jit():
    (pc, pr, rc, rr), (cl, rl), w = _batch(4)
    f = jax.jit(lambda *a: dpo_loss(*a, beta=0.2, loss_type="ipo", weights=w, chosen_lengths=cl, rejected_lengths=rl))
    loss, _ = f(pc, pr, rc, rr)
    ref, _ = numpy_dpo(pc, pr, rc, rr, 0.2, "ipo", 0.0, w, cl, rl)
    np.testing.assert_allclose(loss, ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="policy_rejected_logps"):
        f(pc, pr[:-1], rc, rr)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(loss_type="sigmoidal"), "loss_type"),
        (dict(beta=-0.1), "beta"),
        (dict(beta=0.0), "beta"),
        (dict(label_smoothing=0.5), "label_smoothing"),
        (dict(label_smoothing=-0.1), "label_smoothing"),
        (dict(loss_type="robust", label_smoothing=0.5), "label_smoothing"),
        (dict(loss_type="hinge", label_smoothing=0.1), "label_smoothing"),
        (dict(loss_type="ipo"), "chosen_lengths"),
        (dict(weights=np.ones(N + 1, np.float32)), "weights"),
    ],
)
def test_dpo_invalid_arguments_raise(kwargs, match):
    (pc, pr, rc, rr), _, _ = _batch()
    with pytest.raises(ValueError, match=match):
        dpo_loss(pc, pr, rc, rr, **kwargs)


@pytest.mark.parametrize(
    "position, match",
    [(1, "policy_rejected_logps"), (2, "ref_chosen_logps"), (3, "ref_rejected_logps")],
)
def test_dpo_shape_mismatch_raises(position, match):
    (pc, pr, rc, rr), _, _ = _batch()
    args = [pc, pr, rc, rr]
    args[position] = args[position][:-2]
    with pytest.raises(ValueError, match=match):
        dpo_loss(*args)


def test_dpo_rejects_token_level_inputs():
    with pytest.raises(ValueError, match=r"policy_chosen_logps must have shape \[batch\]"):
        dpo_loss(*(np.zeros((2, 5), np.float32),) * 4)


def _average(logps, lengths):
    return np.where(lengths > 0, logps / np.maximum(lengths, 1), 0.0)


@pytest.mark.parametrize("loss_type, eps", [("sigmoid", 0.1), ("hinge", 0.0), ("robust", 0.2)])
def test_dpo_average_logps_matches_numpy(loss_type, eps):
    """Length normalisation: every log-prob divided by its response length (0 for an empty one), then DPO."""
    (pc, pr, rc, rr), (cl, rl), w = _batch(3)
    cl[0] = 0.0
    loss, metrics = dpo_loss(pc, pr, rc, rr, beta=2.0, loss_type=loss_type, label_smoothing=eps, weights=w,
                             chosen_lengths=cl, rejected_lengths=rl, average_logps=True)
    ref, ref_metrics = numpy_dpo(_average(pc, cl), _average(pr, rl), _average(rc, cl), _average(rr, rl), 2.0,
                                 loss_type, eps, w, cl, rl)
    np.testing.assert_allclose(loss, ref, rtol=1e-6, atol=1e-6)
    for k, v in ref_metrics.items():
        np.testing.assert_allclose(metrics[k], v, rtol=1e-6, atol=1e-5, err_msg=k)
    summed, _ = dpo_loss(pc, pr, rc, rr, beta=2.0, loss_type=loss_type, label_smoothing=eps, weights=w)
    assert abs(float(summed) - float(loss)) > 1e-3


@pytest.mark.parametrize("kwargs, match", [
    (dict(loss_type="ipo"), "IPO already"),
    (dict(rejected_lengths=None), "rejected_lengths is required with average_logps"),
])
def test_dpo_average_logps_refuses(kwargs, match):
    (pc, pr, rc, rr), (cl, rl), _ = _batch()
    args = {"chosen_lengths": cl, "rejected_lengths": rl, "average_logps": True, **kwargs}
    with pytest.raises(ValueError, match=match):
        dpo_loss(pc, pr, rc, rr, **args)
