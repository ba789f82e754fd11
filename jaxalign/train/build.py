"""Models and tokenizers from `ModelSpec`s: checkpoints (HF folder, .gguf, hub id) or random presets."""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx
from jax.sharding import Mesh

from jaxalign.config.presets import preset_hf_config
from jaxalign.config.schema import ConfigError, ModelSpec
from jaxalign.models import ModelConfig, init_model, load_model, load_tokenizer
from jaxalign.models.lora import LoraSpec, add_lora, check_spec, resolve_targets, split_trainable
from jaxalign.models.resolve import resolve_model_path


def build_model(spec: ModelSpec, *, key: str, head: str = "lm", mesh: Mesh | None = None, seed: int = 0):
    """The model a config section describes, placed on `mesh` by its partition rules."""
    kwargs = dict(dtype=spec.dtype, param_dtype=spec.param_dtype, mesh=mesh, remat=spec.remat, head=head,
                  attention=spec.attention, layer_loop=spec.layer_loop)
    if spec.path:
        return load_model(resolve_model_path(spec.path), **kwargs)
    if spec.preset:
        return init_model(ModelConfig.from_hf_dict(preset_hf_config(spec.preset), source=f"preset {spec.preset!r}"),
                          seed=seed, **kwargs)
    raise ConfigError(f"{key}.path or {key}.preset must be set")


@dataclasses.dataclass
class Policy:
    """The trained model, split for the train step: `graphdef`, the trained `params` (the step's
    state) and, with LoRA, the frozen `base` weights (passed to the step as `frozen["policy"]`, never
    differentiated, donated or in the optimizer state); `base` is None when every parameter trains."""

    model: Any
    graphdef: Any
    params: Any
    base: Any = None

    @property
    def lora(self) -> bool:
        return self.base is not None

    def optimizer_config(self, cfg):
        """The optimizer settings for `params` (`lora_optimizer_config` with LoRA)."""
        return lora_optimizer_config(cfg) if self.lora else cfg


def lora_optimizer_config(cfg):
    """`optimizer` settings for a LoRA run's trained parameters: the split (`split_trainable`) already
    applied `optimizer.trainable` and left the embeddings frozen, so no mask is left to apply."""
    return dataclasses.replace(cfg, trainable="", freeze_embeddings=False)


def lora_spec(cfg) -> LoraSpec | None:
    """The `model.lora` section as a `LoraSpec`, or None when `rank` is 0 (LoRA off)."""
    if cfg.rank == 0:
        return None
    return LoraSpec(rank=cfg.rank, alpha=cfg.alpha, dropout=cfg.dropout, targets=tuple(cfg.targets))


def lora_trained_base(config, head: str) -> str:
    """Regex over parameter names of the base parameters a LoRA run trains besides the adapters:
    `optimizer.trainable`'s, and a scalar-head model's (reward / difference model) head `score`, which
    is new (a causal LM checkpoint has none) and must learn, as PEFT's `modules_to_save` for sequence
    classification; "" = none."""
    parts = [p for p in (config.optimizer.trainable, "^score$" if head == "score" else "") if p]
    return "|".join(f"(?:{p})" for p in parts)


def check_lora(cfg, model_config: ModelConfig) -> None:
    """Refuse, before any weights load, a `model.lora` section this model cannot take (a projection
    the family lacks), naming the key."""
    spec = lora_spec(cfg)
    if spec is not None:
        check_spec(spec)
        resolve_targets(model_config, spec.targets)


def build_policy(config, *, head: str = "lm", mesh: Mesh | None = None, seed: int = 0) -> Policy:
    """The `model` section's model with, when `model.lora.rank > 0`, fresh adapters (placed on `mesh`)
    and only them (plus the base parameters `lora_trained_base` names) trained."""
    model = build_model(config.model, key="model", head=head, mesh=mesh, seed=seed)
    spec = lora_spec(config.model.lora)
    if spec is None:
        graphdef, params = nnx.split(model)
        return Policy(model, graphdef, params)
    add_lora(model, spec, mesh=mesh, seed=seed)
    graphdef, params, base = split_trainable(model, lora_trained_base(config, head))
    return Policy(model, graphdef, params, base)


def build_tokenizer(spec: ModelSpec, *, key: str):
    """The tokenizer at `tokenizer` (or beside the weights at `path`)."""
    source = spec.tokenizer or spec.path
    if not source:
        raise ConfigError(f"{key}.tokenizer must be set when {key} is a preset (presets have no tokenizer)")
    return load_tokenizer(resolve_model_path(source))


def build_model_config(spec: ModelSpec, *, key: str) -> ModelConfig:
    """The architecture a spec names, read from config.json (or the preset) without loading weights."""
    import json

    if spec.path:
        folder = resolve_model_path(spec.path)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"{folder}: no config.json ({key}.path)")
        try:
            hf = json.loads(config_file.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise ConfigError(f"{config_file}: not valid JSON ({e}) ({key}.path)") from None
        if not isinstance(hf, dict):
            raise ConfigError(f"{config_file}: a JSON {type(hf).__name__}, not an object ({key}.path)")
        return ModelConfig.from_hf_dict(hf, source=str(config_file))
    if spec.preset:
        return ModelConfig.from_hf_dict(preset_hf_config(spec.preset), source=f"preset {spec.preset!r}")
    raise ConfigError(f"{key}.path or {key}.preset must be set")
