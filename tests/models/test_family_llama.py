"""Llama, Mistral with a sliding window, Qwen2 with sliding-window layers: tiny transformers
checkpoints through the family checks (sequences longer than the window)."""

import pytest

from tests.models.family_checks import (
    check_dpo_step,
    check_greedy_generation_equals_argmax_loop,
    check_logits_match_transformers,
    check_save_round_trip,
    make_hf_checkpoint,
)

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
CASES = {
    "llama": ("LlamaConfig", dict(attention_bias=True, rope_scaling={"rope_type": "llama3", "factor": 4.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "mistral_sliding": ("MistralConfig", dict(sliding_window=5)),
    "qwen2_sliding": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=5, max_window_layers=1)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    cls, extra = CASES[request.param]
    return make_hf_checkpoint(tmp_path_factory.mktemp(request.param), cls, **TINY, **extra)


def test_logits_generation_and_dpo_step(checkpoint):
    model = check_logits_match_transformers(checkpoint, length=19)
    check_greedy_generation_equals_argmax_loop(model)
    check_dpo_step(model)


def test_save_round_trip_is_bitwise(checkpoint, tmp_path):
    check_save_round_trip(checkpoint, tmp_path / "out")
