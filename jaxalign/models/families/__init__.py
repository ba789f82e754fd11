"""Model families: one module each, composing the shared layer library and owning its HF mapping.

A family module builds a `Family` and calls `register_family`; every module of this package is
imported on first use, so adding a family is one new file here (plus its tests). The registry is
the one list of supported HF architectures: config parsing, loading, saving and GGUF import ask it.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from jaxalign.models.config import ConfigError, ModelConfig
from jaxalign.models.layers.norms import rms_norm
from jaxalign.models.layers.rope import inverse_frequencies

HEADS = ("lm", "score")  # causal LM head, or a scalar head on the last token (reward / difference models)


def default_rope_tables(config: ModelConfig) -> dict[str, np.ndarray]:
    """One rotary table, "default", from `rope_theta` and `rope_scaling`."""
    return {"default": inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling_dict)}


@dataclasses.dataclass(frozen=True)
class GGUFSpec:
    """How llama.cpp names this family: `general.architecture`, whether its converter permuted the q/k
    rows for interleaved RoPE, whether q/k/v carry biases ("never" | "always" | "optional"), extra
    config.json fields, and extra (GGUF name, HF name) tensor rows beyond the common Llama table."""

    arch: str
    permute_qk: bool
    qkv_bias: str = "never"
    extra_config: tuple[tuple[str, Any], ...] = ()
    extra_tensors: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Family:
    """What distinguishes one decoder family.

    model_type: HF `model_type`; causal_lm / sequence_classification: HF architecture names;
    config_from_hf `(hf dict, source) -> ModelConfig` and config_to_hf `(config) -> dict` (the fields
    beyond `config.common_to_hf`); layer_params `(config) -> {name: ParamSpec}` per layer;
    layer `(config, kind, p, x, ctx, cache, cache_index) -> (x, (k, v), aux)` one decoder layer
    (kind: the layer's entry of `config.layer_kinds`; aux: the layer's auxiliary statistics, shaped
    like `aux_zeros(config)`: a scalar loss, 0 for dense families); the decoder sums aux over layers
    and `aux_loss(config, summed)` makes the scalar auxiliary loss (MoE load balancing is not a sum
    of per-layer losses: its layers return statistics);
    hf_layer_names `(config) -> [TensorRule]` per-layer checkpoint names; rope_tables
    `(config) -> {name: inv_freq}`; final_norm `(x, w, eps)`; embed_scale `(config) -> float | None`
    (multiplies the embeddings); gguf: llama.cpp naming, if it has one.
    """

    model_type: str
    causal_lm: str
    config_from_hf: Callable[[dict, str], ModelConfig]
    config_to_hf: Callable[[ModelConfig], dict]
    layer_params: Callable[[ModelConfig], dict]
    layer: Callable
    hf_layer_names: Callable[[ModelConfig], list]
    sequence_classification: str | None = None
    rope_tables: Callable[[ModelConfig], dict[str, np.ndarray]] = default_rope_tables
    final_norm: Callable = rms_norm
    embed_scale: Callable[[ModelConfig], float | None] = lambda config: None
    aux_zeros: Callable[[ModelConfig], Any] = lambda config: jnp.zeros((), jnp.float32)
    aux_loss: Callable[[ModelConfig, Any], Any] = lambda config, aux: aux
    gguf: GGUFSpec | None = None

    def architecture(self, head: str) -> str:
        if head == "score":
            if self.sequence_classification is None:
                raise ConfigError(f"{self.model_type} has no sequence-classification (scalar head) architecture")
            return self.sequence_classification
        return self.causal_lm

    @property
    def architectures(self) -> dict[str, str]:
        """HF architecture name -> head."""
        out = {self.causal_lm: "lm"}
        if self.sequence_classification:
            out[self.sequence_classification] = "score"
        return out


_FAMILIES: dict[str, Family] = {}
_LOADED = False


def register_family(family: Family) -> Family:
    """Add a family (its module calls this at import); a second family with the same model_type or
    architecture is a programming error."""
    taken = {a for f in _FAMILIES.values() for a in f.architectures}
    clash = taken & set(family.architectures)
    if family.model_type in _FAMILIES or clash:
        raise ValueError(f"family {family.model_type!r} is registered twice ({', '.join(sorted(clash)) or family.model_type})")
    _FAMILIES[family.model_type] = family
    return family


def families() -> dict[str, Family]:
    """model_type -> Family, after importing every module of this package."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for info in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{info.name}")
    return _FAMILIES


def supported_architectures() -> dict[str, str]:
    """HF architecture name -> model_type, for every registered family."""
    return {arch: f.model_type for f in families().values() for arch in f.architectures}


def family_for_model_type(model_type: str) -> Family:
    found = families().get(model_type)
    if found is None:
        raise ConfigError(f"model_type {model_type!r} is not supported; supported: {', '.join(sorted(families()))}")
    return found


def family_for_hf(hf: dict, source: str) -> Family:
    """The family a config.json names (by `architectures`, else `model_type`), or a ConfigError that
    lists the supported architectures."""
    archs = hf.get("architectures") or []
    known = supported_architectures()
    supported = ", ".join(sorted(known))
    if archs:
        if archs[0] not in known:
            raise ConfigError(f"{source}: architecture {archs[0]!r} is not supported; supported: {supported}")
        return families()[known[archs[0]]]
    model_type = hf.get("model_type")
    if model_type not in families():
        raise ConfigError(f"{source}: model_type {model_type!r} is not supported; supported: "
                          f"{', '.join(sorted(families()))} (architectures {supported})")
    return families()[model_type]


def head_of(architectures: list[str] | None) -> str:
    """'score' for a *ForSequenceClassification checkpoint, else 'lm'."""
    for family in families().values():
        if architectures and architectures[0] in family.architectures:
            return family.architectures[architectures[0]]
    return "lm"
