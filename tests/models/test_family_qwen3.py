"""Qwen3: q/k norms, explicit head_dim != hidden / heads, optional attention bias, Qwen2-style
sliding layers and tied embeddings, against tiny transformers checkpoints."""

import pytest

from jaxalign.models.config import ModelConfig
from tests.models.family_checks import (
    check_dpo_step,
    check_greedy_generation_equals_argmax_loop,
    check_logits_match_transformers,
    check_save_round_trip,
    make_hf_checkpoint,
)

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=128)
CASES = {
    # head_dim 16 (hidden / heads = 8), biased q/k/v/o, layers 1 and 2 slide over 5 keys.
    "qwen3_sliding_bias": dict(head_dim=16, num_key_value_heads=2, attention_bias=True, use_sliding_window=True,
                               sliding_window=5, max_window_layers=1, tie_word_embeddings=False),
    "qwen3_tied": dict(head_dim=8, num_key_value_heads=1, tie_word_embeddings=True, rope_theta=1e6),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp(request.param), "Qwen3Config", **TINY, **CASES[request.param])


def test_logits_match_and_save_round_trip_is_bitwise(checkpoint, tmp_path):
    check_logits_match_transformers(checkpoint, length=19)
    check_save_round_trip(checkpoint, tmp_path / "out")


def test_generation_and_dpo_step(tmp_path):
    """On the sliding-window case (prompt + new tokens run past the window)."""
    folder = make_hf_checkpoint(tmp_path / "ckpt", "Qwen3Config", **TINY, **CASES["qwen3_sliding_bias"])
    model = check_logits_match_transformers(folder, length=19)
    check_greedy_generation_equals_argmax_loop(model)
    check_dpo_step(model)


def test_config_reading():
    base = dict(architectures=["Qwen3ForCausalLM"], vocab_size=97, hidden_size=32, intermediate_size=48,
                num_hidden_layers=4, num_attention_heads=4)
    # transformers' Qwen3Config defaults head_dim to 128, not hidden / heads.
    assert ModelConfig.from_hf_dict(base).head_dim == 128
    # sliding_window without use_sliding_window is ignored, as transformers does.
    assert ModelConfig.from_hf_dict({**base, "sliding_window": 4}).layer_types is None
    c = ModelConfig.from_hf_dict({**base, "sliding_window": 4, "use_sliding_window": True, "max_window_layers": 2})
    assert c.layer_types == ("full_attention",) * 2 + ("sliding_attention",) * 2 and c.sliding_window == 4
