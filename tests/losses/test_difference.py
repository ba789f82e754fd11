"""jaxalign.losses.difference: difference model trained on both orders; antisymmetric inference."""

import numpy as np
import pytest

from jaxalign.losses import antisymmetric_difference, difference_model_loss

N = 16


def log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    fwd = (rng.normal(size=N) * 2).astype(np.float32)
    bwd = (-fwd + rng.normal(size=N) * 0.5).astype(np.float32)
    return fwd, bwd, rng.uniform(0.2, 2.0, N).astype(np.float32), rng


@pytest.mark.parametrize("label_type", ["binary", "soft", "graded"])
@pytest.mark.parametrize("use_weights", [False, True])
def test_difference_model_loss_matches_numpy(label_type, use_weights):
    fwd, bwd, w, rng = _batch()
    w = w if use_weights else None
    f, b = fwd.astype(np.float64), bwd.astype(np.float64)
    if label_type == "binary":
        labels = None
        per = -log_sigmoid(f) - log_sigmoid(-b)
    elif label_type == "soft":
        labels = rng.uniform(0, 1, N).astype(np.float32)
        p = labels.astype(np.float64)
        per = -(p * log_sigmoid(f) + (1 - p) * log_sigmoid(-f)) - ((1 - p) * log_sigmoid(b) + p * log_sigmoid(-b))
    else:
        labels = rng.normal(size=N).astype(np.float32)
        g = labels.astype(np.float64)
        per = (f - g) ** 2 + (b + g) ** 2
    loss, metrics = difference_model_loss(fwd, bwd, labels=labels, label_type=label_type, weights=w)
    ww = np.ones(N) if w is None else w.astype(np.float64)
    np.testing.assert_allclose(loss, (ww * per).mean(), rtol=1e-6, atol=1e-6)
    d = (f - b) / 2
    np.testing.assert_allclose(metrics["rewards/margins"], d.mean(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(metrics["difference/antisymmetry_gap"], np.abs(f + b).mean(), rtol=1e-6, atol=1e-6)


def test_soft_labels_of_one_equal_binary():
    fwd, bwd, _, _ = _batch(1)
    soft, _ = difference_model_loss(fwd, bwd, labels=np.ones(N, np.float32), label_type="soft")
    binary, _ = difference_model_loss(fwd, bwd)
    np.testing.assert_allclose(soft, binary, rtol=1e-6)


def test_antisymmetric_difference():
    fwd, bwd, _, _ = _batch(2)
    np.testing.assert_allclose(antisymmetric_difference(fwd, bwd), (fwd.astype(np.float64) - bwd) / 2, rtol=1e-6)
    np.testing.assert_allclose(antisymmetric_difference(bwd, fwd), -antisymmetric_difference(fwd, bwd), rtol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(label_type="ordinal"), "label_type"),
        (dict(label_type="graded"), "labels"),
        (dict(labels=np.ones(N, np.float32)), "labels"),
        (dict(d_backward=np.zeros(N - 1, np.float32)), "d_backward"),
    ],
)
def test_difference_model_invalid_arguments_raise(kwargs, match):
    fwd, bwd, _, _ = _batch()
    args = dict(d_forward=fwd, d_backward=bwd)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        difference_model_loss(**args)
