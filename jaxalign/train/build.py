"""Models and tokenizers from `ModelSpec`s: checkpoints (HF folder, .gguf, hub id) or random presets."""

from __future__ import annotations

from jax.sharding import Mesh

from jaxalign.config.presets import preset_hf_config
from jaxalign.config.schema import ConfigError, ModelSpec
from jaxalign.models import ModelConfig, init_model, load_model, load_tokenizer
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
