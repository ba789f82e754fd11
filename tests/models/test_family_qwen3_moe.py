"""Qwen3-MoE (q/k norms, 4 experts, top-2; with and without renormalised top-k weights, with a
sliding window and attention biases): the family checks on tiny transformers checkpoints, routing
and the load-balancing loss against transformers', the fused checkpoint layout, a train step with
experts sharded over 8 CPU devices against 1 device, and the refusal of dense layers."""

import re

import pytest

from jaxalign.models import ModelConfig
from jaxalign.models.config import ConfigError
from tests.models.family_checks import (
    check_dpo_step,
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

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=48, moe_intermediate_size=16, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
            tie_word_embeddings=False, num_experts=4, num_experts_per_tok=2)
CASES = {
    "plain": dict(norm_topk_prob=False),
    "normalised_sliding_bias": dict(norm_topk_prob=True, use_sliding_window=True, sliding_window=5,
                                    attention_bias=True),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def checkpoint(request, tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp(request.param), "Qwen3MoeConfig", **TINY, **CASES[request.param])


def test_logits_routing_generation_and_dpo_step(checkpoint):
    """(On the plain case the DPO step is `check_sharded_train_step_equals_one_device`'s.)"""
    model = check_logits_match_transformers(checkpoint, length=19)
    check_routing_and_aux_loss_match_transformers(checkpoint, length=19)
    check_greedy_generation_equals_argmax_loop(model)
    if "plain" not in str(checkpoint):
        check_dpo_step(model)


def test_save_round_trip_is_bitwise(checkpoint, tmp_path):
    check_save_round_trip(checkpoint, tmp_path / "out")


def test_fused_layout_loads_and_sharded_step_equals_one_device(checkpoint, tmp_path):
    if "plain" not in str(checkpoint):
        pytest.skip("one case is enough")
    check_fused_layout_loads(checkpoint, tmp_path / "fused")
    check_sharded_train_step_equals_one_device(checkpoint)


@pytest.mark.parametrize("extra, dense", [(dict(decoder_sparse_step=2), "[0, 2]"), (dict(mlp_only_layers=[1]), "[1]")])
def test_dense_layers_are_refused(extra, dense):
    hf = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "num_attention_heads": 4,
          "hidden_size": 32, "vocab_size": 97, "intermediate_size": 48, "num_hidden_layers": 3, "num_experts": 4,
          "moe_intermediate_size": 16, **extra}
    with pytest.raises(ConfigError, match=r"^cfg\.json: .*" + re.escape(f"make layers {dense} dense")):
        ModelConfig.from_hf_dict(hf, source="cfg.json")
