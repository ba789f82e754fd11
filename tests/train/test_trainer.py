"""The training engine end to end on a tiny random model and a learnable synthetic preference."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxalign.cli.main import main
from jaxalign.config import load_config
from jaxalign.train.trainer import train

LEARN = ["train.steps=20", "optimizer.lr=1e-3", "optimizer.schedule=constant", "loss.beta=0.5"]


def test_dpo_learns_a_synthetic_preference(tiny_dpo_overrides):
    result = train(load_config("configs/tiny_dpo.yaml", tiny_dpo_overrides + LEARN))
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert result.eval_metrics["rewards/accuracies"] > 0.9
    assert result.compiles == 1


@pytest.mark.parametrize("mesh", [("8", "1", "1"), ("2", "2", "2")])
def test_sharded_runs_match_one_device(tiny_dpo_overrides, tmp_path, mesh):
    def losses(data, fsdp, tensor, out):
        cfg = load_config("configs/tiny_dpo.yaml", tiny_dpo_overrides + LEARN + [
            f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}", f"train.output_dir={tmp_path / out}",
            "eval_data=null", "checkpoint.resume=false"])
        return np.array(train(cfg).losses)

    one = losses(1, 1, 1, "one")
    many = losses(*mesh, "many")
    np.testing.assert_allclose(many, one, rtol=0, atol=1e-5)


def test_grad_accumulation_matches_full_batch(tiny_dpo_overrides, tmp_path):
    def losses(accum, out):
        cfg = load_config("configs/tiny_dpo.yaml", tiny_dpo_overrides + [
            "train.steps=3", "optimizer.lr=1e-3", f"optimizer.grad_accum_steps={accum}", "mesh.data=1",
            "eval_data=null", f"train.output_dir={tmp_path / out}"])
        return np.array(train(cfg).losses)

    np.testing.assert_allclose(losses(2, "a"), losses(1, "b"), atol=1e-5)


def _run_cli(args, **kw):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "jaxalign.cli.main", "train", "configs/tiny_dpo.yaml", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _train_losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["split"] == "train"}


def test_sigterm_then_resume_continues_exactly(tiny_dpo_overrides, tmp_path):
    common = [o for o in tiny_dpo_overrides if not o.startswith(("train.output_dir", "eval_data"))]
    common += ["train.steps=16", "train.log_every=1", "optimizer.lr=1e-3", "eval_data=null"]
    full = tmp_path / "full"
    assert _run_cli(common + [f"train.output_dir={full}"]).wait(timeout=300) == 0
    cut = tmp_path / "cut"
    proc = _run_cli(common + [f"train.output_dir={cut}"])
    deadline = time.time() + 240
    while time.time() < deadline:
        if (cut / "metrics.jsonl").exists() and len(_train_losses(cut)) >= 5:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out
    stopped_at = max(int(p.name) for p in (cut / "checkpoints").iterdir() if p.name.isdigit())
    assert stopped_at < 16
    assert _run_cli(common + [f"train.output_dir={cut}"]).wait(timeout=300) == 0
    resumed, reference = _train_losses(cut), _train_losses(full)
    assert sorted(resumed) == list(range(1, 17))
    np.testing.assert_allclose([resumed[s] for s in range(1, 17)], [reference[s] for s in range(1, 17)], atol=1e-6)


def test_malformed_jsonl_fails_before_training(tiny_dpo_overrides, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": oops\n')
    run = tmp_path / "badrun"
    args = ["train", "configs/tiny_dpo.yaml", *tiny_dpo_overrides, f"data.path={bad}", f"train.output_dir={run}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "bad.jsonl:line 2" in err and len(err.splitlines()) == 1
    assert not (run / "checkpoints").exists()


def test_missing_column_is_named(tiny_dpo_overrides, tmp_path, capsys):
    bad = tmp_path / "nocol.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b"}\n' * 4)
    assert main(["train", "configs/tiny_dpo.yaml", *tiny_dpo_overrides, f"data.path={bad}"]) == 2
    assert "rejected" in capsys.readouterr().err


def test_unknown_key_suggests(capsys):
    assert main(["train", "configs/tiny_dpo.yaml", "optimizer.learning_rate=1e-3"]) == 2
    assert "did you mean 'optimizer.lr'" in capsys.readouterr().err


def test_batch_not_divisible_by_data_axes(tiny_dpo_overrides, capsys):
    assert main(["train", "configs/tiny_dpo.yaml", *tiny_dpo_overrides, "data.batch_size=6", "mesh.data=4", "mesh.fsdp=2"]) == 2
    assert "data.batch_size=6 (per micro-batch 6) is not divisible by the batch shards mesh.data x mesh.fsdp = 4 x 2 = 8" in capsys.readouterr().err


def test_teacher_with_another_vocabulary_is_refused(tiny_dpo_overrides, tmp_path, capsys):
    args = ["train", "configs/tiny_dpo.yaml", *tiny_dpo_overrides, "loss.name=dadpo", "teacher.preset=bench-llama-4x512",
            f"train.output_dir={tmp_path / 'r'}"]
    assert main(args) == 2
    assert "teacher and student must share a tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()
