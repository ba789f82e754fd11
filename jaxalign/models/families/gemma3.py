"""Gemma 3 text (`Gemma3ForCausalLM`, model_type `gemma3_text`): Gemma 2's layer plus per-head q/k
norms, 5 sliding-window layers to 1 global by default, and a rotary table per layer kind.

Sliding layers rotate with the local base (`rope_local_base_freq`, or transformers 5's
`rope_parameters["sliding_attention"]`, default 10k); global layers with `rope_theta` and its
scaling (`rope_parameters["full_attention"]`, e.g. linear factor 8; default base 1M). As in
transformers, the final logits are soft-capped when `final_logit_softcapping` is set, and
`attn_logit_softcapping` is ignored: HF's Gemma 3 attention never passes it to its kernels.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import numpy as np

from jaxalign.models.checkpoint_names import layer_rules
from jaxalign.models.config import rope_from_hf
from jaxalign.models.families import Family, register_family
from jaxalign.models.families.gemma2 import (
    HF_NAMES,
    GemmaConfig,
    embed_scale,
    gemma_common_from_hf,
    gemma_common_to_hf,
    gemma_layer,
    layer_params,
    softcap_from_hf,
)
from jaxalign.models.layers.norms import rms_norm_plus_one
from jaxalign.models.layers.rope import inverse_frequencies

LOCAL_THETA, GLOBAL_THETA = 10_000.0, 1_000_000.0  # transformers' defaults when the file names none


@dataclasses.dataclass(frozen=True)
class Gemma3Config(GemmaConfig):
    """`GemmaConfig` plus the sliding layers' rotary base and scaling (`rope_theta` / `rope_scaling`
    are the global layers')."""

    local_rope_theta: float = LOCAL_THETA
    local_rope_scaling: tuple[tuple[str, Any], ...] | None = None


def rope_tables(c: Gemma3Config) -> dict[str, np.ndarray]:
    """{"local": sliding layers' inv_freq, "global": full-attention layers'}, each `[head_dim // 2]`."""
    local = dict(c.local_rope_scaling) if c.local_rope_scaling else None
    return {"local": inverse_frequencies(c.head_dim, c.local_rope_theta, local),
            "global": inverse_frequencies(c.head_dim, c.rope_theta, c.rope_scaling_dict)}


def layer(c: Gemma3Config, kind: str, p, x, ctx, cache=None, cache_index=None):
    return gemma_layer(c, kind, p, x, ctx, cache, cache_index,
                       rope="local" if kind == "sliding_attention" else "global",
                       qk_norm=functools.partial(rms_norm_plus_one, eps=c.rms_norm_eps))


def _rope_from_hf(hf: dict, source: str) -> dict:
    """Both rotary tables from transformers 5's per-layer-type `rope_parameters`, or from the older
    `rope_theta` + `rope_scaling` (global) and `rope_local_base_freq` (sliding)."""
    params = hf.get("rope_parameters") or {}
    per_type = {"full_attention", "sliding_attention"} & set(params)
    glob = params.get("full_attention") if per_type else None
    loc = params.get("sliding_attention") if per_type else None
    theta, scaling = rope_from_hf({"rope_parameters": glob, "rope_scaling": hf.get("rope_scaling"),
                                   "rope_theta": hf.get("rope_theta", GLOBAL_THETA)}, f"{source} (global layers)")
    local_theta, local_scaling = rope_from_hf({"rope_parameters": loc, "rope_theta": hf.get("rope_local_base_freq", LOCAL_THETA)},
                                              f"{source} (sliding layers)")
    return dict(rope_theta=theta, rope_scaling=scaling, local_rope_theta=local_theta, local_rope_scaling=local_scaling)


def _from_hf(hf: dict, source: str) -> Gemma3Config:
    pattern = int(hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6)
    fields = gemma_common_from_hf(hf, source, "gemma3_text", default_pattern=pattern)
    fields.update(_rope_from_hf(hf, source))
    return Gemma3Config(**fields, final_logit_softcap=softcap_from_hf(hf, "final_logit_softcapping", source, None))


def _rope_params(theta: float, scaling) -> dict:
    return {"rope_type": "default", **dict(scaling or ()), "rope_theta": theta}


def _to_hf(c: Gemma3Config) -> dict:
    rope = {"sliding_attention": _rope_params(c.local_rope_theta, c.local_rope_scaling),
            "full_attention": _rope_params(c.rope_theta, c.rope_scaling)}
    return {**gemma_common_to_hf(c), "attn_logit_softcapping": None, "rope_parameters": rope, "rope_scaling": None,
            "rope_local_base_freq": c.local_rope_theta}


register_family(Family(
    model_type="gemma3_text",
    causal_lm="Gemma3ForCausalLM",
    sequence_classification="Gemma3TextForSequenceClassification",
    config_from_hf=_from_hf,
    config_to_hf=_to_hf,
    layer_params=functools.partial(layer_params, qk_norm=True),
    layer=layer,
    hf_layer_names=lambda c: layer_rules(c, HF_NAMES),
    rope_tables=rope_tables,
    final_norm=rms_norm_plus_one,
    embed_scale=embed_scale,
))
