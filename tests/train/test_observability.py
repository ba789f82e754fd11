"""Observability: metrics JSONL (resume, non-finite), TensorBoard, progress bar, plots, summary."""

import json
import logging
import sys
import time

import pytest

from jaxalign.train import observability
from jaxalign.train.observability import MetricsLogger, format_metrics, plot_metrics, read_metrics, summary

QUIET = dict(tensorboard=False, progress_bar=False)


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _fake_run(out, steps=range(10, 101, 10), eval_every=50, start_step=0, **kw):
    with MetricsLogger(out, total_steps=100, start_step=start_step, **{**QUIET, **kw}) as logger:
        for step in steps:
            logger.log(step, {"loss": 1.0 / step, "rewards/accuracies": step / 100, "rewards/margins": step / 10},
                       tokens=1000, elapsed=0.5)
            if step % eval_every == 0:
                logger.log(step, {"loss": 2.0 / step, "rewards/accuracies": 0.5, "rewards/margins": 1.0},
                           split="eval")
    return out / "metrics.jsonl"


def test_jsonl_lines_fields_and_tokens_per_s(tmp_path):
    with MetricsLogger(tmp_path, total_steps=10, **QUIET) as logger:
        time.sleep(0.05)
        logger.log(1, {"loss": 0.6931, "rewards/accuracies": 0.5}, tokens=1000)  # wall time since construction
        logger.log(2, {"loss": 0.5}, tokens=2000, elapsed=4.0)
        with logger.pause():
            time.sleep(0.2)  # excluded from the next interval
        logger.log(3, {"loss": 0.4}, tokens=100)
        logger.log(3, {"loss": 0.7}, split="eval")
        # each line is on disk before close (flushed as written)
        assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4
    recs = _lines(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["split"]) for r in recs] == [(1, "train"), (2, "train"), (3, "train"), (3, "eval")]
    assert recs[0]["loss"] == 0.6931 and recs[0]["rewards/accuracies"] == 0.5
    assert all(isinstance(r["time"], float) and r["wall_time"] >= 0 for r in recs)
    assert 1000 / 1.0 < recs[0]["tokens_per_s"] < 1000 / 0.05 + 1
    assert recs[1]["tokens_per_s"] == pytest.approx(500.0)
    assert recs[2]["tokens_per_s"] > 100 / 0.2  # paused time not counted
    assert "tokens_per_s" not in recs[3] and "nonfinite" not in recs[0]
    with pytest.raises(ValueError, match="reserved"):
        MetricsLogger(tmp_path / "x", total_steps=1, **QUIET).log(1, {"step": 3.0})


def test_resume_drops_stale_lines_and_appends(tmp_path):
    path = _fake_run(tmp_path, steps=range(10, 81, 10))  # "crashed" after step 80; checkpoint at 50
    with open(path, "a") as f:
        f.write('{"step": 90, "split": "tr')  # line cut short by the crash
    _fake_run(tmp_path, steps=range(60, 101, 10), start_step=50)
    recs = _lines(path)
    keys = [(r["step"], r["split"]) for r in recs]
    assert keys == sorted(set(keys), key=keys.index)  # no duplicates
    assert [s for s, split in keys if split == "train"] == list(range(10, 101, 10))
    assert [s for s, split in keys if split == "eval"] == [50, 100]
    walls = [r["wall_time"] for r in recs if r["split"] == "train"]
    assert walls == sorted(walls)  # resumed segment continues the wall-time count
    # a fresh run (start_step=0) in the same directory starts the file anew
    _fake_run(tmp_path, steps=[10])
    assert [r["step"] for r in _lines(path)] == [10]


def test_nonfinite_values_are_null_and_listed(tmp_path):
    with MetricsLogger(tmp_path, total_steps=3, **QUIET) as logger:
        logger.log(1, {"loss": float("nan"), "kl": float("inf"), "rewards/margins": -float("inf"), "ok": 1.5})
    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    (rec,) = _lines(tmp_path / "metrics.jsonl")
    assert rec["loss"] is None and rec["kl"] is None and rec["rewards/margins"] is None and rec["ok"] == 1.5
    assert rec["nonfinite"] == ["loss", "kl", "rewards/margins"]
    assert "non-finite loss" in summary(tmp_path / "metrics.jsonl")


def test_non_main_process_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    with MetricsLogger(out, total_steps=5, is_main_process=False) as logger:
        assert logger.log(1, {"loss": 1.0}, tokens=10) is None
        logger.log(1, {"loss": 1.0}, split="eval")
        logger.write("hello")
    assert not out.exists()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_tensorboard_event_file(tmp_path):
    import tensorboardX  # noqa: F401  (the plots extra, installed by `make install`: missing fails, not skips)
    with MetricsLogger(tmp_path, total_steps=5, progress_bar=False) as logger:
        logger.log(1, {"loss": 1.0}, tokens=10, elapsed=1.0)
        logger.log(1, {"loss": 2.0}, split="eval")
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    data = events[0].read_bytes()
    assert b"train/loss" in data and b"eval/loss" in data and b"train/tokens_per_s" in data


def test_missing_tensorboardx_warns_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import raises ImportError
    monkeypatch.setattr(observability, "_TB_WARNED", False)
    with caplog.at_level(logging.WARNING, logger=observability.__name__):
        for i in range(2):
            with MetricsLogger(tmp_path / str(i), total_steps=1, progress_bar=False) as logger:
                logger.log(1, {"loss": 1.0})
    assert sum("tensorboardX" in r.message for r in caplog.records) == 1
    assert not (tmp_path / "0" / "tensorboard").exists() and (tmp_path / "0" / "metrics.jsonl").exists()


def test_plot_png_and_none_when_empty(tmp_path):
    path = _fake_run(tmp_path, steps=range(1, 101), eval_every=25)  # > 50 points: EMA drawn
    png = plot_metrics(path, tmp_path / "plots" / "metrics.png", keys=("loss", "rewards/accuracies", "absent"))
    assert png == tmp_path / "plots" / "metrics.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in png.parent.iterdir()) == ["metrics.png"]  # no temp file left
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert plot_metrics(empty, tmp_path / "empty.png") is None and not (tmp_path / "empty.png").exists()
    assert plot_metrics(path, tmp_path / "none.png", keys=("absent",)) is None


def test_summary_first_last_loss_and_extra(tmp_path):
    path = _fake_run(tmp_path)
    text = summary(path, title="dpo run", extra={"checkpoint": "/ckpt/100", "export": "/out/model"})
    lines = text.splitlines()
    assert len(lines) < 25 and lines[0] == "dpo run"
    assert "0.1000 @ step 10" in text and "0.0100 @ step 100" in text  # first / last train loss
    assert "/ckpt/100" in text and "/out/model" in text
    assert "eval (best)" in text and "loss=0.0200@100" in text
    assert "2k" in text  # mean tokens/s: 1000 tokens / 0.5 s
    # values start in one column (aligned table)
    col = max(len(line.split("  ")[0]) for line in lines[2:]) + 2
    assert all(line[col - 2:col] == "  " and line[col] != " " for line in lines[2:])
    many = summary(path, extra={f"k{i}": i for i in range(40)})
    assert len(many.splitlines()) < 25 and "more entries not shown" in many
    assert "none logged" in summary(tmp_path / "missing.jsonl")


def test_progress_bar_disabled_prints_nothing(tmp_path, capsys):
    _fake_run(tmp_path, progress_bar=False)
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""


def test_progress_bar_postfix_and_eval_line(tmp_path, capsys):
    with MetricsLogger(tmp_path, total_steps=100, start_step=0, tensorboard=False) as logger:
        logger.log(10, {"loss": 0.5, "rewards/accuracies": 0.75, "kl": 0.1}, tokens=5000, elapsed=1.0)
        assert logger._bar.n == 10
        logger.log(10, {"loss": 0.6, "rewards/accuracies": 0.7}, split="eval")
        assert logger._bar.n == 10  # eval does not advance the bar
        logger.log(20, {"loss": 0.4, "rewards/accuracies": 0.8}, tokens=5000, elapsed=1.0)
        postfix = logger._bar.postfix
    captured = capsys.readouterr()
    assert postfix == "loss=0.4000 acc=0.800 tok/s=5k"
    assert "[eval step 10] loss=0.6000 acc=0.700" in captured.out
    assert "20/100" in captured.err


def test_format_metrics():
    line = format_metrics({"kl": 0.0123456, "rewards/margins": 0.0, "loss": 0.693147, "rewards/accuracies": 0.5,
                           "tokens_per_s": 12345.0, "step": 3, "note": "x"})
    assert line == "loss=0.6931 acc=0.500 margin=0.000 tok/s=12.3k kl=0.01235 note=x"
    assert format_metrics({"loss": None, "grad_norm": float("nan")}) == "loss=nan gnorm=nan"
    assert read_metrics("/nonexistent/metrics.jsonl") == []
