"""The typed config: plain dataclasses whose defaults are the one base config.

Recipes in ``configs/`` hold only what differs from these defaults, and every
field can be overridden on the command line as ``section.key=value`` (see
``jaxalign.config.loader``). Each field carries a docstring (the string literal
under it); ``jaxalign.config.reference`` turns them into ``--help-config`` and
the config reference. A field's allowed values are declared on it
(``jaxalign.config.fields.setting``); ``jaxalign.config.validate`` checks them
and the relations between fields.

The sections live in one module per topic (``model``, ``loss``, ``run``,
``stages``; ``DataConfig`` in ``jaxalign.data.config``); this module assembles
them into ``Config`` and re-exports them. The ``loss`` section's class,
``LossConfig``, is built from the objective registry (``jaxalign.objectives``):
the common ``LossCommon`` settings plus each registered objective's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jaxalign.config.loss import LossCommon, ObjectiveConfig, RDOConfig
from jaxalign.config.model import GenerateModel, LoraConfig, ModelSpec, PolicyModel
from jaxalign.config.run import CheckpointConfig, LoggingConfig, MeshConfig, OptimizerConfig, TrainConfig
from jaxalign.config.stages import (
    STAGES,
    EvalConfig,
    GenerateConfig,
    PipelineConfig,
    PipelineStage,
    PruneConfig,
    ScoreConfig,
)
from jaxalign.data.config import DataConfig
from jaxalign.errors import ConfigError

__all__ = [
    "SECTION_CLASS",
    "STAGES",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GenerateConfig",
    "GenerateModel",
    "LoggingConfig",
    "LoraConfig",
    "LossCommon",
    "LossConfig",
    "MeshConfig",
    "ModelSpec",
    "ObjectiveConfig",
    "OptimizerConfig",
    "PipelineConfig",
    "PipelineStage",
    "PolicyModel",
    "PruneConfig",
    "RDOConfig",
    "ScoreConfig",
    "TrainConfig",
]

#: Field metadata: a zero-argument callable giving the section's class when it is built at run time
#: (the loader and the reference read the keys of that class, not of the annotation).
SECTION_CLASS = "section_class"


def _loss_class() -> type:
    from jaxalign.objectives.registry import loss_config_class

    return loss_config_class()


def _default_loss() -> LossCommon:
    return _loss_class()()


def __getattr__(name: str):
    # ``LossConfig`` is built from the objective registry on first use (and rebuilt when user objectives register).
    if name == "LossConfig":
        return _loss_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Config:
    """Everything a jaxalign run reads: one object per stage of the pipeline."""

    model: PolicyModel = field(default_factory=PolicyModel)
    """The policy (the model being trained)."""

    reference: ModelSpec = field(default_factory=ModelSpec)
    """Frozen reference; path "" and preset "" = the policy's initial weights."""

    teacher: ModelSpec = field(default_factory=ModelSpec)
    """Frozen teacher for daDPO and distillation; path "" and preset "" = no teacher."""

    data: DataConfig = field(default_factory=DataConfig)
    """Training data and batching."""

    eval_data: str = ""
    """Held-out split to evaluate on (same sources as ``data.path``); "" = no evaluation."""

    eval: EvalConfig = field(default_factory=EvalConfig)
    """When and how much to evaluate."""

    loss: LossCommon = field(default_factory=_default_loss, metadata={SECTION_CLASS: _loss_class})
    """Objective: the common settings and every registered objective's own (``LossConfig``)."""

    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """Objectives defined outside jaxalign (user modules)."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer and schedule."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """Run length and outputs."""

    mesh: MeshConfig = field(default_factory=MeshConfig)
    """Device mesh."""

    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing."""

    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metric sinks."""

    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """``generate`` stage."""

    score: ScoreConfig = field(default_factory=ScoreConfig)
    """``score`` stage."""

    prune: PruneConfig = field(default_factory=PruneConfig)
    """``prune`` stage."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """``jaxalign pipeline``: the stages of a recipe."""

    @property
    def checkpoint_dir(self) -> str:
        """``checkpoint.dir`` with its default (``{train.output_dir}/checkpoints``) applied."""
        return self.checkpoint.dir or f"{self.train.output_dir.rstrip('/')}/checkpoints"

    @property
    def export_dir(self) -> str:
        """Where ``train.export_hf`` writes the Hugging Face folder: ``{train.output_dir}/hf``."""
        return f"{self.train.output_dir.rstrip('/')}/hf"

    @property
    def eval_batch_size(self) -> int:
        """``eval.batch_size`` with its default (``data.batch_size``) applied."""
        return self.eval.batch_size or self.data.batch_size

    @property
    def score_batch_size(self) -> int:
        """``score.batch_size`` with its default (``data.batch_size``) applied."""
        return self.score.batch_size or self.data.batch_size
