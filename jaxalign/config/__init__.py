"""Typed configs: dataclass defaults, YAML recipes (``configs/``) and ``key=value`` overrides.

::

    from jaxalign.config import load_config, to_yaml
    config = load_config("configs/dadpo.yaml", ["loss.beta_teacher=0.2", "mesh.fsdp=4"], stage="train")
    print(to_yaml(config))

Modules: ``schema`` (the dataclasses, ``CHOICES``, ``validate``), ``loader``
(recipe chains, overrides, YAML round trip), ``presets`` (random-init model
presets), ``reference`` (``--help-config`` and ``docs/config_reference.md``).
"""

from jaxalign.config.loader import apply_overrides, config_from_yaml, load_config, parse_override, save_config, to_yaml
from jaxalign.config.presets import MODEL_PRESETS, preset_hf_config
from jaxalign.config.reference import (
    KeyInfo,
    config_reference_markdown,
    describe_keys,
    format_keys,
    write_config_reference,
)
from jaxalign.config.schema import (
    CHOICES,
    CheckpointConfig,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    GenerateConfig,
    GenerateModel,
    LoggingConfig,
    LossConfig,
    MeshConfig,
    ModelSpec,
    OptimizerConfig,
    RDOConfig,
    ScoreConfig,
    TrainConfig,
    validate,
)

__all__ = [
    "CHOICES",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GenerateConfig",
    "GenerateModel",
    "KeyInfo",
    "LoggingConfig",
    "LossConfig",
    "MODEL_PRESETS",
    "MeshConfig",
    "ModelSpec",
    "OptimizerConfig",
    "RDOConfig",
    "ScoreConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_yaml",
    "config_reference_markdown",
    "describe_keys",
    "format_keys",
    "load_config",
    "parse_override",
    "preset_hf_config",
    "save_config",
    "to_yaml",
    "validate",
    "write_config_reference",
]
