"""Width pruning: nothing removed is the identity, removing structures that carry nothing changes nothing,
the written folder is a plain HF checkpoint transformers runs identically, GQA groups stay whole."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxalign.models import ConfigError, load_pretrained
from jaxalign.models.importance import calibrate, calibration_batches
from jaxalign.models.prune import PruneSpec, prune_checkpoint
from jaxalign.models.prune_width import WidthPlan, plan_width, prune_width, width_counts
from tests.models.prune_models import random_ids, random_model, tiny_config, zero_structures


def _logits(model, ids):
    return np.asarray(model(jnp.asarray(ids)))


def test_pruning_nothing_is_the_identity():
    model = random_model(tiny_config("gemma2"))
    ids = random_ids(64, 2, 9)
    pruned = prune_width(model, WidthPlan())
    assert pruned.config == model.config
    np.testing.assert_array_equal(_logits(pruned, ids), _logits(model, ids))


@pytest.mark.parametrize("model_type,tied", [("llama", False), ("qwen3", True), ("gemma2", True)])
def test_removing_zeroed_structures_keeps_the_logits(model_type, tied):
    """Hidden channels, MLP channels and a KV group that carry nothing are the least important ones, and the
    pruned model's logits equal the zeroed unpruned model's (norm rescale, Gemma's embedding scale, q/k norms)."""
    config = tiny_config(model_type, tie_word_embeddings=tied)
    model = zero_structures(random_model(config, seed=1), hidden=[3, 7, 11, 20], mlp=[5, 6, 9, 30], kv_groups=[1])
    ids = random_ids(64, 2, 11)
    imp = calibrate(model, calibration_batches([list(r) for r in ids], 2, shards=8), skip_kl=False, show_progress=False)
    counts = width_counts(config, hidden_fraction=4 / 32, mlp_fraction=4 / 48, heads_fraction=0.5)
    plan = plan_width(config, imp, counts)
    assert 3 not in plan.hidden and 30 not in plan.mlp[0] and plan.kv_groups.tolist() == [[0]] * 3
    pruned = prune_width(model, plan)
    c = pruned.config
    assert (c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim) == (28, 44, 2, 1, 8)
    np.testing.assert_allclose(_logits(pruned, ids), _logits(model, ids), atol=1e-5, rtol=0)


def test_gqa_groups_stay_whole():
    """Each kept KV head keeps exactly the query heads that read it, in order (HF: head h reads KV head h // G)."""
    config = tiny_config(num_heads=6, num_kv_heads=3, num_layers=2)
    model = random_model(config, seed=2)
    plan = WidthPlan(kv_groups=np.array([[0, 2], [1, 2]]))
    pruned = prune_width(model, plan)
    Dh, G = 8, 2
    q, k, o = (np.asarray(getattr(model.layers, n)[...]) for n in ("q_proj", "k_proj", "o_proj"))
    pq, pk, po = (np.asarray(getattr(pruned.layers, n)[...]) for n in ("q_proj", "k_proj", "o_proj"))
    for layer, groups in enumerate(plan.kv_groups):
        for new, g in enumerate(groups):
            np.testing.assert_array_equal(pk[layer][:, new * Dh:(new + 1) * Dh], k[layer][:, g * Dh:(g + 1) * Dh])
            cols = slice(g * G * Dh, (g + 1) * G * Dh)
            np.testing.assert_array_equal(pq[layer][:, new * G * Dh:(new + 1) * G * Dh], q[layer][:, cols])
            np.testing.assert_array_equal(po[layer][new * G * Dh:(new + 1) * G * Dh], o[layer][cols])


@pytest.mark.parametrize("flavour", ["qwen2_tied", "llama_bias"])
def test_pruned_folder_runs_in_transformers_like_jaxalign(flavour, tiny_hf_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    src = tiny_hf_checkpoint(flavour)
    spec = PruneSpec(hidden_fraction=0.25, mlp_fraction=0.25, heads_fraction=0.5, drop=(1,),
                     calibration=str(_prompts(tmp_path)), calibration_size=3, calibration_batch_size=2)
    result = prune_checkpoint(src, tmp_path / "student", spec, show_progress=False)
    hf_config = json.loads((result.path / "config.json").read_text())
    assert (hf_config["hidden_size"], hf_config["intermediate_size"], hf_config["num_hidden_layers"]) == (48, 72, 1)
    assert (hf_config["num_attention_heads"], hf_config["num_key_value_heads"], hf_config["head_dim"]) == (2, 1, 16)
    assert (result.path / "importance.json").is_file() and result.importance.prompts == 3
    hf = AutoModelForCausalLM.from_pretrained(result.path, torch_dtype=torch.float32).eval()
    assert hf.config.tie_word_embeddings == (flavour == "qwen2_tied")
    if hf.config.tie_word_embeddings:
        assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    ours, _ = load_pretrained(result.path)
    ids = random_ids(320, 2, 12)
    with torch.no_grad():
        ref = hf(torch.tensor(ids).long()).logits.numpy()
    np.testing.assert_allclose(_logits(ours, ids), ref, atol=1e-4, rtol=0)


def _prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Why is the sky blue?", "Name a prime.", "Hi"]))
    return path


@pytest.mark.parametrize("kwargs,message", [
    (dict(heads_fraction=0.25), r"heads_fraction=0.25 of 4 heads removes 1: heads go in whole KV groups of 2"),
    (dict(mlp_fraction=1.0), r"mlp_fraction=1.0 must be in \[0, 1\)"),
    (dict(hidden_fraction=-0.1), r"hidden_fraction=-0.1 must be in \[0, 1\)"),
    (dict(mlp_fraction=0.001), r"mlp_fraction=0.001 of 96 channels removes 0; it must remove 1..95"),
])
def test_bad_fractions_are_refused_before_anything_is_written(kwargs, message, tiny_hf_checkpoint, tmp_path):
    with pytest.raises(ConfigError, match=message):
        prune_checkpoint(tiny_hf_checkpoint("llama_gqa"), tmp_path / "out", PruneSpec(**kwargs), show_progress=False)
    assert not (tmp_path / "out").exists()


FAMILY_CASES = {
    "Gemma2Config": dict(head_dim=8, sliding_window=5, query_pre_attn_scalar=12, attn_logit_softcapping=0.5,
                         final_logit_softcapping=0.2),  # (1 + w) norms, post-norms, sqrt(D) embedding scale, tied
    "Qwen3Config": dict(head_dim=8),  # per-head q/k norms
    "Phi3Config": dict(),  # fused qkv / gate_up checkpoint tensors
}


@pytest.mark.parametrize("config_class", sorted(FAMILY_CASES))
def test_width_pruned_families_match_transformers(config_class, tmp_path):
    from tests.conftest import _byte_tokenizer
    from tests.models.family_checks import check_logits_match_transformers, make_hf_checkpoint

    src = make_hf_checkpoint(tmp_path / "src", config_class, vocab_size=320, hidden_size=32, intermediate_size=48,
                             num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                             **FAMILY_CASES[config_class])
    _byte_tokenizer().save_pretrained(src)
    spec = PruneSpec(hidden_fraction=0.25, mlp_fraction=0.25, heads_fraction=0.5, calibration=str(_prompts(tmp_path)),
                     calibration_size=2)
    result = prune_checkpoint(src, tmp_path / "out", spec, show_progress=False)
    assert (result.config.hidden_size, result.config.num_heads, result.config.intermediate_size) == (24, 2, 36)
    check_logits_match_transformers(result.path, length=12)
