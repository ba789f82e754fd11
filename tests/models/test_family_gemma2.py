"""Gemma 2: tiny transformers checkpoints (alternating sliding/global layers, 5 layers so the scan
over the 2-layer period leaves a remainder, sequences longer than the window, soft-caps small enough
to bite) through the family checks."""

import pytest

from tests.models.family_checks import (
    check_dpo_step,
    check_greedy_generation_equals_argmax_loop,
    check_logits_match_transformers,
    check_save_round_trip,
    make_hf_checkpoint,
)

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=5, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=128, sliding_window=5,
            query_pre_attn_scalar=12, attn_logit_softcapping=0.5, final_logit_softcapping=0.2)
CASES = {
    "tied": dict(),
    "untied_bias_gelu": dict(tie_word_embeddings=False, attention_bias=True, hidden_activation="gelu",
                             rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp(request.param), "Gemma2Config", **TINY, **CASES[request.param])


def test_logits_generation_and_dpo_step(checkpoint, request):
    model = check_logits_match_transformers(checkpoint, length=19)
    assert model.config.layer_kinds == ("sliding_attention", "full_attention") * 2 + ("sliding_attention",)
    if request.node.callspec.params["checkpoint"] == "tied":  # the variant only changes what the logits show
        check_greedy_generation_equals_argmax_loop(model, new_tokens=8)
        check_dpo_step(model)


def test_save_round_trip_is_bitwise(checkpoint, tmp_path):
    check_save_round_trip(checkpoint, tmp_path / "out")
