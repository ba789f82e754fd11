"""ModelConfig from/to HF config.json and the refusals that name the problem."""

import json

import pytest

from jaxalign.models.config import ConfigError, ModelConfig

BASE = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 100, "hidden_size": 64,
        "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}


def test_round_trip_through_hf_dict():
    config = ModelConfig.from_hf_dict({**BASE, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 64}})
    assert ModelConfig.from_hf_dict(config.to_hf_dict()) == config
    assert config.head_dim == 16 and config.rope_scaling_dict["factor"] == 8.0


def test_transformers5_rope_parameters_are_read():
    config = ModelConfig.from_hf_dict({**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": 123.0}})
    assert config.rope_theta == 123.0 and config.rope_scaling is None


def test_unsupported_architecture_lists_supported():
    with pytest.raises(ConfigError, match=r"'GPT2LMHeadModel' is not supported; supported: .*LlamaForCausalLM"):
        ModelConfig.from_hf_dict({**BASE, "architectures": ["GPT2LMHeadModel"]})


def test_mistral_sliding_window_covers_every_layer_and_round_trips():
    config = ModelConfig.from_hf_dict({**BASE, "architectures": ["MistralForCausalLM"], "model_type": "mistral",
                                       "sliding_window": 4096})
    assert config.layer_kinds == ("sliding_attention",) * 2 and config.window("sliding_attention") == 4096
    assert ModelConfig.from_hf_dict(config.to_hf_dict()) == config


def test_qwen2_slides_from_max_window_layers_on():
    config = ModelConfig.from_hf_dict({**BASE, "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2",
                                       "num_hidden_layers": 3, "use_sliding_window": True, "sliding_window": 8,
                                       "max_window_layers": 1})
    assert config.layer_kinds == ("full_attention", "sliding_attention", "sliding_attention")
    assert ModelConfig.from_hf_dict(config.to_hf_dict()) == config


def test_llama_ignores_a_sliding_window_field_as_transformers_does():
    assert ModelConfig.from_hf_dict({**BASE, "sliding_window": 16}).layer_types is None


@pytest.mark.parametrize("field,value,message", [
    ("hidden_act", "gelu", "hidden_act='gelu' is not supported"),
    ("rope_scaling", {"rope_type": "yarn", "factor": 2.0}, "rope scaling type 'yarn' is not supported"),
])
def test_unsupported_field_is_named(field, value, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_hf_dict({**BASE, field: value})


def test_missing_required_field_is_named(tmp_path):
    hf = dict(BASE)
    del hf["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ConfigError, match=r"config.json: required field 'hidden_size' is missing"):
        ModelConfig.from_pretrained(tmp_path)


def test_num_params_matches_model():
    import jax
    from flax import nnx

    from jaxalign.models import init_model

    config = ModelConfig.from_hf_dict(BASE)
    state = nnx.state(init_model(config), nnx.Param)
    assert sum(x.size for x in jax.tree.leaves(state)) == config.num_params()
