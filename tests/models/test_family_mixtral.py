"""Mixtral (sliding window, 4 experts, top-2): the family checks on a tiny transformers checkpoint,
routing and the load-balancing loss against transformers', the fused checkpoint layout, and a
train step with experts sharded over 8 CPU devices against 1 device."""

import pytest

from tests.models.family_checks import (
    check_greedy_generation_equals_argmax_loop,
    check_logits_match_transformers,
    check_save_round_trip,
    make_hf_checkpoint,
)
from tests.models.moe_checks import (
    check_fused_layout_loads,
    check_routing_and_aux_loss_match_transformers,
    check_sharded_train_step_equals_one_device,
)

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=24, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
            num_local_experts=4, num_experts_per_tok=2, sliding_window=5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("mixtral"), "MixtralConfig", **TINY)


def test_logits_and_generation(checkpoint):
    """(The DPO step is `test_sharded_train_step_equals_one_device`'s: from ln 2 + aux, parameters move.)"""
    model = check_logits_match_transformers(checkpoint, length=19)
    check_greedy_generation_equals_argmax_loop(model)


def test_save_round_trip_is_bitwise(checkpoint, tmp_path):
    check_save_round_trip(checkpoint, tmp_path / "out")


def test_routing_and_aux_loss_match_transformers(checkpoint):
    check_routing_and_aux_loss_match_transformers(checkpoint, length=19)


def test_fused_layout_loads(checkpoint, tmp_path):
    check_fused_layout_loads(checkpoint, tmp_path / "fused")


def test_sharded_train_step_equals_one_device(checkpoint):
    check_sharded_train_step_equals_one_device(checkpoint)
