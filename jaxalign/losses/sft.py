"""SFT / distilled SFT (dSFT): negative log-likelihood of the target responses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxalign.losses._common import Metrics, batch_args, check_choice, length_normalise, safe_div

__all__ = ["SFT_NORMALIZATIONS", "sft_loss"]

SFT_NORMALIZATIONS = ("token", "sequence")


def sft_loss(
    logps: jax.Array,
    lengths: jax.Array,
    *,
    normalization: str = "token",
    weights: jax.Array | None = None,
    num_tokens: jax.Array | float | None = None,
) -> tuple[jax.Array, Metrics]:
    """Token-mean NLL of a batch of responses.

    Args:
      logps: ``[batch]`` summed response log-probs (``sequence_logprobs``).
      lengths: ``[batch]`` response token counts (the mask sums).
      normalization:
        ``"token"`` (default): ``−Σ_i w_i·logp_i / Σ_i len_i`` — every token
          in the batch counts equally (the usual LM loss);
        ``"sequence"``: ``−mean_i(w_i · logp_i / len_i)`` — every response
          counts equally.
        Empty responses / batches contribute 0, never NaN.
      weights: optional ``[batch]`` per-example weights.
      num_tokens: the ``"token"`` denominator (default ``Σ_i len_i``). Gradient
        accumulation passes the whole batch's count (divided by the number of
        micro-batches), so the mean of the micro-batch losses is the full
        batch's loss even when micro-batches hold different token counts.

    Returns:
      ``(loss, metrics)`` with ``loss/nll`` (the loss), ``logps/chosen``
      (mean summed log-prob), ``logps/per_token`` (batch token-mean
      log-prob) and ``num_tokens``.
    """
    check_choice("normalization", normalization, SFT_NORMALIZATIONS)
    lp, ln, w = batch_args("logps", logps, lengths=lengths, weights=weights)
    weighted = lp if w is None else w * lp
    if normalization == "token":
        denominator = jnp.sum(ln) if num_tokens is None else jnp.asarray(num_tokens, jnp.float32)
        loss = -safe_div(jnp.sum(weighted), denominator)
    else:
        loss = -jnp.mean(length_normalise(weighted, ln))
    sg = jax.lax.stop_gradient
    metrics = {
        "loss/nll": sg(loss),
        "logps/chosen": jnp.mean(sg(lp)),
        "logps/per_token": safe_div(jnp.sum(sg(lp)), jnp.sum(ln)),
        "num_tokens": jnp.sum(ln),
    }
    return loss.astype(jnp.float32), {k: v.astype(jnp.float32) for k, v in metrics.items()}
