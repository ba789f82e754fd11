"""Loss registry: trainers pick a loss family by name, never by an if/elif chain."""

from __future__ import annotations

from collections.abc import Callable

from jaxalign.losses.dadpo import dadpo_loss
from jaxalign.losses.difference import difference_model_loss
from jaxalign.losses.dpo import dpo_loss
from jaxalign.losses.kto import kto_loss
from jaxalign.losses.reward import bradley_terry_loss
from jaxalign.losses.rrhf import rrhf_loss
from jaxalign.losses.sft import sft_loss

__all__ = ["LOSSES", "get_loss", "register_loss"]

LossFn = Callable[..., tuple]

LOSSES: dict[str, LossFn] = {
    "dpo": dpo_loss,
    "dadpo": dadpo_loss,
    "kto": kto_loss,
    "rrhf": rrhf_loss,
    "sft": sft_loss,
    "reward_model": bradley_terry_loss,
    "bradley_terry": bradley_terry_loss,
    "difference_model": difference_model_loss,
}


def get_loss(name: str) -> LossFn:
    """The loss function registered as ``name``; ``ValueError`` listing the registered names otherwise."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown loss name {name!r}; registered: {', '.join(sorted(LOSSES))}") from None


def register_loss(name: str, fn: LossFn, *, overwrite: bool = False) -> LossFn:
    """Register ``fn`` under ``name`` (refuses to replace an existing entry unless ``overwrite``)."""
    if not overwrite and name in LOSSES and LOSSES[name] is not fn:
        raise ValueError(f"loss name {name!r} is already registered; pass overwrite=True to replace it")
    LOSSES[name] = fn
    return fn
