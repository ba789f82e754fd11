"""The calibration pass: which axis is which, and statistics that rank structures carrying nothing last."""

import numpy as np
import pytest

from jaxalign.models import ConfigError
from jaxalign.models.importance import Importance, calibrate, calibration_batches
from jaxalign.models.layers import linear as linear_module
from jaxalign.models.param_roles import axis_roles
from jaxalign.models.prune import layers_to_drop
from jaxalign.models.prune_width import width_counts
from jaxalign.parallel.mesh import make_mesh
from tests.models.prune_models import SIZES, random_ids, random_model, tiny_config, zero_structures


def test_axis_roles_follow_the_family_specs():
    roles = axis_roles(tiny_config("qwen3", qkv_bias=True, o_bias=True))
    assert roles["q_proj"] == ("hidden", "q") and roles["k_proj"] == ("hidden", "kv")
    assert roles["o_proj"] == ("q", "hidden") and roles["down_proj"] == ("mlp", "hidden")
    assert roles["q_bias"] == ("q",) and roles["v_bias"] == ("kv",) and roles["o_bias"] == ("hidden",)
    assert roles["q_norm"] == (None,) and roles["attn_norm"] == ("hidden",)
    gemma = axis_roles(tiny_config("gemma2"))
    assert gemma["post_attn_norm"] == ("hidden",) and gemma["post_mlp_norm"] == ("hidden",)


def test_mixture_of_experts_is_refused_for_width():
    from jaxalign.models.layers.moe import MoEConfig

    cfg = MoEConfig(**{**SIZES, "model_type": "mixtral", "num_experts": 4, "moe_intermediate_size": 48})
    with pytest.raises(ConfigError, match=r"width pruning of mixtral .*not supported; prune its depth"):
        width_counts(cfg, mlp_fraction=0.25)


def _batches(vocab, rows=5, shards=8):
    ids = random_ids(vocab, rows, 11)
    return calibration_batches([list(r[: 6 + i]) for i, r in enumerate(ids)], 4, shards=shards)


def test_calibration_batches_pad_rows_and_length():
    b = calibration_batches([[5, 6, 7], [8] * 17], 1, shards=4)
    assert len(b) == 1 and b[0]["input_ids"].shape == (4, 32)
    assert b[0]["segment_ids"].sum(1).tolist() == [3, 17, 0, 0]


def test_structures_carrying_nothing_score_zero_and_the_identity_layer_is_dropped():
    config = tiny_config(num_layers=4)
    model = zero_structures(random_model(config), hidden=[3, 17], mlp=[5, 40], kv_groups=[1], layers_identity=[2])
    imp = calibrate(model, _batches(config.vocab_size), show_progress=False)
    assert linear_module.INPUT_TAP is None
    assert imp.tokens == sum(range(6, 11)) and imp.prompts == 5
    assert imp.heads.shape == (4, 4) and imp.mlp.shape == (4, 48) and imp.hidden.shape == (4, 32)
    for i in (0, 1, 3):  # layer 2 writes nothing, but its inputs still flow
        assert np.all(imp.heads[i, 2:] == 0) and np.all(imp.heads[i, :2] > 0)
        assert np.all(imp.mlp[i, [5, 40]] == 0) and np.sum(imp.mlp[i] == 0) == 2
    assert np.all(imp.hidden[:, [3, 17]] == 0) and np.sum(imp.hidden.sum(0) == 0) == 2
    assert np.allclose(imp.kv_groups(2)[:, 1], 0)
    assert abs(imp.skip_kl[2]) < 1e-7 and abs(imp.cosine[2]) < 1e-6
    assert np.all(np.delete(imp.skip_kl, 2) > 1e-5) and np.all(np.delete(imp.cosine, 2) > 1e-4)
    assert layers_to_drop(4, 0.25, "importance", imp.skip_kl) == [2]


def test_statistics_do_not_depend_on_the_sharding():
    """One device, or rows over 8 data shards, or rows over data x fsdp with weights over fsdp x tensor."""
    config = tiny_config()
    model = random_model(config, seed=3)
    one = calibrate(model, _batches(config.vocab_size, shards=1), mesh=make_mesh(devices=make_mesh().devices.flat[:1]),
                    show_progress=False)
    for mesh, shards in ((make_mesh(), 8), (make_mesh(2, 2, 2), 4)):
        sharded = calibrate(model, _batches(config.vocab_size, shards=shards), mesh=mesh, show_progress=False)
        for name in ("heads", "mlp", "hidden", "cosine", "skip_kl"):
            np.testing.assert_allclose(getattr(one, name), getattr(sharded, name), rtol=1e-5, atol=1e-7, err_msg=name)


def test_importance_json_round_trip(tmp_path):
    imp = Importance(heads=np.ones((2, 4)), mlp=np.zeros((2, 6)), hidden=np.full((2, 8), 0.5), cosine=np.array([0.1, 0.2]),
                     skip_kl=np.array([np.nan, 1.0]), prompts=3, tokens=30, seconds=1.5)
    path = imp.save(tmp_path)
    back = Importance.from_json(__import__("json").loads(path.read_text()))
    assert back.prompts == 3 and back.tokens == 30 and np.isnan(back.skip_kl[0]) and back.skip_kl[1] == 1.0
    np.testing.assert_array_equal(back.hidden, imp.hidden)


def test_depth_importance_works_for_mixture_of_experts():
    """Width is refused for MoE, depth is not: the skip pass runs the family's layers (router and experts)."""
    from jaxalign.models.layers.moe import MoEConfig

    config = MoEConfig(**{**SIZES, "num_layers": 4, "model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2,
                          "moe_intermediate_size": 16})
    model = random_model(config)
    model.layers.o_proj[...] = model.layers.o_proj[...].at[1].set(0)
    for name in model.layers.names:
        if "down" in name:
            getattr(model.layers, name)[...] = getattr(model.layers, name)[...].at[1].set(0)
    imp = calibrate(model, _batches(config.vocab_size), show_progress=False)
    assert layers_to_drop(4, 0.25, "importance", imp.skip_kl) == [1] and imp.skip_kl[1] < 1e-7
