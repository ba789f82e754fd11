"""Depth pruning keeps the surviving layers exactly and writes a loadable HF folder."""

import numpy as np
import pytest
import torch

from jaxalign.models import layers_to_drop, load_pretrained, prune_checkpoint, prune_layers


def test_layers_to_drop_keeps_first_and_last():
    drop = layers_to_drop(30, 0.2)
    assert len(drop) == 6 and 0 not in drop and 29 not in drop
    assert layers_to_drop(30, 0.2, "last") == [23, 24, 25, 26, 27, 28]


@pytest.mark.parametrize("layers,fraction", [(5, 0.4), (5, 0.6), (4, 0.5), (12, 0.75)])
def test_uniform_drops_as_many_distinct_inner_layers_as_asked(layers, fraction):
    """Few layers: evenly spaced picks that round onto the same layer are spread apart, not merged."""
    drop = layers_to_drop(layers, fraction)
    assert len(drop) == round(fraction * layers) == len(set(drop))
    assert all(0 < i < layers - 1 for i in drop)


def test_pruned_layers_are_the_kept_ones(tiny_hf_checkpoint):
    model, _ = load_pretrained(tiny_hf_checkpoint("llama_gqa"))
    pruned = prune_layers(model, [0])
    assert pruned.config.num_layers == 1
    np.testing.assert_array_equal(np.asarray(pruned.layers.down_proj[...][0]), np.asarray(model.layers.down_proj[...][1]))
    np.testing.assert_array_equal(np.asarray(pruned.embed[...]), np.asarray(model.embed[...]))


def test_out_of_range_layer_is_refused(tiny_hf_checkpoint):
    model, _ = load_pretrained(tiny_hf_checkpoint("llama_gqa"))
    with pytest.raises(ValueError, match=r"layers \[7\] are out of range for a model with 2 layers"):
        prune_layers(model, [7])


def test_pruned_checkpoint_loads_in_transformers(tiny_hf_checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM

    result = prune_checkpoint(tiny_hf_checkpoint("llama_gqa"), tmp_path / "student", drop=[1])
    out = result.path
    assert result.dropped == [1] and not (out / "importance.json").exists()  # positions need no calibration
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert hf.config.num_hidden_layers == 1
    ours, _ = load_pretrained(out)
    ids = np.arange(3, 13, dtype=np.int32)[None]
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    assert np.abs(np.asarray(ours(ids)) - ref).max() <= 1e-4


def _calibration(tmp_path):
    import json

    path = tmp_path / "calib.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Why is the sky blue?", "Name a prime.", "Hi there"]))
    return str(path)


def test_importance_strategy_drops_the_layer_that_changes_nothing(byte_tokenizer, tmp_path):
    import jax.numpy as jnp

    from jaxalign.models.prune import PruneSpec, prune_model
    from tests.models.prune_models import random_ids, random_model, tiny_config, zero_structures

    model = zero_structures(random_model(tiny_config(vocab_size=320, num_layers=5)), layers_identity=[3])
    spec = PruneSpec(fraction=0.2, strategy="importance", calibration=_calibration(tmp_path), calibration_size=3)
    pruned, result = prune_model(model, byte_tokenizer, spec, show_progress=False)
    assert result.dropped == [3] and result.importance.skip_kl.argmin() == 3
    ids = jnp.asarray(random_ids(320, 2, 9))
    np.testing.assert_allclose(np.asarray(pruned(ids)), np.asarray(model(ids)), atol=1e-5, rtol=0)


def test_params_fraction_picks_the_closest_width_mix(byte_tokenizer, tmp_path):
    from jaxalign.models.prune import PruneSpec, prune_model
    from tests.models.prune_models import random_model, tiny_config

    model = random_model(tiny_config(vocab_size=320))
    spec = PruneSpec(params_fraction=0.2, calibration=_calibration(tmp_path), calibration_size=3)
    pruned, result = prune_model(model, byte_tokenizer, spec, show_progress=False)
    removed = 1 - result.config.num_params() / model.config.num_params()
    assert len(result.mixes) >= 2 and abs(removed - 0.2) < 0.05
    assert result.counts == min(result.mixes, key=lambda m: m[1])[0] and result.dropped == []
    assert pruned.config == result.config


def test_width_mixes_hit_the_parameter_target():
    """SmolLM2-135M's shape: every candidate removes 20% +- 5% of the parameters; MLP-only and hidden-only are
    (within a channel) among them, and mixes with one of its 3 KV groups."""
    from jaxalign.models import ModelConfig
    from jaxalign.models.prune import width_mixes
    from jaxalign.models.prune_width import pruned_config

    config = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
                         num_kv_heads=3, head_dim=64, tie_word_embeddings=True)
    mixes = width_mixes(config, 0.2)
    removed = [1 - pruned_config(config, m).num_params() / config.num_params() for m in mixes]
    assert all(abs(r - 0.2) < 0.05 for r in removed), removed
    assert any(m.hidden == 0 and m.kv_groups == 0 for m in mixes) and any(m.hidden and m.mlp <= 1 for m in mixes)
    assert any(m.kv_groups == 1 for m in mixes)


def test_importance_strategy_needs_a_score_per_layer():
    with pytest.raises(ValueError, match=r"strategy='importance' needs a finite score per layer \(6\)"):
        layers_to_drop(6, 0.34, "importance", [0.1, 0.2])
    assert layers_to_drop(6, 0.34, "importance", [9, 0.3, 0.1, 0.2, 0.05, 0]) == [2, 4]  # the ends always stay
