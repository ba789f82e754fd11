"""jaxalign.losses.rdo: RDO weights from reward differences, normalised to mean 1."""

import numpy as np
import pytest

from jaxalign.losses import rdo_weights


def _d(seed=0, n=64):
    return (np.random.default_rng(seed).normal(size=n) * 2).astype(np.float32)


def numpy_weights(d, transform, tau, clip):
    d = np.asarray(d, np.float64)
    if transform == "sigmoid":
        w = 1 / (1 + np.exp(-d / tau))
    elif transform == "exp":
        w = np.exp(d / tau)
    else:
        w = np.maximum(d, 0.0)
    if clip is not None:
        w = np.minimum(w, clip)
    return w


@pytest.mark.parametrize("transform", ["sigmoid", "linear", "exp"])
@pytest.mark.parametrize("clip", [None, 0.8])
@pytest.mark.parametrize("normalize", [False, True])
def test_rdo_weights_match_numpy(transform, clip, normalize):
    d = _d()
    w = rdo_weights(d, transform, temperature=1.5, clip=clip, normalize=normalize)
    ref = numpy_weights(d, transform, 1.5, clip)
    if normalize:
        ref = ref / ref.mean()
        np.testing.assert_allclose(np.mean(np.asarray(w, np.float64)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("transform", ["sigmoid", "exp"])
def test_rdo_weights_are_finite_for_extreme_differences(transform):
    d = np.array([1e4, 3e3, 0.0, -5e3, -1e4, 50.0], np.float32)
    w = np.asarray(rdo_weights(d, transform, temperature=0.5))
    assert np.all(np.isfinite(w)) and np.all(w >= 0)
    np.testing.assert_allclose(w.mean(), 1.0, rtol=1e-6)


def test_rdo_linear_without_positive_differences_gives_uniform_weights():
    w = rdo_weights(-np.abs(_d()), "linear")
    np.testing.assert_array_equal(w, np.ones_like(w))


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(transform="softmax"), "transform"), (dict(temperature=0.0), "temperature"), (dict(clip=-1.0), "clip")],
)
def test_rdo_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rdo_weights(_d(), **kwargs)
