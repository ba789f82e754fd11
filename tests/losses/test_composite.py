"""jaxalign.losses.composite: L = L_pref + α·L_kd + γ·L_nll as configuration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.losses import composite_loss, dadpo_loss, dpo_loss, sft_loss
from jaxalign.ops import token_distill_loss

N = 8


def _pref():
    rng = np.random.default_rng(0)
    logps = [(-rng.uniform(5, 60, N)).astype(np.float32) for _ in range(6)]
    lengths = rng.integers(1, 30, N).astype(np.float32)
    return logps, lengths


def test_composite_adds_weighted_terms_and_reports_each():
    logps, lengths = _pref()
    pref, pm = dpo_loss(*logps[:4])
    nll, _ = sft_loss(logps[0], lengths)
    kd = jnp.float32(0.37)
    total, metrics = composite_loss(pref, pm, kd_loss=kd, kd_weight=0.5, nll_loss=nll, nll_weight=2.0)
    np.testing.assert_allclose(total, float(pref) + 0.5 * 0.37 + 2.0 * float(nll), rtol=1e-6)
    assert set(pm) <= set(metrics)
    for key, want in (("loss/preference", pref), ("loss/kd", kd), ("loss/nll", nll), ("loss/total", total)):
        np.testing.assert_allclose(metrics[key], want, rtol=0, err_msg=key)


def test_dadpo_plus_token_kd_is_a_configuration():
    """daDPO + token-level KD trained end to end through the composite (gradients reach the student head)."""
    rng = np.random.default_rng(1)
    B, T, D, V = 2, 5, 4, 7
    hs, ht = rng.normal(size=(B, T, D)).astype(np.float32), rng.normal(size=(B, T, D)).astype(np.float32)
    ws, wt = rng.normal(size=(D, V)).astype(np.float32), rng.normal(size=(D, V)).astype(np.float32)
    mask = np.ones((B, T), bool)
    logps, _ = _pref()

    def objective(ws, pc):
        pref, pm = dadpo_loss(pc, *logps[1:], beta_ref=0.1, beta_teacher=0.1)
        kd = token_distill_loss(hs, ws, ht, wt, mask, chunk_size=2)
        return composite_loss(pref, pm, kd_loss=kd, kd_weight=0.3)

    (total, metrics), grads = jax.jit(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))(ws, logps[0])
    np.testing.assert_allclose(total, metrics["loss/preference"] + 0.3 * metrics["loss/kd"], rtol=1e-6)
    assert np.any(np.asarray(grads[0]) != 0) and np.any(np.asarray(grads[1]) != 0)


def test_zero_weight_term_is_not_added():
    logps, _ = _pref()
    pref, pm = dpo_loss(*logps[:4])
    total, metrics = composite_loss(pref, pm, kd_loss=jnp.float32(jnp.nan), kd_weight=0.0)
    assert float(total) == float(pref) and np.isnan(metrics["loss/kd"])
    total, metrics = composite_loss(pref, pm)
    assert float(total) == float(pref) and float(metrics["loss/kd"]) == 0.0 and float(metrics["loss/nll"]) == 0.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kd_weight=0.5), "kd_loss"),
        (dict(nll_weight=1.0), "nll_loss"),
        (dict(kd_loss=jnp.float32(1.0), kd_weight=-0.5), "kd_weight"),
        (dict(nll_loss=jnp.ones(3), nll_weight=1.0), "nll_loss"),
    ],
)
def test_composite_invalid_arguments_raise(kwargs, match):
    logps, _ = _pref()
    pref, pm = dpo_loss(*logps[:4])
    with pytest.raises(ValueError, match=match):
        composite_loss(pref, pm, **kwargs)
