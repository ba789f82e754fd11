"""Runs that cannot silently go wrong (issue 13): one writer per output dir, resume refuses a changed
config or data, a damaged newest checkpoint falls back, inputs are checked against the model."""

import json
import shutil
import threading
import time

import numpy as np
import pytest

from jaxalign.config import load_config
from jaxalign.config.schema import ConfigError
from jaxalign.data import DataError
from jaxalign.train.locks import OutputLockedError, lock_path, output_lock
from jaxalign.train.trainer import train
from tests.conftest import _byte_tokenizer
from tests.train.conftest import synthetic_preferences, write_jsonl

QUICK = ["train.steps=4", "optimizer.lr=1e-3", "mesh.data=1", "eval_data=null", "data.batch_size=4"]


def _cfg(overrides, *extra):
    return load_config("configs/tiny_dpo.yaml", [*overrides, *QUICK, *extra])


def _metrics(run_dir):
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rows_longer_than_the_context_are_refused_by_name(tiny_dpo_overrides, tmp_path):
    rows = synthetic_preferences(8, 0)
    rows[5]["chosen"] = " good " + "x" * 600  # the tiny preset's context is 512 tokens
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    cfg = _cfg(tiny_dpo_overrides, f"data.path={data}", "data.max_length=1024", "data.max_prompt_length=64",
               "data.buckets=null")
    with pytest.raises(DataError, match=r"long\.jsonl:row 5 .*exceed the model's context \(max_position_embeddings=512.*data\.max_length<=512"):
        train(cfg)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_token_ids_outside_the_vocabulary_are_refused_by_name(tiny_dpo_overrides, tmp_path):
    tok = _byte_tokenizer()
    tok.add_tokens([f"<x{i}>" for i in range(80)])  # ids 261..340; the tiny preset has 320
    tok.save_pretrained(tmp_path / "big_tok")
    rows = synthetic_preferences(8, 0)
    rows[3]["rejected"] = " bad <x70>"
    data = write_jsonl(tmp_path / "prefs.jsonl", rows)
    cfg = _cfg(tiny_dpo_overrides, f"data.path={data}", f"model.tokenizer={tmp_path / 'big_tok'}")
    with pytest.raises(DataError, match=r"prefs\.jsonl:row 3 .*token id 3\d\d is outside the model's vocabulary \(vocab_size=320\)"):
        train(cfg)


def test_dataset_smaller_than_one_batch_leaves_nothing(tiny_dpo_overrides, tmp_path):
    data = write_jsonl(tmp_path / "few.jsonl", synthetic_preferences(3, 0))
    with pytest.raises(DataError, match=r"3 training rows are fewer than one batch \(data.batch_size=4\)"):
        train(_cfg(tiny_dpo_overrides, f"data.path={data}"))
    assert not (tmp_path / "run").exists()


def test_resume_refuses_a_changed_config_but_allows_more_steps(tiny_dpo_overrides, tmp_path):
    train(_cfg(tiny_dpo_overrides))
    for change, named in [("loss.beta=0.3", "loss.beta: 0.1 -> 0.3"), ("optimizer.lr=0.1", "optimizer.lr: 0.001 -> 0.1"),
                          ("loss.loss_type=hinge", "loss.loss_type")]:
        with pytest.raises(ConfigError, match=rf"resume from .*step 4.*{named}.*checkpoint.allow_config_change=true"):
            train(_cfg(tiny_dpo_overrides, change))
    other = write_jsonl(tmp_path / "other.jsonl", synthetic_preferences(64, 5))
    with pytest.raises(ConfigError, match=r"data.path.*(changed|->)"):
        train(_cfg(tiny_dpo_overrides, f"data.path={other}"))
    # a checkpoint written before a setting existed: that setting at its default is no change
    saved = next((tmp_path / "run" / "checkpoints" / "4").rglob("config.yaml"))
    text = saved.read_text()
    assert "\nobjective:\n  module: []\n" in text
    saved.write_text(text.replace("\nobjective:\n  module: []\n", "\n"))
    with pytest.raises(ConfigError, match=r"objective.module: null -> \[\"json\"\]"):
        train(_cfg(tiny_dpo_overrides, "objective.module=[json]"))
    longer = train(_cfg(tiny_dpo_overrides, "train.steps=6", "train.log_every=2"))  # allow-listed: resumes
    assert longer.steps == 6 and len(longer.losses) == 2
    forced = train(_cfg(tiny_dpo_overrides, "train.steps=8", "loss.beta=0.3", "checkpoint.allow_config_change=true"))
    assert forced.steps == 8 and len(forced.losses) == 2


def test_resume_refuses_the_same_file_with_new_content(tiny_dpo_overrides, tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", synthetic_preferences(16, 0))
    train(_cfg(tiny_dpo_overrides, f"data.path={data}"))
    write_jsonl(data, synthetic_preferences(16, 9))
    with pytest.raises(ConfigError, match=r"step 4\): the content of data.path changed since the checkpoint was written"):
        train(_cfg(tiny_dpo_overrides, f"data.path={data}", "train.steps=6"))


def test_damaged_newest_checkpoint_resumes_from_the_previous_step_with_equal_losses(tiny_dpo_overrides, tmp_path):
    from tests.train.test_checkpointing import _damage

    every = ["checkpoint.every=2", "train.log_every=1"]
    full = train(_cfg(tiny_dpo_overrides, "train.steps=6", f"train.output_dir={tmp_path / 'full'}", *every)).losses
    run = tmp_path / "cut"
    train(_cfg(tiny_dpo_overrides, "train.steps=4", f"train.output_dir={run}", *every))
    _damage(run / "checkpoints" / "4", "truncated")
    resumed = train(_cfg(tiny_dpo_overrides, "train.steps=6", f"train.output_dir={run}", *every))
    assert resumed.steps == 6 and len(resumed.losses) == 4  # steps 3..6: resumed from step 2
    np.testing.assert_allclose(resumed.losses, full[2:], atol=1e-6)
    assert (run / "checkpoints" / "4.damaged").is_dir() and (run / "checkpoints" / "6").is_dir()


def test_two_concurrent_trains_on_one_output(tiny_dpo_overrides, tmp_path):
    """The second run is refused, naming the first; the first finishes with whole, unique metric lines."""
    run = tmp_path / "run"
    lock = lock_path(run, directory=True)
    refused = []

    first_done = threading.Event()

    def second():
        while not lock.exists() and not first_done.is_set():  # start once the first run holds the output
            time.sleep(0.01)
        try:
            train(_cfg(tiny_dpo_overrides, "train.steps=8"))
        except OutputLockedError as e:
            refused.append(str(e))

    t = threading.Thread(target=second)
    t.start()
    try:
        result = train(_cfg(tiny_dpo_overrides, "train.steps=8"))
    finally:
        first_done.set()
        t.join()
    assert result.steps == 8
    assert len(refused) == 1 and f"train.output_dir={run} is being written by pid" in refused[0]
    steps = [r["step"] for r in _metrics(run) if r["split"] == "train"]
    assert steps == list(range(1, 9))
    assert not lock.exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tiny_dpo_overrides, tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    lock_path(run, directory=True).write_text(json.dumps({"pid": 999999, "host": "gone", "command": "jaxalign train"}))
    with caplog.at_level("WARNING"):
        assert train(_cfg(tiny_dpo_overrides)).steps == 4
    assert "taking over a stale lock of pid 999999" in caplog.text


def test_lock_refuses_unwritable_and_file_outputs(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match=r"train.output_dir=.*file: is a file"):
        with output_lock(tmp_path / "file", key="train.output_dir", directory=True):
            pass
    with pytest.raises(DataError, match=r"generate.output=.*: is a folder"):
        with output_lock(tmp_path, key="generate.output", directory=False):
            pass
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not shutil.os.access(ro, shutil.os.W_OK):  # root ignores permissions
            with pytest.raises(DataError, match="not writable"):
                with output_lock(ro / "out", key="train.output_dir", directory=True):
                    pass
    finally:
        ro.chmod(0o700)
    with pytest.raises(RuntimeError):
        with output_lock(tmp_path / "new" / "deeper", key="train.output_dir", directory=True):
            raise RuntimeError("failed run")
    assert not (tmp_path / "new").exists()  # a refused run leaves no folder it created


def test_export_folder_with_a_user_file_is_not_replaced(tiny_dpo_overrides, tmp_path):
    hf = tmp_path / "run" / "hf"
    hf.mkdir(parents=True)
    (hf / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=r"hf holds files an export would delete \(notes.txt\)"):
        train(_cfg(tiny_dpo_overrides, "train.export_hf=true"))
    assert (hf / "notes.txt").read_text() == "mine"
