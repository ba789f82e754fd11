"""Decoder configuration: the fields every family shares, read from and written to HF `config.json`.

A family (``jaxalign.models.families``) subclasses `ModelConfig` when it needs more fields
(Gemma's soft-caps, MoE expert counts) and owns its `config.json` mapping; `from_hf_dict` finds
the family from `architectures` (or `model_type`) and lets it parse the rest.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from jaxalign.errors import ConfigError  # noqa: F401 (re-exported: a config.json jaxalign cannot use)
from jaxalign.models.layers.rope import ROPE_TYPES

LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and flags of a decoder; hashable (a static argument of jitted functions).

    `rope_scaling` is a tuple of (key, value) items; `layer_types` one of `LAYER_TYPES` per layer
    (None: all full attention), the sliding ones attending to the last `sliding_window` keys.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    max_position_embeddings: int = 2048
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    final_logit_softcap: float | None = None

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} must be a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers:
                raise ConfigError(f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers")
            bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
            if bad:
                raise ConfigError(f"layer_types {bad} are not among {', '.join(LAYER_TYPES)}")
            if "sliding_attention" in self.layer_types and not self.sliding_window:
                raise ConfigError("sliding_attention layers need a sliding_window")
        self.family  # noqa: B018 - an unknown model_type fails here, naming the supported ones

    @property
    def family(self):
        from jaxalign.models.families import family_for_model_type

        return family_for_model_type(self.model_type)

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    @property
    def layer_kinds(self) -> tuple[str, ...]:
        """One of `LAYER_TYPES` per layer."""
        return self.layer_types or ("full_attention",) * self.num_layers

    def window(self, kind: str) -> int | None:
        """The sliding window of a layer of this kind (None: full attention)."""
        return self.sliding_window if kind == "sliding_attention" else None

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        if self.eos_token_id is None:
            return ()
        if isinstance(self.eos_token_id, int):
            return (self.eos_token_id,)
        return tuple(self.eos_token_id)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Parameter count of the causal LM (embedding counted once when tied), from the family's specs."""
        import math

        layer = sum(math.prod(s.shape) for s in self.family.layer_params(self).values())
        head = 0 if self.tie_word_embeddings else self.hidden_size * self.vocab_size
        return self.vocab_size * self.hidden_size + self.num_layers * layer + self.hidden_size + head

    # ------------------------------------------------------------------ HF I/O
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], *, source: str = "config.json") -> "ModelConfig":
        """Build from an HF config dict; refuse what the decoder cannot reproduce exactly."""
        from jaxalign.models.families import family_for_hf

        family = family_for_hf(hf, source)
        return family.config_from_hf(hf, source)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ModelConfig":
        path = Path(path) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a Hugging Face model folder")
        try:
            hf = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(hf, dict):
            raise ConfigError(f"{path}: not a JSON object")
        return cls.from_hf_dict(hf, source=str(path))

    def to_hf_dict(self, *, head: str = "lm", dtype: str = "float32") -> dict[str, Any]:
        """An HF config dict that `transformers` loads into the same model (`head`: "lm" | "score")."""
        family = self.family
        out = {"architectures": [family.architecture(head)], "model_type": self.model_type,
               **common_to_hf(self), **family.config_to_hf(self), "dtype": dtype}
        if head == "score":
            out.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
        return out


# ------------------------------------------------------------------------- shared config.json parsing
def need(hf: dict, key: str, source: str):
    if key not in hf or hf[key] is None:
        raise ConfigError(f"{source}: required field {key!r} is missing")
    return hf[key]


def rope_from_hf(hf: dict, source: str, *, key: str | None = None) -> tuple[float, tuple | None]:
    """(rope_theta, rope_scaling items) from `rope_parameters` (transformers 5) or `rope_theta` +
    `rope_scaling` (older files). `key` selects one entry of a per-layer-type `rope_parameters`."""
    params = hf.get("rope_parameters") or {}
    if key is not None and key in params:
        params = params[key]
    elif key is not None and all(isinstance(v, dict) for v in params.values()) and params:
        params = {}
    rope = dict(params or hf.get("rope_scaling") or {})
    theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_TYPES:
        raise ConfigError(f"{source}: rope scaling type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    rope.pop("type", None)
    rope["rope_type"] = kind
    return theta, (None if kind == "default" else tuple(sorted(rope.items())))


def check_activation(hf: dict, source: str, allowed: tuple[str, ...], key: str = "hidden_act") -> str:
    act = hf.get(key) or allowed[0]
    if act not in allowed:
        raise ConfigError(f"{source}: {key}={act!r} is not supported (supported: {', '.join(allowed)})")
    return act


def common_from_hf(hf: dict, source: str, model_type: str) -> dict[str, Any]:
    """The `ModelConfig` fields every family reads the same way."""
    heads = int(need(hf, "num_attention_heads", source))
    hidden = int(need(hf, "hidden_size", source))
    eos = hf.get("eos_token_id")
    theta, scaling = rope_from_hf(hf, source)
    return dict(
        vocab_size=int(need(hf, "vocab_size", source)),
        hidden_size=hidden,
        intermediate_size=int(need(hf, "intermediate_size", source)),
        num_layers=int(need(hf, "num_hidden_layers", source)),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hidden // heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        rope_theta=theta,
        rope_scaling=scaling,
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        model_type=model_type,
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
        pad_token_id=hf.get("pad_token_id"),
    )


def layer_types_from_hf(hf: dict, num_layers: int, window: int | None, source: str,
                        default: tuple[str, ...] | None = None) -> tuple[str, ...] | None:
    """Explicit `layer_types` when the file has them, else `default`; all-full becomes None."""
    types = hf.get("layer_types")
    types = tuple(types) if types else default
    if types is not None and len(types) != num_layers:
        raise ConfigError(f"{source}: layer_types has {len(types)} entries for num_hidden_layers={num_layers}")
    if types is not None and "sliding_attention" in types and not window:
        raise ConfigError(f"{source}: layer_types has sliding_attention layers but sliding_window is not set")
    return None if types is None or set(types) == {"full_attention"} else types


def common_to_hf(c: ModelConfig) -> dict[str, Any]:
    rope = {"rope_type": "default", "rope_theta": c.rope_theta}
    if c.rope_scaling:
        rope.update(dict(c.rope_scaling))
    return {
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": None if not c.rope_scaling else dict(c.rope_scaling),
        "rope_parameters": rope,
        "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id,
        "pad_token_id": c.pad_token_id,
    }
