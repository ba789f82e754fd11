"""The training engine end to end on a tiny random model and a learnable synthetic preference."""

import json
import math
import shutil
import signal
import subprocess
import sys
import time

import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.cli.main import main
from jaxalign.config import load_config
from jaxalign.train.trainer import NonFiniteLossError, Trainer, train
from tests.train.conftest import tiny_overrides

LEARN = ["train.steps=20", "optimizer.lr=1e-3", "optimizer.schedule=constant", "loss.beta=0.5"]


def test_dpo_learns_a_synthetic_preference(tiny_dpo_overrides):
    result = train(load_config("configs/tiny_dpo.yaml", tiny_dpo_overrides + LEARN))
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert result.eval_metrics["rewards/accuracies"] > 0.9
    assert result.compiles == 1


def _mesh_losses(overrides, out, data, fsdp, tensor):
    cfg = load_config("configs/tiny_dpo.yaml", overrides + LEARN + [
        f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}", f"train.output_dir={out}",
        "eval_data=null", "checkpoint.resume=false"])
    return np.array(train(cfg).losses)


@pytest.fixture(scope="module")
def one_device_losses(preference_data, byte_tokenizer_dir, tmp_path_factory):
    """The one-device run, computed once for every mesh it is compared with."""
    out = tmp_path_factory.mktemp("one_device")
    return _mesh_losses(tiny_overrides(preference_data, byte_tokenizer_dir, out), out, 1, 1, 1)


@pytest.mark.parametrize("mesh", [("8", "1", "1"), ("2", "2", "2")])
def test_sharded_runs_match_one_device(tiny_dpo_overrides, tmp_path, mesh, one_device_losses):
    many = _mesh_losses(tiny_dpo_overrides, tmp_path / "many", *mesh)
    np.testing.assert_allclose(many, one_device_losses, rtol=0, atol=1e-5)


def test_grad_accumulation_matches_full_batch(tiny_dpo_overrides, tmp_path):
    def losses(accum, out):
        cfg = load_config("configs/tiny_dpo.yaml", tiny_dpo_overrides + [
            "train.steps=3", "optimizer.lr=1e-3", f"optimizer.grad_accum_steps={accum}", "mesh.data=1",
            "eval_data=null", f"train.output_dir={tmp_path / out}"])
        return np.array(train(cfg).losses)

    np.testing.assert_allclose(losses(2, "a"), losses(1, "b"), atol=1e-5)


def _run_cli(args, env, **kw):
    return subprocess.Popen([sys.executable, "-m", "jaxalign.cli.main", "train", "configs/tiny_dpo.yaml", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _train_losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["split"] == "train"}


def test_sigterm_then_resume_continues_exactly(tiny_dpo_overrides, subprocess_env, tmp_path):
    """A real SIGTERM to a `jaxalign train` process at step >= 5 stops it with a checkpoint; resuming it
    (in-process, same compile settings as the subprocess) gives the uninterrupted run's losses."""
    common = [o for o in tiny_dpo_overrides if not o.startswith(("train.output_dir", "eval_data"))]
    common += ["train.steps=16", "train.log_every=1", "optimizer.lr=1e-3", "eval_data=null"]
    cut = tmp_path / "cut"
    proc = _run_cli(common + [f"train.output_dir={cut}"], subprocess_env)
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
    full = tmp_path / "full"
    train(load_config("configs/tiny_dpo.yaml", common + [f"train.output_dir={full}"]))
    train(load_config("configs/tiny_dpo.yaml", common + [f"train.output_dir={cut}"]))
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


@pytest.mark.parametrize("vocab,extra", [(256, []), (400, ["loss.kd_weight=0.5"])], ids=["smaller", "kd"])
def test_teacher_with_another_vocabulary_is_refused(tiny_dpo_overrides, tmp_path, capsys, vocab, extra):
    """A teacher whose vocabulary is smaller than the student's (320), or differs at all under token-level
    KD. (A larger one, e.g. the same tokenizer's table padded further, is fine for sequence log-probs.)"""
    from jaxalign.config.presets import preset_hf_config
    from jaxalign.models import ModelConfig, init_model, save_pretrained
    from tests.conftest import _byte_tokenizer

    teacher = init_model(ModelConfig.from_hf_dict({**preset_hf_config("tiny"), "vocab_size": vocab}))
    save_pretrained(teacher, _byte_tokenizer(), tmp_path / "teacher")
    args = ["train", "configs/tiny_dpo.yaml", *tiny_dpo_overrides, "loss.name=dadpo", f"teacher.path={tmp_path / 'teacher'}",
            f"train.output_dir={tmp_path / 'r'}", *extra]
    assert main(args) == 2
    assert "teacher and student must share a tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoints").exists()


# ----------------------------------------------------------------------------- non-finite stop
def _short(tiny_dpo_overrides, tmp_path, *extra):
    return load_config("configs/tiny_dpo.yaml", tiny_dpo_overrides + [
        "mesh.data=1", "eval_data=null", "train.log_every=1", f"train.output_dir={tmp_path / 'r'}", *extra])


def test_nonfinite_loss_stops_the_run(tiny_dpo_overrides, tmp_path):
    """An absurd learning rate blows the parameters up after one update: step 2's loss is NaN."""
    cfg = _short(tiny_dpo_overrides, tmp_path, "train.steps=5", "optimizer.lr=1e30", "optimizer.max_grad_norm=0")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss nan at step 2; batch rows: .*last good checkpoint: none"):
        train(cfg)


def test_nonfinite_gradient_norm_stops_the_run(tiny_dpo_overrides, tmp_path):
    """A finite loss with a NaN gradient norm (injected at step 3) stops the run too."""
    trainer = Trainer(_short(tiny_dpo_overrides, tmp_path, "train.steps=5"))
    step = trainer.train_step

    def poisoned(state, frozen, batch):
        index = int(state["step"])  # read before the step donates `state`
        new_state, metrics = step(state, frozen, batch)
        return new_state, {**metrics, "grad_norm": metrics["grad_norm"] * (jnp.nan if index == 2 else 1.0)}

    poisoned._cache_size = step._cache_size  # what the run reports at its end
    trainer.train_step = poisoned
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm nan \(loss 0\.\d+\) at step 3"):
        trainer.run()


def test_nonfinite_values_do_not_stop_when_disabled(tiny_dpo_overrides, tmp_path):
    cfg = _short(tiny_dpo_overrides, tmp_path, "train.steps=3", "optimizer.lr=1e30", "optimizer.max_grad_norm=0",
                 "train.stop_on_nonfinite=false")
    losses = train(cfg).losses
    assert len(losses) == 3 and math.isfinite(losses[0]) and not math.isfinite(losses[-1])


# ----------------------------------------------------------------------------- periodic checkpoints
def test_periodic_checkpoints_and_resume_from_one(tiny_dpo_overrides, tmp_path):
    """checkpoint.every=2 saves steps 2, 4, 6; a run that died after step 3 (only 2 on disk)
    resumes from step 2 and repeats steps 3..6 exactly."""
    cfg = _short(tiny_dpo_overrides, tmp_path, "train.steps=6", "optimizer.lr=1e-3", "checkpoint.every=2",
                 "checkpoint.keep=10")
    full = train(cfg).losses
    ckpts = tmp_path / "r" / "checkpoints"
    assert sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) == [2, 4, 6]
    for step in (4, 6):  # as if the job had died during step 4
        shutil.rmtree(ckpts / str(step))
    resumed = train(cfg)
    assert resumed.steps == 6 and len(resumed.losses) == 4
    np.testing.assert_allclose(resumed.losses, full[2:], rtol=0, atol=1e-6)
