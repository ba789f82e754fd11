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
