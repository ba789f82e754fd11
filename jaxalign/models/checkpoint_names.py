"""Declarative name tables between HF checkpoint tensors and jaxalign parameters.

Each rule maps one jaxalign parameter path to one HF tensor name; `{i}` marks a
per-layer tensor that stacks into the leading layer axis. HF stores linear
weights as `[out, in]`; jaxalign as `[in, out]`, hence `transpose`.
"""

from __future__ import annotations

import dataclasses

from jaxalign.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class TensorRule:
    param: str  # dotted attribute path in the jaxalign module, e.g. "layers.q_proj"
    hf: str  # HF tensor name; "{i}" = layer index
    transpose: bool = False
    when: str = "always"  # a key of CONDITIONS

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


CONDITIONS = {
    "always": lambda c, head: True,
    "untied_lm_head": lambda c, head: head == "lm" and not c.tie_word_embeddings,
    "score_head": lambda c, head: head == "score",
    "qkv_bias": lambda c, head: c.qkv_bias,
    "o_bias": lambda c, head: c.o_bias,
    "mlp_bias": lambda c, head: c.mlp_bias,
}

_L = "model.layers.{i}."
LLAMA_FAMILY = (
    TensorRule("embed", "model.embed_tokens.weight"),
    TensorRule("final_norm", "model.norm.weight"),
    TensorRule("lm_head", "lm_head.weight", transpose=True, when="untied_lm_head"),
    TensorRule("score", "score.weight", transpose=True, when="score_head"),
    TensorRule("layers.attn_norm", _L + "input_layernorm.weight"),
    TensorRule("layers.mlp_norm", _L + "post_attention_layernorm.weight"),
    TensorRule("layers.q_proj", _L + "self_attn.q_proj.weight", transpose=True),
    TensorRule("layers.k_proj", _L + "self_attn.k_proj.weight", transpose=True),
    TensorRule("layers.v_proj", _L + "self_attn.v_proj.weight", transpose=True),
    TensorRule("layers.o_proj", _L + "self_attn.o_proj.weight", transpose=True),
    TensorRule("layers.q_bias", _L + "self_attn.q_proj.bias", when="qkv_bias"),
    TensorRule("layers.k_bias", _L + "self_attn.k_proj.bias", when="qkv_bias"),
    TensorRule("layers.v_bias", _L + "self_attn.v_proj.bias", when="qkv_bias"),
    TensorRule("layers.o_bias", _L + "self_attn.o_proj.bias", when="o_bias"),
    TensorRule("layers.gate_proj", _L + "mlp.gate_proj.weight", transpose=True),
    TensorRule("layers.up_proj", _L + "mlp.up_proj.weight", transpose=True),
    TensorRule("layers.down_proj", _L + "mlp.down_proj.weight", transpose=True),
    TensorRule("layers.gate_bias", _L + "mlp.gate_proj.bias", when="mlp_bias"),
    TensorRule("layers.up_bias", _L + "mlp.up_proj.bias", when="mlp_bias"),
    TensorRule("layers.down_bias", _L + "mlp.down_proj.bias", when="mlp_bias"),
)

# One table per family; Llama, Mistral and Qwen2 share HF's naming.
NAME_TABLES = {"llama": LLAMA_FAMILY, "mistral": LLAMA_FAMILY, "qwen2": LLAMA_FAMILY}


def rules_for(config: ModelConfig, head: str) -> list[TensorRule]:
    """The rules that apply to a model of this config with `head` in {"lm", "score"}."""
    return [r for r in NAME_TABLES[config.model_type] if CONDITIONS[r.when](config, head)]


def module_param_path(rule: TensorRule, head: str) -> str:
    """Attribute path inside the NNX module (the scalar-head model nests its decoder)."""
    if head == "score" and rule.param != "score":
        return "decoder." + rule.param
    return rule.param
