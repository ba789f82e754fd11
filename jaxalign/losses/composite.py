"""Composite objective ``L = L_pref + α·L_kd + γ·L_nll``.

Any preference loss plus an optional token-level distillation term
(``jaxalign.ops.token_distill_loss``) and an optional NLL term on the chosen
responses (``sft_loss``): daDPO + KD, DPO + KD and RPO-style DPO + NLL are
configurations of this function, not new losses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._common import Metrics
from jaxalign.ops._validate import check_scalar, concrete_float

__all__ = ["composite_loss"]


def _term(name: str, weight_name: str, loss: jax.Array | None, weight: float) -> jax.Array:
    check_scalar(weight_name, weight, nonnegative=True)
    w = concrete_float(weight)
    if loss is None:
        if w is None or w != 0.0:
            raise ValueError(f"{weight_name}={weight} but {name} is None: pass {name} or set {weight_name}=0")
        return jnp.zeros((), jnp.float32)
    if jnp.ndim(loss) != 0:
        raise ValueError(f"{name} must be a scalar, got shape {jnp.shape(loss)}")
    if w == 0.0:  # skip entirely so a non-finite unused term cannot poison the total
        return jnp.zeros((), jnp.float32)
    return weight * jnp.asarray(loss, jnp.float32)


def composite_loss(
    pref_loss: jax.Array,
    pref_metrics: Metrics,
    *,
    kd_loss: jax.Array | None = None,
    kd_weight: float = 0.0,
    nll_loss: jax.Array | None = None,
    nll_weight: float = 0.0,
) -> tuple[jax.Array, Metrics]:
    """Add weighted KD and NLL terms to a preference loss.

    Args:
      pref_loss, pref_metrics: the ``(loss, metrics)`` of any registered loss.
      kd_loss: scalar token-level distillation loss; kd_weight: α ≥ 0.
      nll_loss: scalar NLL of the chosen responses (``sft_loss(...)[0]``);
        nll_weight: γ ≥ 0.
      A positive weight with a missing term is a ``ValueError``; a term with
      weight 0 is logged but not added.

    Returns:
      ``(total, metrics)``: ``pref_metrics`` plus ``loss/preference``,
      ``loss/kd``, ``loss/nll`` (unweighted terms, 0 when absent) and
      ``loss/total``.
    """
    if jnp.ndim(pref_loss) != 0:
        raise ValueError(f"pref_loss must be a scalar, got shape {jnp.shape(pref_loss)}")
    pref = jnp.asarray(pref_loss, jnp.float32)
    total = (
        pref + _term("kd_loss", "kd_weight", kd_loss, kd_weight) + _term("nll_loss", "nll_weight", nll_loss, nll_weight)
    )
    sg = jax.lax.stop_gradient
    zero = jnp.zeros((), jnp.float32)
    metrics = dict(pref_metrics)
    metrics["loss/preference"] = sg(pref)
    metrics["loss/kd"] = zero if kd_loss is None else sg(jnp.asarray(kd_loss, jnp.float32))
    metrics["loss/nll"] = zero if nll_loss is None else sg(jnp.asarray(nll_loss, jnp.float32))
    metrics["loss/total"] = sg(total)
    return total, metrics
