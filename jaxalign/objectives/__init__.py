"""Training objectives: one module per objective, each one spec registered with ``register_objective``.

A module holds the objective's settings dataclass (its ``loss.*`` keys, ranges declared with
``setting``), its batch -> loss adapter (decorated with ``register_objective``, which records its
data task, the models it reads and the cached columns that replace them, RDO support and metric
names) and nothing else; the loss itself is a pure function in ``jaxalign.losses``. Shared adapter
pieces are in ``common``; the registry and everything derived from it in ``registry``.

Built-ins are found by importing this package's modules on first use, so adding one is one new
file. Objectives outside jaxalign: ``objective.module=my_pkg.my_loss`` (see docs/objectives.md).
"""

from jaxalign.config.fields import setting
from jaxalign.objectives.common import (
    Models,
    ObjectiveContext,
    batch_totals,
    example_weights,
    preference_forward,
    slots,
    split_pairs,
    totals_or_batch,
    with_router_aux,
)
from jaxalign.objectives.registry import (
    Frozen,
    ObjectiveSpec,
    get_objective,
    needs_model,
    objective_names,
    register_objective,
    settings_of,
    unregister_objective,
)

__all__ = [
    "Frozen",
    "Models",
    "ObjectiveContext",
    "ObjectiveSpec",
    "batch_totals",
    "example_weights",
    "get_objective",
    "needs_model",
    "objective_names",
    "preference_forward",
    "register_objective",
    "setting",
    "settings_of",
    "slots",
    "split_pairs",
    "totals_or_batch",
    "unregister_objective",
    "with_router_aux",
]
