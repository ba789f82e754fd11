"""Optimizer set-up against closed forms and invariants: schedules, Adafactor, frozen parameters.

The engine tests elsewhere force a constant learning rate; the shipped recipes use warmup +
cosine or linear decay, Adafactor and trainable masks, which are pinned here.
"""

import json
import math

import jax
import numpy as np
import pytest

from jaxalign.config import load_config
from jaxalign.config.schema import OptimizerConfig
from jaxalign.train.optimizer import build_optimizer, freeze_labels, learning_rate_schedule, param_name
from jaxalign.train.trainer import Trainer


def closed_form_lr(step: int, *, lr: float, warmup: int, total: int, kind: str, min_ratio: float) -> float:
    """Linear warmup 0 -> lr over `warmup` steps, then cosine/linear decay to lr*min_ratio at `total`."""
    if step < warmup:
        return lr * step / warmup
    t = min(step - warmup, total - warmup) / (total - warmup)
    if kind == "cosine":
        return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
    if kind == "linear":
        return lr * (1 - (1 - min_ratio) * t)
    return lr


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
@pytest.mark.parametrize("warmup", [0, 10])
def test_schedule_matches_closed_form(kind, warmup):
    cfg = OptimizerConfig(lr=3e-4, warmup_steps=warmup, schedule=kind, min_lr_ratio=0.1)
    schedule = learning_rate_schedule(cfg, 100)
    for step in (0, 1, 5, 9, 10, 11, 37, 55, 99, 100, 150):
        expected = closed_form_lr(step, lr=3e-4, warmup=warmup, total=100, kind=kind, min_ratio=0.1)
        if kind == "constant":
            expected = 3e-4 * step / warmup if step < warmup else 3e-4
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-12), (kind, warmup, step)


def test_schedule_endpoints():
    schedule = learning_rate_schedule(OptimizerConfig(lr=1e-3, warmup_steps=4, schedule="cosine", min_lr_ratio=0.0), 20)
    assert float(schedule(0)) == 0.0
    assert float(schedule(4)) == pytest.approx(1e-3)
    assert float(schedule(20)) == pytest.approx(0.0, abs=1e-12)


@pytest.fixture
def overrides(tiny_dpo_overrides):
    return [*tiny_dpo_overrides, "mesh.data=1", "eval_data=null", "checkpoint.resume=false", "train.log_every=1"]


def _logged(run_dir, key: str) -> list[float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in sorted(rows, key=lambda r: r["step"]) if r["split"] == "train"]


def test_trainer_logs_the_scheduled_lr(overrides, tmp_path):
    """The step reports schedule(step) for each update: warmup 2, linear decay to 0.5·lr at step 6."""
    cfg = load_config("configs/tiny_dpo.yaml", overrides + [
        "train.steps=6", "optimizer.lr=1e-3", "optimizer.warmup_steps=2", "optimizer.schedule=linear",
        "optimizer.min_lr_ratio=0.5", f"train.output_dir={tmp_path / 'r'}"])
    trainer = Trainer(cfg)
    trainer.run()
    expected = [closed_form_lr(s, lr=1e-3, warmup=2, total=6, kind="linear", min_ratio=0.5) for s in range(6)]
    np.testing.assert_allclose(_logged(tmp_path / "r", "lr"), expected, rtol=1e-6, atol=1e-12)


def test_adafactor_learns_the_preference(overrides, tmp_path):
    cfg = load_config("configs/tiny_dpo.yaml", overrides + [
        "train.steps=12", "optimizer.name=adafactor", "optimizer.lr=1e-2", "optimizer.schedule=constant",
        "loss.beta=0.5", f"train.output_dir={tmp_path / 'r'}"])
    trainer = Trainer(cfg)
    result = trainer.run()
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert result.losses[-1] < 0.5 * result.losses[0], result.losses
    # Adafactor's factored second moments: a row and a column vector per matrix, never a full copy
    names = {param_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(trainer.state["opt_state"])}
    assert any("v_row" in n for n in names), sorted(names)[:20]


def _sizes(tree) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("setting, frozen_if", [
    ("optimizer.freeze_embeddings=true", lambda name: "embed" in name.split(".")),
    ("optimizer.trainable=q_proj|lm_head", lambda name: not ("q_proj" in name or "lm_head" in name)),
])
def test_frozen_parameters_do_not_move_and_have_no_optimizer_state(overrides, tmp_path, setting, frozen_if):
    cfg = load_config("configs/tiny_dpo.yaml", overrides + [
        "train.steps=3", "optimizer.lr=1e-2", "optimizer.weight_decay=0.1", setting, f"train.output_dir={tmp_path / 'r'}"])
    trainer = Trainer(cfg)
    before = {param_name(p): np.array(x) for p, x in jax.tree_util.tree_leaves_with_path(trainer.state["params"])}
    labels = {param_name(p): lab for p, lab in jax.tree_util.tree_leaves_with_path(freeze_labels(trainer.state["params"],
                                                                                                    cfg.optimizer))}
    trainer.run()
    after = {param_name(p): np.array(x) for p, x in jax.tree_util.tree_leaves_with_path(trainer.state["params"])}
    frozen = {n for n in before if frozen_if(n)}
    assert frozen and frozen != set(before)
    assert {n for n, lab in labels.items() if lab == "freeze"} == frozen
    for name in before:
        if name in frozen:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)  # bit-identical
        else:
            assert np.abs(after[name] - before[name]).max() > 0, f"{name} did not train"
    # AdamW keeps mu and nu for the trainable parameters only (plus scalar counts)
    trainable_size = sum(before[n].size for n in before if n not in frozen)
    state_size = _sizes(trainer.state["opt_state"])
    assert 2 * trainable_size <= state_size < 2 * trainable_size + 16, (state_size, trainable_size)


def test_trainable_matching_nothing_is_refused():
    params = {"decoder": {"embed": np.zeros((4, 2)), "q_proj": np.zeros((2, 2))}}
    with pytest.raises(ValueError, match="matches no parameter"):
        build_optimizer(OptimizerConfig(trainable="nothing_here"), 10, params)
