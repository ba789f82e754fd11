"""Gemma 3 text: a tiny transformers checkpoint with 7 layers (one 5:1 period of sliding/global
layers plus a remainder the decoder's scan runs separately), sequences longer than the window, a
local RoPE base and a linearly scaled global one, q/k norms, soft-capped final logits (and an
`attn_logit_softcapping` that transformers ignores for Gemma 3), through the family checks; then a
pruned copy keeps each layer's kind and transformers reads the saved folder the same way."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

from jaxalign.models import ModelConfig, load_model, prune_layers, save_pretrained
from tests.models.family_checks import (
    check_dpo_step,
    check_greedy_generation_equals_argmax_loop,
    check_logits_match_transformers,
    check_save_round_trip,
    hf_model,
    make_hf_checkpoint,
    random_ids,
)

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=7, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=128, sliding_window=5,
            query_pre_attn_scalar=12, final_logit_softcapping=0.2, attn_logit_softcapping=0.5,
            rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                             "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 5000.0}})
KINDS = ("sliding_attention",) * 5 + ("full_attention", "sliding_attention")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("gemma3"), "Gemma3TextConfig", **TINY)


def test_logits_generation_and_dpo_step(checkpoint):
    model = check_logits_match_transformers(checkpoint, length=19)
    assert model.config.layer_kinds == KINDS
    check_greedy_generation_equals_argmax_loop(model, new_tokens=8)
    check_dpo_step(model)


def test_save_round_trip_is_bitwise(checkpoint, tmp_path):
    check_save_round_trip(checkpoint, tmp_path / "out")


def test_pruned_model_keeps_layer_kinds_and_loads_in_transformers(checkpoint, tmp_path):
    pruned = prune_layers(load_model(checkpoint), drop=[0, 3])
    kept = tuple(KINDS[i] for i in (1, 2, 4, 5, 6))
    assert pruned.config.layer_kinds == kept == ("sliding_attention",) * 3 + ("full_attention", "sliding_attention")
    save_pretrained(pruned, None, tmp_path / "pruned")
    assert tuple(json.loads((tmp_path / "pruned" / "config.json").read_text())["layer_types"]) == kept
    ids = random_ids(pruned.config.vocab_size, 2, 19, seed=4)
    ours = np.asarray(pruned(jnp.asarray(ids)))
    with torch.no_grad():
        theirs = hf_model(tmp_path / "pruned")(torch.from_numpy(ids).long()).logits.numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


def test_config_keys_of_older_files_read_like_transformers():
    """Pre-5 files (`rope_theta` + `rope_scaling` for the global layers, `rope_local_base_freq`, no
    `layer_types`) give the RoPE tables transformers computes and its default 5:1 pattern; writing
    the config back and reading it again changes nothing."""
    old = {k: v for k, v in TINY.items() if k != "rope_parameters"}
    old.update(rope_theta=5000.0, rope_scaling={"rope_type": "linear", "factor": 8.0}, rope_local_base_freq=100.0,
               num_hidden_layers=8, pad_token_id=0, eos_token_id=1, bos_token_id=2,
               architectures=["Gemma3ForCausalLM"], model_type="gemma3_text")
    ours = ModelConfig.from_hf_dict(old)
    assert ours.layer_kinds == KINDS[:6] + KINDS[:2]  # every 6th layer global
    hf = transformers.Gemma3TextConfig(**{k: v for k, v in old.items() if k not in ("architectures", "model_type")})
    rotary = Gemma3RotaryEmbedding(hf)
    tables = ours.family.rope_tables(ours)
    np.testing.assert_array_equal(tables["local"], rotary.sliding_attention_inv_freq.numpy())
    np.testing.assert_array_equal(tables["global"], rotary.full_attention_inv_freq.numpy())
    assert ModelConfig.from_hf_dict(hf.to_dict() | {"architectures": ["Gemma3ForCausalLM"]}) == ours
    assert ModelConfig.from_hf_dict(ours.to_hf_dict()) == ours
