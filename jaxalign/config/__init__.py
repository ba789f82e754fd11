"""Typed configs: dataclass defaults, YAML recipes (``configs/``) and ``key=value`` overrides.

::

    from jaxalign.config import load_config, to_yaml
    config = load_config("configs/dadpo.yaml", ["loss.beta_teacher=0.2", "mesh.fsdp=4"], stage="train")
    print(to_yaml(config))

Modules: ``fields`` (``setting``: allowed values declared on a field, and the
validator that reads them), ``model``, ``loss``, ``run``, ``stages`` (the
sections), ``schema`` (``Config``), ``validate`` (the checks that relate
fields), ``loader`` (recipe chains, overrides, YAML round trip), ``presets``
(random-init model presets), ``reference`` (``--help-config`` and
``docs/config_reference.md``). The ``loss`` section's class, ``LossConfig``, is
built from the objective registry (``jaxalign.objectives``).
"""

from jaxalign.config.fields import check_fields, choices_of, setting
from jaxalign.config.loader import (
    apply_overrides,
    config_from_yaml,
    import_recipe_objectives,
    load_config,
    parse_override,
    save_config,
    to_yaml,
)
from jaxalign.config.presets import MODEL_PRESETS, preset_hf_config
from jaxalign.config.reference import (
    KeyInfo,
    config_reference_markdown,
    describe_keys,
    format_keys,
    write_config_reference,
)
from jaxalign.config.schema import (
    CheckpointConfig,
    Config,
    DataConfig,
    EvalConfig,
    GenerateConfig,
    GenerateModel,
    LoggingConfig,
    LossCommon,
    MeshConfig,
    ModelSpec,
    ObjectiveConfig,
    OptimizerConfig,
    RDOConfig,
    ScoreConfig,
    TrainConfig,
)
from jaxalign.config.validate import validate
from jaxalign.errors import ConfigError

__all__ = [
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GenerateConfig",
    "GenerateModel",
    "KeyInfo",
    "LoggingConfig",
    "LossCommon",
    "LossConfig",
    "MODEL_PRESETS",
    "MeshConfig",
    "ModelSpec",
    "ObjectiveConfig",
    "OptimizerConfig",
    "RDOConfig",
    "ScoreConfig",
    "TrainConfig",
    "apply_overrides",
    "check_fields",
    "choices_of",
    "config_from_yaml",
    "config_reference_markdown",
    "describe_keys",
    "format_keys",
    "import_recipe_objectives",
    "load_config",
    "parse_override",
    "preset_hf_config",
    "save_config",
    "setting",
    "to_yaml",
    "validate",
    "write_config_reference",
]


def __getattr__(name: str):
    # ``LossConfig`` is built from the objective registry on first use (see ``jaxalign.config.schema``).
    if name == "LossConfig":
        from jaxalign.config import schema

        return schema.LossConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
