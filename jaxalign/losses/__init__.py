"""Offline preference / distillation objectives: pure functions returning ``(loss, metrics)``.

One module per family; the objectives that train with them (``jaxalign.objectives``) are chosen by name.
Inputs are ``[batch]`` float32 sequence log-probs (see ``jaxalign.ops``);
the batch loss is ``mean(weights * per_example_loss)``.
"""

from jaxalign.losses.composite import composite_loss
from jaxalign.losses.dadpo import dadpo_loss
from jaxalign.losses.difference import DIFFERENCE_LABEL_TYPES, antisymmetric_difference, difference_model_loss
from jaxalign.losses.dpo import DPO_LOSS_TYPES, dpo_loss
from jaxalign.losses.kto import kto_loss
from jaxalign.losses.rdo import RDO_TRANSFORMS, rdo_weights
from jaxalign.losses.reward import bradley_terry_loss
from jaxalign.losses.rrhf import rrhf_loss
from jaxalign.losses.sft import SFT_NORMALIZATIONS, sft_loss

__all__ = [
    "DIFFERENCE_LABEL_TYPES",
    "DPO_LOSS_TYPES",
    "RDO_TRANSFORMS",
    "SFT_NORMALIZATIONS",
    "antisymmetric_difference",
    "bradley_terry_loss",
    "composite_loss",
    "dadpo_loss",
    "difference_model_loss",
    "dpo_loss",
    "kto_loss",
    "rdo_weights",
    "rrhf_loss",
    "sft_loss",
]
