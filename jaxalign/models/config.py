"""Decoder configuration: one dataclass for the Llama family, read from and written to HF `config.json`.

Llama 2/3, Mistral, Qwen2/2.5 and SmolLM2 differ only by flags here (GQA, qkv bias,
tied embeddings, RoPE scaling), so one decoder implementation serves all of them.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

# HF architecture name -> (model_type, qkv bias implied by the family).
CAUSAL_LM_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
SEQUENCE_CLASSIFICATION_ARCHITECTURES = {
    "LlamaForSequenceClassification": "llama",
    "MistralForSequenceClassification": "mistral",
    "Qwen2ForSequenceClassification": "qwen2",
}
SUPPORTED_ARCHITECTURES = {**CAUSAL_LM_ARCHITECTURES, **SEQUENCE_CLASSIFICATION_ARCHITECTURES}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


class ConfigError(ValueError):
    """A checkpoint's config.json asks for something jaxalign does not support."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and flags of a Llama-family decoder.

    `rope_scaling` is a tuple of (key, value) items so the config stays hashable
    (it is a static argument of jitted functions).
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

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} must be a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if self.model_type not in ("llama", "mistral", "qwen2"):
            raise ConfigError(f"model_type {self.model_type!r} is not one of llama, mistral, qwen2")

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

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
        """Parameter count (embedding counted once when tied)."""
        d, f, h = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_heads * h, self.num_kv_heads * h
        layer = 2 * d + d * q + 2 * d * kv + q * d + 3 * d * f
        layer += (q + 2 * kv) * self.qkv_bias + d * self.o_bias + (2 * f + d) * self.mlp_bias
        head = 0 if self.tie_word_embeddings else d * self.vocab_size
        return self.vocab_size * d + self.num_layers * layer + d + head

    # ------------------------------------------------------------------ HF I/O
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], *, source: str = "config.json") -> "ModelConfig":
        """Build from an HF config dict; refuse what the decoder cannot reproduce exactly."""
        archs = hf.get("architectures") or []
        model_type = hf.get("model_type")
        if archs:
            unknown = [a for a in archs if a not in SUPPORTED_ARCHITECTURES]
            if unknown:
                raise ConfigError(
                    f"{source}: architecture {unknown[0]!r} is not supported; "
                    f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
                )
            model_type = model_type or SUPPORTED_ARCHITECTURES[archs[0]]
        if model_type not in ("llama", "mistral", "qwen2"):
            raise ConfigError(
                f"{source}: model_type {model_type!r} is not supported; supported: llama, mistral, "
                f"qwen2 (architectures {', '.join(sorted(SUPPORTED_ARCHITECTURES))})"
            )

        def need(key):
            if key not in hf:
                raise ConfigError(f"{source}: required field {key!r} is missing")
            return hf[key]

        act = hf.get("hidden_act", "silu")
        if act != "silu":
            raise ConfigError(f"{source}: hidden_act={act!r} is not supported (only 'silu')")
        window = hf.get("sliding_window")
        uses_window = hf.get("use_sliding_window", model_type == "mistral")
        if window is not None and uses_window:
            raise ConfigError(
                f"{source}: sliding_window={window} is not supported yet (full attention only); "
                "set sliding_window to null if the model was trained with full attention"
            )
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"{source}: rope scaling type {rope_type!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        rope.pop("type", None)
        rope["rope_type"] = rope_type
        rope_scaling = None if rope_type == "default" else tuple(sorted(rope.items()))

        heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        eos = hf.get("eos_token_id")
        attention_bias = bool(hf.get("attention_bias", False))
        return cls(
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hidden // heads),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=model_type != "qwen2" and attention_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            model_type=model_type,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=hf.get("pad_token_id"),
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ModelConfig":
        path = Path(path) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: not a Hugging Face model folder")
        try:
            hf = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_hf_dict(hf, source=str(path))

    def to_hf_dict(self, *, architecture: str | None = None, dtype: str = "float32") -> dict[str, Any]:
        """An HF config dict that `transformers` loads into the same model."""
        arch = architecture or {
            "llama": "LlamaForCausalLM",
            "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM",
        }[self.model_type]
        rope = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling:
            rope.update(dict(self.rope_scaling))
        out = {
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None if not self.rope_scaling else dict(self.rope_scaling),
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": dtype,
            "torch_dtype": dtype,
        }
        if self.model_type == "qwen2":
            if self.o_bias or self.mlp_bias:
                raise ConfigError("qwen2 has no o_proj/mlp bias option")
            out.update(use_sliding_window=False, sliding_window=None)
        else:
            if self.qkv_bias != self.o_bias:
                raise ConfigError(f"{self.model_type} biases q, k, v and o together (attention_bias)")
            out.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
            if self.model_type == "mistral":
                out["sliding_window"] = None
        if arch in SEQUENCE_CLASSIFICATION_ARCHITECTURES:
            out["num_labels"] = 1
            out["id2label"] = {"0": "LABEL_0"}
            out["label2id"] = {"LABEL_0": 0}
        return out
