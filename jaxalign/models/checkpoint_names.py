"""Declarative name tables between HF checkpoint tensors and jaxalign parameters.

A rule maps one jaxalign parameter path to one HF tensor name: `{i}` marks a per-layer tensor that
stacks into the leading layer axis, `{j}` a per-expert tensor stacking into the expert axis after
it. HF stores linear weights `[..., out, in]`, jaxalign `[..., in, out]` (`transpose` swaps the last
two axes). `rows` takes a slice of the HF tensor's `out` axis (its first for a matrix), for
checkpoints that fuse several projections into one tensor (Phi-3's `qkv_proj`, the fused
`experts.gate_up_proj` `[E, 2F, D]` of MoE models); saving concatenates the slices back in order.
`alt` names the same parameter in another layout transformers also writes (MoE experts: per
expert by default, fused with `save_original_format=False`): loading reads it when the primary
tensor is absent, saving always writes the primary.

Each family owns its per-layer table (`Family.hf_layer_names`, usually built by `layer_rules` from a
`{param: HF suffix}` dict); the embedding, final norm and heads are the same for every family here.
"""

from __future__ import annotations

import dataclasses

from jaxalign.models.config import ModelConfig

LAYER_PREFIX = "model.layers.{i}."

#: HF suffixes of the standard attention block (pre-norm, q/k/v/o with optional biases, optional
#: per-head q/k norms); `layer_rules` keeps only the entries a config's parameters have.
ATTENTION_HF_NAMES = {
    "attn_norm": "input_layernorm.weight",
    "q_proj": "self_attn.q_proj.weight", "k_proj": "self_attn.k_proj.weight",
    "v_proj": "self_attn.v_proj.weight", "o_proj": "self_attn.o_proj.weight",
    "q_bias": "self_attn.q_proj.bias", "k_bias": "self_attn.k_proj.bias",
    "v_bias": "self_attn.v_proj.bias", "o_bias": "self_attn.o_proj.bias",
    "q_norm": "self_attn.q_norm.weight", "k_norm": "self_attn.k_norm.weight",
}

#: HF suffixes of the gated MLP (SwiGLU / GeGLU) with optional biases.
GATED_MLP_HF_NAMES = {
    "gate_proj": "mlp.gate_proj.weight", "up_proj": "mlp.up_proj.weight", "down_proj": "mlp.down_proj.weight",
    "gate_bias": "mlp.gate_proj.bias", "up_bias": "mlp.up_proj.bias", "down_bias": "mlp.down_proj.bias",
}


@dataclasses.dataclass(frozen=True)
class TensorRule:
    param: str  # dotted attribute path in the jaxalign module, e.g. "layers.q_proj"
    hf: str  # HF tensor name; "{i}" = layer index, "{j}" = expert index
    transpose: bool = False
    rows: tuple[int, int] | None = None  # [start, stop) of the HF tensor's out axis (fused tensors)
    alt: "TensorRule | None" = None  # the same parameter in another checkpoint layout (loading only)

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf

    @property
    def per_expert(self) -> bool:
        return "{j}" in self.hf

    def names(self, num_layers: int, num_experts: int = 0) -> list[str]:
        """Every HF tensor name this rule covers, layer-major then expert."""
        if not self.per_layer:
            return [self.hf]
        if self.per_expert:
            return [self.hf.format(i=i, j=j) for i in range(num_layers) for j in range(num_experts)]
        return [self.hf.format(i=i) for i in range(num_layers)]


def layer_rules(config: ModelConfig, table: dict[str, str], prefix: str = LAYER_PREFIX) -> list[TensorRule]:
    """Per-layer rules from `{param name: HF suffix}` for the parameters this config has; matrices
    (two axes per tensor) are transposed, vectors are not."""
    specs = config.family.layer_params(config)
    rules = []
    for name, suffix in table.items():
        if name in specs:
            per_tensor = specs[name].shape[1:] if "{j}" in suffix else specs[name].shape
            rules.append(TensorRule(f"layers.{name}", prefix + suffix, transpose=len(per_tensor) == 2))
    missing = sorted(set(specs) - set(table))
    if missing:
        raise ValueError(f"{config.model_type}: no checkpoint name for layer parameters {missing}")
    return rules


def rules_for(config: ModelConfig, head: str) -> list[TensorRule]:
    """Every rule of a model of this config with `head` in {"lm", "score"}."""
    rules = [TensorRule("embed", "model.embed_tokens.weight"), TensorRule("final_norm", "model.norm.weight")]
    if head == "lm" and not config.tie_word_embeddings:
        rules.append(TensorRule("lm_head", "lm_head.weight", transpose=True))
    if head == "score":
        rules.append(TensorRule("score", "score.weight", transpose=True))
    return rules + list(config.family.hf_layer_names(config))


def module_param_path(rule: TensorRule, head: str) -> str:
    """Attribute path inside the NNX module (the scalar-head model nests its decoder)."""
    if head == "score" and rule.param != "score":
        return "decoder." + rule.param
    return rule.param
