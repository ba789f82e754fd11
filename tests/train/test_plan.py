"""`jaxalign plan`: per-device bytes of abstract sharded arrays, the compiled step's temp memory,
FLOPs corrected for the layer scan, advice over a budget, and the CLI's JSON (tiny configs)."""

import json

import jax
import numpy as np
import pytest

from jaxalign.cli.main import main
from jaxalign.config import load_config
from jaxalign.config.presets import preset_hf_config
from jaxalign.parallel.mesh import make_mesh
from jaxalign.config.schema import ConfigError
from jaxalign.data.kd_cache import SIDES, TopKCacheWriter
from jaxalign.train.plan import GIB, _build_step, _flops, format_plan, kd_cache_k, plan_train, step_flops, suggest

STEP_OVERRIDES = ["data.batch_size=8", "data.max_length=32", "data.max_prompt_length=16", "model.dtype=float32",
                  "model.remat=none", "teacher.dtype=float32"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """config.json folders only: a 3-layer student and a 2-layer teacher."""
    root = tmp_path_factory.mktemp("shapes")
    for name, layers in (("student", 3), ("teacher", 2)):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps({**preset_hf_config("tiny"), "num_hidden_layers": layers}))
    return root


def test_cli_plan_json_per_device_bytes_are_the_shards_of_the_arrays(shapes, capsys):
    code = main(["plan", "configs/dadpo.yaml", f"model.path={shapes / 'student'}", f"teacher.path={shapes / 'teacher'}",
                 *STEP_OVERRIDES, "mesh.fsdp=4", "--devices", "4", "--no-flops", "--json"])
    assert code == 0
    plan = json.loads(capsys.readouterr().out)
    per, counts = plan["per_device_bytes"], plan["param_counts"]
    assert plan["devices"] == 4 and plan["mesh"] == {"data": 1, "fsdp": 4, "tensor": 1}
    assert set(counts) == {"policy", "reference", "teacher"}
    # float32 weights sharded 4 ways (norms replicated: within 25%); reference = the student; AdamW: 2 moments
    assert per["params"] == pytest.approx(counts["policy"] * 4 / 4, rel=0.25)
    assert per["frozen"] == pytest.approx((counts["reference"] + counts["teacher"]) * 4 / 4, rel=0.25)
    assert per["optimizer"] == pytest.approx(2 * per["params"], rel=0.05)
    assert per["temp"] > 0
    assert per["total"] == sum(per[k] for k in ("params", "optimizer", "frozen", "batch", "temp"))
    # XLA's own per-device argument size agrees with the shard arithmetic
    args = per["params"] + per["optimizer"] + per["frozen"] + per["batch"]
    assert plan["xla_argument_bytes"] == pytest.approx(args, rel=0.05)


def test_cached_teacher_drops_its_weights_and_budget_advice(shapes):
    models = [f"model.path={shapes / 'student'}", f"teacher.path={shapes / 'teacher'}"]
    config = load_config("configs/dadpo.yaml", [*models, *STEP_OVERRIDES, "mesh.fsdp=2"])
    plan = plan_train(config, devices=2, cached=("teacher",), flops=False)
    assert set(plan.param_counts) == {"policy", "reference"}
    assert plan.per_device_bytes["frozen"] == pytest.approx(plan.per_device_bytes["params"], rel=0.01)
    advice = suggest(plan, budget_bytes=plan.per_device_bytes["total"] / 2)
    assert any("optimizer.grad_accum_steps=2" in a for a in advice), advice
    assert suggest(plan, budget_bytes=10 * GIB) == []


def test_flops_corrected_for_the_layer_scan_equal_a_fully_unrolled_compile(shapes):
    config = load_config("configs/dpo.yaml", [f"model.path={shapes / 'student'}", *STEP_OVERRIDES])
    corrected = step_flops(config, cached=(), rows=8)
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    with jax.set_mesh(mesh):
        full = _build_step(config, mesh, cached=(), rows=8, grad_accum=1, layer_loop="unroll")
        unrolled = _flops(full.fn.lower(full.state, full.frozen, full.batch).compile())
        scanned = _build_step(config, mesh, cached=(), rows=8, grad_accum=1, layer_loop="scan")
        once = _flops(scanned.fn.lower(scanned.state, scanned.frozen, scanned.batch).compile())
    assert corrected == pytest.approx(unrolled, rel=0.02)
    assert once < 0.9 * unrolled  # what the correction is for: the scan body is counted once


KD_PRESETS = ["model.path=", "model.preset=tiny", "teacher.path=", "teacher.preset=tiny", "loss.name=dadpo"]


def _kd_config(tmp_path, *overrides):
    return load_config("configs/dadpo.yaml", [*KD_PRESETS, *STEP_OVERRIDES, "loss.kd_weight=0.5",
                                              f"loss.kd_cache={tmp_path / 'train.teacher_topk.parquet'}", *overrides])


def test_kd_cache_plan_carries_the_topk_arrays_and_no_teacher(tmp_path):
    """Teacher columns and distributions cached: the trainer loads no teacher, the batch grows by the top-k arrays."""
    kd = plan_train(_kd_config(tmp_path, "score.teacher_top_k=4", "loss.kd_on=both", "mesh.fsdp=2"),
                    devices=2, cached=("teacher",), flops=False)
    plain = plan_train(_kd_config(tmp_path, "loss.kd_weight=0", "mesh.fsdp=2"), devices=2, cached=("teacher",),
                       flops=False)
    assert set(kd.param_counts) == {"policy", "reference"}
    B, T, k, sides, shards = 8, 32, 4, 2, 2
    topk = sides * (B * T * k * (4 + 4) + B * T * 4) // shards
    assert kd.per_device_bytes["batch"] == plain.per_device_bytes["batch"] + topk
    assert kd.settings["kd_cache_k"] == 4 and plain.settings["kd_cache_k"] is None
    assert "top-4" in format_plan(kd) and "top-" not in format_plan(plain)


def _write_cache(path, k):
    writer = TopKCacheWriter(path, k)
    row = {"row": 0}
    for side in SIDES:
        row |= {f"{side}_targets": np.array([5, 6], np.int32), f"{side}_topk_ids": np.zeros((2, k), np.int32),
                f"{side}_topk_logps": np.zeros((2, k), np.float32), f"{side}_topk_residual": np.zeros(2, np.float32)}
    writer.write([row])
    return writer.finish([0], {"vocab_size": 256})


def test_kd_cache_k_from_the_file_s_metadata_else_score_teacher_top_k(tmp_path):
    assert kd_cache_k(_kd_config(tmp_path, "score.teacher_top_k=4")) == 4  # planning before scoring
    _write_cache(tmp_path / "train.teacher_topk.parquet", 3)
    assert kd_cache_k(_kd_config(tmp_path, "score.teacher_top_k=4")) == 3  # the written file wins
    assert kd_cache_k(_kd_config(tmp_path, "loss.kd_top_k=3")) == 3
    with pytest.raises(ConfigError, match="loss.kd_top_k=4 exceeds the k=3"):
        kd_cache_k(_kd_config(tmp_path, "loss.kd_top_k=4"))
    assert kd_cache_k(_kd_config(tmp_path, "loss.kd_weight=0")) is None


def test_kd_cache_k_unknown_is_refused_naming_loss_kd_cache(tmp_path):
    with pytest.raises(ConfigError, match=r"loss.kd_cache=.*score.teacher_top_k"):
        kd_cache_k(_kd_config(tmp_path))


@pytest.mark.parametrize("override, message", [
    ("loss.kd_temperature=2.0", r"kd_cache=.*temperature-1 log-probs; loss.kd_temperature=2.0"),
    ("eval_data=heldout.jsonl", r"kd_cache=.*covers data.path only, not eval_data=heldout.jsonl"),
])
def test_kd_cache_plan_refuses_what_training_would_refuse(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        kd_cache_k(_kd_config(tmp_path, "score.teacher_top_k=4", override))
