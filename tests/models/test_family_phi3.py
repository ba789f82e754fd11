"""Phi-3: fused qkv_proj / gate_up_proj split into q/k/v and gate/up (also on a sharded mesh) and fused
back bitwise, partial rotary embeddings, a sliding window over every layer, the clear refusal of
LongRoPE, and llama.cpp's fused names, against tiny transformers checkpoints."""

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxalign.models import ConfigError, load_model
from jaxalign.models.config import ModelConfig
from jaxalign.models.gguf_import import _expected_shapes, _map_tensor_name
from jaxalign.parallel.mesh import make_mesh
from tests.models.family_checks import (
    check_dpo_step,
    check_greedy_generation_equals_argmax_loop,
    check_logits_match_transformers,
    check_save_round_trip,
    make_hf_checkpoint,
)

TINY = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
CASES = {
    # RoPE on the first half of each 8-dim head; every layer slides over 5 keys.
    "phi3_partial_sliding": dict(partial_rotary_factor=0.5, sliding_window=5, tie_word_embeddings=False),
    "phi3_full_tied": dict(tie_word_embeddings=True, rms_norm_eps=1e-6),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp(request.param), "Phi3Config", **TINY, **CASES[request.param])


def test_logits_match_and_save_round_trip_is_bitwise(checkpoint, tmp_path):
    check_logits_match_transformers(checkpoint, length=19)
    check_save_round_trip(checkpoint, tmp_path / "out")


def test_fused_rows_load_onto_a_tensor_sharded_mesh(checkpoint):
    """Each device reads its own rows of qkv_proj / gate_up_proj: the split parameters equal the fused
    tensor's slices, sharded over (fsdp, tensor)."""
    model = load_model(checkpoint, mesh=make_mesh(data=2, fsdp=2, tensor=2))
    fused = load_file(str(checkpoint / "model.safetensors"))
    q, kv, f = 4 * 8, 2 * 8, 48
    qkv, gate_up = fused["model.layers.1.self_attn.qkv_proj.weight"], fused["model.layers.1.mlp.gate_up_proj.weight"]
    want = {"q_proj": qkv[:q], "k_proj": qkv[q:q + kv], "v_proj": qkv[q + kv:], "gate_proj": gate_up[:f], "up_proj": gate_up[f:]}
    for name, rows in want.items():
        value = getattr(model.layers, name)[...]
        assert tuple(value.sharding.spec) == (None, "fsdp", "tensor"), name
        np.testing.assert_array_equal(np.asarray(value[1]), rows.T, err_msg=name)


def test_generation_and_dpo_step(tmp_path):
    """On the sliding-window case (prompt + new tokens run past the window)."""
    folder = make_hf_checkpoint(tmp_path / "ckpt", "Phi3Config", **TINY, **CASES["phi3_partial_sliding"])
    model = check_logits_match_transformers(folder, length=19)
    check_greedy_generation_equals_argmax_loop(model)
    check_dpo_step(model)


BASE = dict(architectures=["Phi3ForCausalLM"], model_type="phi3", vocab_size=97, hidden_size=32, intermediate_size=48,
            num_hidden_layers=2, num_attention_heads=4)


@pytest.mark.parametrize("rope", [
    {"rope_scaling": {"type": "su", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}},  # Phi-3-mini-128k's file
    {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 4,
                         "long_factor": [2.0] * 4, "partial_rotary_factor": 1.0}},
])
def test_longrope_is_refused_by_name(rope):
    with pytest.raises(ConfigError, match=r"config.json: Phi-3 rope_type '(su|longrope)' \(LongRoPE, the "
                                          r"128k-context variants\) is not supported"):
        ModelConfig.from_hf_dict({**BASE, **rope})


def test_config_defaults_and_bad_rotary_factor():
    c = ModelConfig.from_hf_dict(BASE)
    assert c.rms_norm_eps == 1e-5 and c.rotary_dim == 8 and c.layer_types is None  # Phi3Config's defaults
    assert ModelConfig.from_hf_dict({**BASE, "partial_rotary_factor": 0.75, "hidden_size": 64}).rotary_dim == 12
    with pytest.raises(ConfigError, match=r"partial_rotary_factor=0.375 gives 3 rotary dims of head_dim=8"):
        ModelConfig.from_hf_dict({**BASE, "partial_rotary_factor": 0.375})


def test_gguf_names_map_onto_the_fused_tensors():
    """llama.cpp's phi3 `attn_qkv` / `ffn_up` are the fused HF tensors, with their full shapes."""
    config = {**BASE, "num_key_value_heads": 2}
    extra = ModelConfig.from_hf_dict(config).family.gguf.extra_tensors
    assert _map_tensor_name("blk.2.ffn_up.weight", extra)[0] == "model.layers.2.mlp.gate_up_proj.weight"
    assert _map_tensor_name("blk.0.attn_qkv.weight", extra)[0] == "model.layers.0.self_attn.qkv_proj.weight"
    assert _map_tensor_name("blk.0.ffn_up.weight")[0] == "model.layers.0.mlp.up_proj.weight"  # other families
    shapes = _expected_shapes(config)
    assert shapes["model.layers.1.self_attn.qkv_proj.weight"] == (4 * 8 + 2 * 2 * 8, 32)
    assert shapes["model.layers.1.mlp.gate_up_proj.weight"] == (2 * 48, 32)


GGUF_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
              "lm_head.weight": "output.weight", "input_layernorm.weight": "attn_norm.weight",
              "self_attn.qkv_proj.weight": "attn_qkv.weight", "self_attn.o_proj.weight": "attn_output.weight",
              "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_up_proj.weight": "ffn_up.weight",
              "mlp.down_proj.weight": "ffn_down.weight"}


@pytest.mark.filterwarnings("ignore:.*has no tokenizer")
def test_gguf_written_the_llama_cpp_way_imports_bitwise(tmp_path):
    """A phi3 GGUF (fused attn_qkv / ffn_up, as llama.cpp's converter writes it) imports to the HF tensors."""
    import gguf

    from jaxalign.models.gguf_import import gguf_to_hf

    folder = make_hf_checkpoint(tmp_path / "hf", "Phi3Config", **TINY, **CASES["phi3_full_tied"])
    state = load_file(str(folder / "model.safetensors"))
    w = gguf.GGUFWriter(str(tmp_path / "phi3.gguf"), "phi3")
    for add, value in ((w.add_block_count, 3), (w.add_context_length, 128), (w.add_embedding_length, 32),
                       (w.add_feed_forward_length, 48), (w.add_head_count, 4), (w.add_head_count_kv, 2),
                       (w.add_rope_freq_base, 10000.0), (w.add_layer_norm_rms_eps, 1e-6), (w.add_rope_dimension_count, 8)):
        add(value)
    for name, t in state.items():
        if name.startswith("model.layers."):
            layer, suffix = name.removeprefix("model.layers.").split(".", 1)
            w.add_tensor(f"blk.{layer}.{GGUF_NAMES[suffix]}", t)
        else:
            w.add_tensor(GGUF_NAMES[name], t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = gguf_to_hf(tmp_path / "phi3.gguf", tmp_path / "imported", dtype="float32", require_tokenizer=False)
    got = load_file(str(out / "model.safetensors"))
    assert sorted(got) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    c = ModelConfig.from_pretrained(out)
    assert (c.model_type, c.num_kv_heads, c.rotary_dim, c.rms_norm_eps, c.tie_word_embeddings) == ("phi3", 2, 8, 1e-6, True)
