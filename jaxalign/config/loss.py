"""The ``loss`` section's common settings, RDO weights, and the ``objective`` section (user objectives).

Each objective's own settings (``loss.beta``, ``loss.beta_teacher``, ``loss.kto_desirable_weight`` ...)
are declared by the objective (``jaxalign.objectives``); the ``loss`` section's class,
``LossConfig``, is ``LossCommon`` plus every registered objective's settings, built by
``jaxalign.objectives.registry.loss_config_class``. The settings here apply to every objective
(or, for ``kd_*`` and ``nll_weight``, to every objective that takes the extra terms).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from jaxalign.config.fields import setting
from jaxalign.config.model import ModelSpec
from jaxalign.losses.rdo import RDO_TRANSFORMS
from jaxalign.ops.distill import DIVERGENCES as KD_DIVERGENCES

__all__ = ["KD_ON", "LossCommon", "kd_sides", "ObjectiveConfig", "RDOConfig", "RDO_SOURCES"]

RDO_SOURCES = ("difference_model", "reward_model", "dataset")
#: Responses the token-level distillation term runs on.
KD_ON = ("chosen", "rejected", "both")


def kd_sides(kd_on: str) -> tuple[str, ...]:
    """The responses ``loss.kd_on`` selects, in pair order: ("chosen",), ("rejected",) or both."""
    return ("chosen", "rejected") if kd_on == "both" else (kd_on,)


def _objective_names() -> tuple[str, ...]:
    from jaxalign.objectives.registry import objective_names

    return objective_names()


@dataclass
class RDOConfig:
    """RDO: per-pair weights from predicted reward differences (computed offline by the ``score`` stage)."""

    enabled: bool = False
    """Weight each pair's loss by its RDO coefficient (needs an ``rdo_weight`` column; ``score`` writes it)."""

    source: str = setting("difference_model", choices=RDO_SOURCES)
    """Where the reward difference d comes from: a pairwise difference model, a pointwise reward model, or the data's scores."""

    transform: str = setting("sigmoid", choices=RDO_TRANSFORMS)
    """d -> weight: sigmoid = σ(d/τ), linear = clip(d, 0, clip), exp = exp(d/τ)."""

    temperature: float = setting(1.0, gt=0)
    """τ of the sigmoid and exp transforms."""

    clip: float = setting(0.0, ge=0)
    """Upper bound on a weight before normalisation; 0 = none."""

    normalize: bool = True
    """Rescale the weights to mean 1 over the dataset (keeps the effective learning rate)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    """The scoring model (difference or reward model) the ``score`` stage runs; unused for source=dataset."""


@dataclass
class LossCommon:
    """The training objective and its coefficients."""

    name: str = setting("dpo", choices=_objective_names)
    """Objective (the registered ones: ``jaxalign.objectives``, plus those of ``objective.module``)."""

    kd_weight: float = setting(0.0, ge=0)
    """α: weight of the token-level distillation term against the teacher (0 = off; needs a teacher model)."""

    kd_divergence: str = setting("forward_kl", choices=KD_DIVERGENCES)
    """Token-level divergence: forward_kl = KL(teacher‖policy) | reverse_kl = KL(policy‖teacher) | jsd."""

    kd_temperature: float = setting(1.0, gt=0)
    """Softmax temperature of both distributions in the distillation term."""

    kd_top_k: int = setting(0, ge=0, integer=True)
    """Restrict the distillation term to the teacher's top-k tokens; 0 = the full vocabulary."""

    kd_jsd_lambda: float = setting(0.5, gt=0, lt=1)
    """λ of the generalised JSD, in (0, 1)."""

    kd_on: str = setting("chosen", choices=KD_ON)
    """Responses the distillation term runs on: chosen | rejected | both."""

    kd_cache: str = ""
    """Top-k teacher distributions written by ``jaxalign score`` (``score.teacher_top_k``) to train the distillation
    term from, instead of the teacher's forward pass: the divergence runs over the cached k tokens plus one bucket for
    the rest of the vocabulary (docs/objectives.md); with cached teacher log-prob columns too, the teacher is not
    loaded. Checked against the tokenizer and the responses; needs kd_temperature=1 and no eval_data; "" = off."""

    nll_weight: float = setting(0.0, ge=0)
    """γ: weight of an NLL (SFT) term on the chosen responses added to the preference loss."""

    router_aux_weight: float = setting(0.0, ge=0)
    """Weight of the policy's mixture-of-experts router load-balancing loss (transformers' `aux_loss`, logged as
    `router_aux_loss`) added to the loss of the LM-head objectives (sft, dpo, dadpo, rrhf, kto); 0 for dense models."""

    chunk_size: int = setting(256, ge=1, integer=True)
    """Positions per chunk of the LM head and log-softmax: scored (response) positions packed across the rows
    of a batch shard (the vocab-parallel path: sequence positions per row); never full [batch, seq, vocab] logits."""

    rdo: RDOConfig = field(default_factory=RDOConfig)
    """RDO reward-difference weights of the pairs."""


@dataclass
class ObjectiveConfig:
    """Objectives from outside jaxalign: modules imported before the config is checked."""

    module: List[str] = field(default_factory=list)
    """Python modules (one name or a list) that register objectives with ``@register_objective``; imported before
    the recipe is checked, so ``loss.name`` and ``loss.*`` may name what they add (see docs/objectives.md).
    Installed packages can instead declare an entry point in the group ``jaxalign.objectives``."""
