"""Dense projections `x[B,T,D] @ w[D,F] (+ b)` with a weight gradient laid out for XLA:CPU."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.models.layers.lora import LoraWeight, lora_delta


@jax.custom_vjp
def _matmul(x, w):
    """``x[B,T,D] @ w[D,F]`` whose weight gradient is ordered so that XLA:CPU transposes the smaller operand.

    Autodiff computes ``dw`` as ``(g^T x)^T``, and XLA:CPU's dot wants the contracting dim of its
    left operand minor, so it copies ``g`` (``[B*T, F]``) transposed, fused with whatever produced
    ``g``: for the MLP's gate/up projections a strided loop over ``[B*T, 1376]`` that cost about
    15% of a train step on a 2-core CPU (benchmarks/train_step.py). Here ``dw`` is ``x^T g`` when
    ``D <= F`` (the transposed copy is of ``x``) and ``(g^T x)^T`` otherwise. Same values.
    """
    return jnp.einsum("btd,df->btf", x, w)


def _matmul_fwd(x, w):
    return _matmul(x, w), (x, w)


def _matmul_bwd(res, g):
    x, w = res
    dx = jnp.einsum("btf,df->btd", g, w)
    if x.shape[-1] <= g.shape[-1]:
        dw = jnp.einsum("btd,btf->df", x, g)
    else:
        dw = jnp.einsum("btf,btd->fd", g, x).T
    return dx, dw


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


#: Calibration hook (`jaxalign.models.importance`): while set, a callable `(x, w) -> None` sees each
#: projection's input and weight (traced) as a layer is traced; None, the default, costs nothing.
INPUT_TAP = None


def linear(x, w, b=None, *, custom_grad: bool = True):
    """``x @ w (+ b)`` in x's dtype, plus the LoRA branch when `w` is a `LoraWeight`.
    ``custom_grad=False`` uses plain autodiff: a custom VJP is opaque to checkpoint policies, so
    ``remat="dots"`` must see the plain ``dot_general``."""
    adapter = None
    if isinstance(w, LoraWeight):
        adapter, w = w, w.w
    if INPUT_TAP is not None:
        INPUT_TAP(x, w)
    w = w.astype(x.dtype)
    y = _matmul(x, w) if custom_grad else jnp.einsum("btd,df->btf", x, w)
    if adapter is not None:
        y = y + lora_delta(x, adapter)
    return y if b is None else y + b.astype(x.dtype)
