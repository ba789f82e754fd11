"""Phi-3 (mini / medium 4k, and Phi-4-mini-style partial rotary): the Llama layer over fused checkpoints.

The checkpoint fuses q/k/v into `self_attn.qkv_proj` (rows q, then k, then v) and gate/up into
`mlp.gate_up_proj` (rows gate, then up); `TensorRule.rows` splits them into the separate
parameters `self_attention` and `gated_mlp` use, and saving concatenates them back bitwise.
RoPE turns the first `int(head_dim * partial_rotary_factor)` dims of each head. A `sliding_window`
applies to every layer. `resid_pdrop`, `embd_pdrop` and `attention_dropout` are training-time
dropout, not part of the function. LongRoPE (`rope_type` "longrope", "su" or "yarn": the 128k
variants) switches its frequencies on the sequence length and rescales cos/sin; it is refused.
"""

from __future__ import annotations

import dataclasses

from jaxalign.models.checkpoint_names import LAYER_PREFIX, TensorRule
from jaxalign.models.config import ConfigError, ModelConfig, check_activation, common_from_hf, common_to_hf
from jaxalign.models.families import Family, GGUFSpec, register_family
from jaxalign.models.families.llama import layer, layer_params
from jaxalign.models.layers.rope import inverse_frequencies

LONGROPE = ("longrope", "su", "yarn")  # names the Phi-3 config uses for LongRoPE
DEFAULT_RMS_NORM_EPS = 1e-5  # Phi3Config's default


@dataclasses.dataclass(frozen=True)
class Phi3ModelConfig(ModelConfig):
    """`ModelConfig` plus the fraction of each head's dims that RoPE rotates (the rest pass through)."""

    partial_rotary_factor: float = 1.0

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


def hf_layer_names(c: Phi3ModelConfig) -> list[TensorRule]:
    """Per-layer rules; q/k/v and gate/up are row slices of the fused HF tensors."""
    q, kv, f = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size
    qkv, gate_up = LAYER_PREFIX + "self_attn.qkv_proj.weight", LAYER_PREFIX + "mlp.gate_up_proj.weight"
    rules = [
        TensorRule("layers.attn_norm", LAYER_PREFIX + "input_layernorm.weight"),
        TensorRule("layers.q_proj", qkv, transpose=True, rows=(0, q)),
        TensorRule("layers.k_proj", qkv, transpose=True, rows=(q, q + kv)),
        TensorRule("layers.v_proj", qkv, transpose=True, rows=(q + kv, q + 2 * kv)),
        TensorRule("layers.o_proj", LAYER_PREFIX + "self_attn.o_proj.weight", transpose=True),
        TensorRule("layers.mlp_norm", LAYER_PREFIX + "post_attention_layernorm.weight"),
        TensorRule("layers.gate_proj", gate_up, transpose=True, rows=(0, f)),
        TensorRule("layers.up_proj", gate_up, transpose=True, rows=(f, 2 * f)),
        TensorRule("layers.down_proj", LAYER_PREFIX + "mlp.down_proj.weight", transpose=True),
    ]
    missing = sorted(set(layer_params(c)) - {r.param.split(".", 1)[1] for r in rules})
    if missing:
        raise ConfigError(f"phi3 has no checkpoint name for layer parameters {missing}")
    return rules


def rope_tables(c: Phi3ModelConfig) -> dict:
    return {"default": inverse_frequencies(c.rotary_dim, c.rope_theta)}


def config_from_hf(hf: dict, source: str) -> Phi3ModelConfig:
    check_activation(hf, source, ("silu",))
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind in LONGROPE:
        raise ConfigError(f"{source}: Phi-3 rope_type {kind!r} (LongRoPE, the 128k-context variants) is not "
                          "supported; only the default rotary embedding (the 4k variants) is")
    if kind != "default":
        raise ConfigError(f"{source}: Phi-3 rope_type {kind!r} is not supported (transformers' Phi-3 accepts "
                          "only default and longrope)")
    common = common_from_hf(hf, source, "phi3")
    common["rms_norm_eps"] = float(hf.get("rms_norm_eps", DEFAULT_RMS_NORM_EPS))
    factor = float(rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
    rotary = int(common["head_dim"] * factor)
    if not 0.0 < factor <= 1.0 or rotary % 2 or rotary == 0:
        raise ConfigError(f"{source}: partial_rotary_factor={factor} gives {rotary} rotary dims of "
                          f"head_dim={common['head_dim']}; need an even number in (0, head_dim]")
    window = hf.get("sliding_window")
    return Phi3ModelConfig(**common, partial_rotary_factor=factor, sliding_window=window,
                           layer_types=("sliding_attention",) * common["num_layers"] if window else None)


def config_to_hf(c: Phi3ModelConfig) -> dict:
    if c.qkv_bias or c.o_bias or c.mlp_bias:
        raise ConfigError("phi3 has no projection biases")
    if c.rope_scaling:
        raise ConfigError(f"phi3 supports only the default rotary embedding, not {dict(c.rope_scaling)}")
    if c.layer_types and set(c.layer_types) != {"sliding_attention"}:
        raise ConfigError("phi3 slides its window over every layer or none")
    rope = {**common_to_hf(c)["rope_parameters"], "partial_rotary_factor": c.partial_rotary_factor}
    return {"hidden_act": "silu", "sliding_window": c.sliding_window if c.layer_types else None,
            "partial_rotary_factor": c.partial_rotary_factor, "rope_parameters": rope}


register_family(Family(
    model_type="phi3",
    causal_lm="Phi3ForCausalLM",
    sequence_classification="Phi3ForSequenceClassification",
    config_from_hf=config_from_hf,
    config_to_hf=config_to_hf,
    layer_params=layer_params,
    layer=layer,
    hf_layer_names=hf_layer_names,
    rope_tables=rope_tables,
    # llama.cpp `phi3`: NeoX rotary (rows not permuted), the same fused attn_qkv and ffn_up (gate rows
    # first) as the HF checkpoint; the 128k files' rope_factors_long/short tensors have no mapping.
    gguf=GGUFSpec("phi3", permute_qk=False, qkv_bias="never",
                  extra_tensors=(("blk.{i}.attn_qkv.weight", "model.layers.{i}.self_attn.qkv_proj.weight"),
                                 ("blk.{i}.ffn_up.weight", "model.layers.{i}.mlp.gate_up_proj.weight"))),
))
