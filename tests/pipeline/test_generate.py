"""The ``generate`` stage on tiny random teacher/student folders: rows, determinism, resumption, errors."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pyarrow.parquet as pq
import pytest


from jaxalign.config import load_config
from jaxalign.data import DataError
from jaxalign.pipeline import generate as generate_mod
from jaxalign.pipeline.generate import run_generate
from jaxalign.train.provenance import sidecar_path
from tests.pipeline.conftest import StopAfterFirstBatch, sigterm_at, write_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(overrides, prompts, output, *extra):
    return load_config(None, [*overrides, f"generate.prompts={prompts}", f"generate.output={output}", *extra],
                       stage="generate")


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8").read().splitlines() if line.strip()]


def _copy_with_provenance(rows, source, out, text=None):
    """Write ``rows`` (or ``text``) to ``out`` with the provenance record of the run that made ``source``."""
    out.write_text(text if text is not None else "".join(json.dumps(r) + "\n" for r in rows))
    shutil.copy(sidecar_path(source), sidecar_path(out))
    return out


def _no_weights(monkeypatch):
    """Make any weight loading of the generate stage fail loudly."""

    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded")

    monkeypatch.setattr(generate_mod, "build_model", refuse)


@pytest.fixture(scope="module")
def base_overrides(tiny_models, tmp_path_factory):
    """`stage_overrides` for module-scoped runs (that fixture is per test)."""
    teacher, student = tiny_models
    run = tmp_path_factory.mktemp("gen_run")
    return [
        f"model.path={student}", f"teacher.path={teacher}", f"train.output_dir={run}",
        "data.max_length=64", "data.max_prompt_length=40", "data.buckets=[64]", "data.batch_size=4",
        "logging.progress_bar=false", "logging.tensorboard=false", "logging.plot=false", "checkpoint.async_save=false",
        "generate.max_new_tokens=8", "generate.batch_size=4", "eval.max_new_tokens=8", "mesh.data=1",
    ]


@pytest.fixture(scope="module")
def pairs_run(base_overrides, prompts_file, tmp_path_factory):
    """An uninterrupted pairs run over the 10 prompts: (result, rows)."""
    out = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    result = run_generate(_config(base_overrides, prompts_file, out, "generate.mode=pairs"))
    return result, _rows(out)


# ----------------------------------------------------------------------------- rows


def test_pairs_mode_writes_one_row_per_prompt(pairs_run, prompts_file):
    result, rows = pairs_run
    source = _rows(prompts_file)
    assert (result.rows, result.new_rows, result.interrupted) == (10, 10, False)
    assert result.tokens > 0
    assert [r["prompt_id"] for r in rows] == list(range(10))
    for row, src in zip(rows, source):
        assert set(row) == {"prompt_id", "prompt_key", "prompt", "category", "chosen", "rejected", "chosen_model", "rejected_model"}
        # the byte tokenizer has a chat template: string prompts are written as the messages training will template
        assert row["prompt"] == [{"role": "user", "content": src["prompt"]}]
        assert row["category"] == "math"
        assert (row["chosen_model"], row["rejected_model"]) == ("teacher", "student")
        for side in ("chosen", "rejected"):
            assert len(row[side]) == 1 and row[side][0]["role"] == "assistant"
            assert isinstance(row[side][0]["content"], str)


def test_samples_mode_with_one_model_writes_prompt_response_model(base_overrides, prompts_file, pairs_run, tiny_models,
                                                                  tmp_path):
    out = tmp_path / "samples.jsonl"
    # mode samples, models [] = [model]; the model is the teacher here, the first model as in the pairs run
    result = run_generate(_config(base_overrides, prompts_file, out, f"model.path={tiny_models[0]}"))
    rows = _rows(out)
    assert result.rows == 10 and [r["prompt_id"] for r in rows] == list(range(10))
    for row, pair in zip(rows, pairs_run[1]):
        assert set(row) == {"prompt_id", "prompt_key", "prompt", "category", "response", "model"}
        assert row["model"] == "model"
        assert row["prompt"] == pair["prompt"]
        # the same model, prompts, batches and seeds as the pairs run's chosen side
        assert row["response"] == pair["chosen"]


def test_pairs_mode_samples_each_model_with_its_own_seed(base_overrides, prompts_file, tiny_models, tmp_path):
    out = tmp_path / "same.jsonl"
    teacher = tiny_models[0]
    run_generate(_config(base_overrides, prompts_file, out, "generate.mode=pairs", f"model.path={teacher}"))
    rows = _rows(out)
    # one model on both sides: only different random draws can tell chosen from rejected
    assert sum(r["chosen"] != r["rejected"] for r in rows) >= len(rows) // 2


def test_samples_mode_with_two_models_writes_one_column_per_model(base_overrides, prompts_file, pairs_run, tiny_models,
                                                                  tmp_path):
    teacher, student = tiny_models
    out = tmp_path / "both.jsonl"
    models = f"generate.models=[{{name: big, path: {teacher}}}, {{name: small, path: {student}}}]"
    run_generate(_config(base_overrides, prompts_file, out, models))
    rows = _rows(out)
    assert len(rows) == 10
    for row, pair in zip(rows, pairs_run[1]):
        assert set(row) == {"prompt_id", "prompt_key", "prompt", "category", "big", "small"}
        assert row["big"] == pair["chosen"][0]["content"]
        assert row["small"] == pair["rejected"][0]["content"]


def test_same_seed_gives_the_same_rows(base_overrides, prompts_file, pairs_run, tmp_path):
    again = tmp_path / "again.jsonl"
    run_generate(_config(base_overrides, prompts_file, again, "generate.mode=pairs"))
    assert _rows(again) == pairs_run[1]
    other = tmp_path / "other_seed.jsonl"
    run_generate(_config(base_overrides, prompts_file, other, "generate.mode=pairs", "generate.seed=7"))
    assert _rows(other) != pairs_run[1]


def test_limit_keeps_the_first_prompts(base_overrides, prompts_file, pairs_run, tmp_path):
    out = tmp_path / "limited.jsonl"
    result = run_generate(_config(base_overrides, prompts_file, out, "generate.mode=pairs", "generate.limit=3"))
    assert (result.rows, result.new_rows) == (3, 3)
    rows = _rows(out)
    assert [r["prompt_id"] for r in rows] == [0, 1, 2]
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in pairs_run[1][:3]]


def test_rerun_on_a_complete_output_writes_nothing(base_overrides, prompts_file, pairs_run, tmp_path, monkeypatch):
    out = _copy_with_provenance(pairs_run[1], pairs_run[0].output, tmp_path / "done.jsonl")
    before = out.read_bytes()
    _no_weights(monkeypatch)  # nothing to do: no model is loaded
    result = run_generate(_config(base_overrides, prompts_file, out, "generate.mode=pairs"))
    assert (result.rows, result.new_rows, result.tokens, result.interrupted) == (10, 0, 0, False)
    assert out.read_bytes() == before


def test_torn_last_line_is_repaired_and_the_row_regenerated(base_overrides, prompts_file, pairs_run, tmp_path):
    """A crash mid-write leaves a torn last line: it is cut off, and that row (only) is sampled again,
    exactly as the uninterrupted run sampled it."""
    rows = pairs_run[1]
    out = tmp_path / "torn.jsonl"
    whole = "".join(json.dumps(r) + "\n" for r in rows[:9])
    torn = json.dumps(rows[9])
    _copy_with_provenance(rows, pairs_run[0].output, out, whole + torn[: len(torn) // 2])
    result = run_generate(_config(base_overrides, prompts_file, out, "generate.mode=pairs"))
    assert (result.rows, result.new_rows) == (10, 1)
    text = out.read_text()
    assert text.startswith(whole)  # the whole rows are kept as they were
    got = _rows(out)  # every line parses
    assert sorted(r["prompt_id"] for r in got) == list(range(10))
    assert got[9] == rows[9]


def test_rerun_with_another_prompt_file_keeps_only_rows_of_its_prompts(base_overrides, prompts_file, pairs_run, tmp_path,
                                                                      caplog):
    """Rows are matched to prompts by content (prompt_key), not by position: rows of prompts that are not in
    the new file are dropped (counted), rows of prompts that are stay as they were, new prompts are sampled."""
    old = _rows(prompts_file)
    new_prompts = old[5:] + [{"prompt": f"new question {i}?", "category": "new"} for i in range(3)]
    prompts = write_jsonl(tmp_path / "other_prompts.jsonl", new_prompts)
    out = _copy_with_provenance(pairs_run[1], pairs_run[0].output, tmp_path / "reused.jsonl")
    with caplog.at_level("WARNING"):
        result = run_generate(_config(base_overrides, prompts, out, "generate.mode=pairs"))
    assert "dropped 5 row(s) of prompts not in" in caplog.text
    rows = _rows(out)
    assert (result.rows, result.new_rows, len(rows)) == (8, 3, 8)
    assert sorted(r["prompt"][0]["content"] for r in rows) == sorted(p["prompt"] for p in new_prompts)
    kept = {r["prompt_key"]: r for r in rows}
    for old_row in pairs_run[1][5:]:
        assert {**kept[old_row["prompt_key"]], "prompt_id": old_row["prompt_id"]} == old_row


def test_rerun_with_other_sampling_settings_is_refused(base_overrides, prompts_file, pairs_run, tiny_models, tmp_path,
                                                       monkeypatch):
    out = _copy_with_provenance(pairs_run[1], pairs_run[0].output, tmp_path / "done.jsonl")
    _no_weights(monkeypatch)
    with pytest.raises(DataError, match=r"generate.output=.*done.jsonl was made with other settings than this run "
                                        r"\(generate.temperature: 0.7 -> 1.0\); delete .*done.jsonl .*to regenerate, or set "
                                        r"data.ignore_provenance=true"):
        run_generate(_config(base_overrides, prompts_file, out, "generate.mode=pairs", "generate.temperature=1.0"))
    with pytest.raises(DataError, match=r"model\[student\]"):
        run_generate(_config(base_overrides, prompts_file, out, "generate.mode=pairs", f"model.path={tiny_models[0]}"))
    forced = run_generate(_config(base_overrides, prompts_file, out, "generate.mode=pairs", "generate.temperature=1.0",
                                  "data.ignore_provenance=true"))
    assert (forced.rows, forced.new_rows) == (10, 0)
    legacy = tmp_path / "legacy.jsonl"
    legacy.write_text("".join(json.dumps(r) + "\n" for r in pairs_run[1]))
    with pytest.raises(DataError, match=r"legacy.jsonl has rows but no provenance record"):
        run_generate(_config(base_overrides, prompts_file, legacy, "generate.mode=pairs"))


def test_duplicate_rows_left_by_two_writers_are_dropped(base_overrides, prompts_file, pairs_run, tmp_path, monkeypatch,
                                                       caplog):
    out = _copy_with_provenance(pairs_run[1] + pairs_run[1], pairs_run[0].output, tmp_path / "twice.jsonl")
    _no_weights(monkeypatch)
    with caplog.at_level("WARNING"):
        result = run_generate(_config(base_overrides, prompts_file, out, "generate.mode=pairs"))
    assert "and 10 duplicate row(s)" in caplog.text
    assert result.rows == 10 and _rows(out) == pairs_run[1]


def test_two_concurrent_generates_on_one_output(base_overrides, prompts_file, pairs_run, tmp_path):
    """The second run is refused naming the first; the first finishes: every prompt once, no torn line."""
    import threading
    import time

    from jaxalign.train.locks import OutputLockedError, lock_path

    out = tmp_path / "shared.jsonl"
    refused = []

    first_done = threading.Event()

    def second():
        while not lock_path(out, directory=False).exists() and not first_done.is_set():
            time.sleep(0.005)
        try:
            run_generate(_config(base_overrides, prompts_file, out, "generate.mode=pairs"))
        except OutputLockedError as e:
            refused.append(str(e))

    t = threading.Thread(target=second)
    t.start()
    try:
        result = run_generate(_config(base_overrides, prompts_file, out, "generate.mode=pairs"))
    finally:
        first_done.set()
        t.join()
    assert len(refused) == 1 and f"generate.output={out} is being written by pid" in refused[0]
    assert result.rows == 10 and _rows(out) == pairs_run[1]
    assert not lock_path(out, directory=False).exists()


def test_parquet_output_appears_only_when_complete(base_overrides, prompts_file, pairs_run, tmp_path, monkeypatch):
    out = tmp_path / "pairs.parquet"
    partial = tmp_path / "pairs.parquet.partial.jsonl"
    config = _config(base_overrides, prompts_file, out, "generate.mode=pairs")
    monkeypatch.setattr(generate_mod, "PreemptionGuard", StopAfterFirstBatch)
    first = run_generate(config)
    assert first.interrupted and (first.rows, first.new_rows) == (4, 4)
    assert not out.exists()
    assert [r["prompt_id"] for r in _rows(partial)] == [0, 1, 2, 3]

    monkeypatch.undo()
    second = run_generate(config)
    assert not second.interrupted and (second.rows, second.new_rows) == (10, 6)
    assert out.is_file() and not partial.exists()
    assert pq.read_table(out).to_pylist() == pairs_run[1]


# ----------------------------------------------------------------------------- SIGTERM

# `jaxalign generate` (the CLI's main) with a pause after each written batch, so the test's SIGTERM
# lands while batches remain; it prints "wrote N" after each batch.
_SLOW_CLI = textwrap.dedent("""
    import sys, time
    from jaxalign.pipeline import rows

    _write = rows.RowWriter.write

    def write(self, batch):
        _write(self, batch)
        print(f"wrote {self.rows_done}", flush=True)
        time.sleep(float(sys.argv[1]))

    rows.RowWriter.write = write
    from jaxalign.cli.main import main

    sys.exit(main(sys.argv[2:]))
""")


def sigterm_then_resume(tmp_path, env: dict, command: str, overrides: list[str], *, pause: float = 0.5):
    """Run `jaxalign COMMAND` in a subprocess, SIGTERM it after its first written batch, check it exits 0
    interrupted; then rerun `python -m jaxalign.cli.main COMMAND` to completion. Returns
    (interrupted run's output, rows written before the SIGTERM's stop, resumed run's output)."""
    script = tmp_path / "slow_cli.py"
    script.write_text(_SLOW_CLI)
    victim = subprocess.Popen([sys.executable, str(script), str(pause), command, *overrides], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = sigterm_at(victim, lambda line: line.startswith("wrote "))
    assert victim.returncode == 0, first
    assert "interrupted; rerun to continue" in first, first
    written = [int(line.split()[1]) for line in first.splitlines() if line.startswith("wrote ")]
    assert written, first
    resumed = subprocess.run([sys.executable, "-m", "jaxalign.cli.main", command, *overrides], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    return first, written[-1], resumed.stdout + resumed.stderr


def test_sigterm_stops_cleanly_and_the_rerun_completes_identically(base_overrides, subprocess_env, tmp_path):
    prompts = write_jsonl(tmp_path / "prompts24.jsonl", [{"prompt": f"what is {i} times {i + 1}?"} for i in range(24)])
    straight = tmp_path / "straight.jsonl"  # first, so the subprocesses find its compilations in the cache
    run_generate(_config(base_overrides, prompts, straight, "generate.mode=pairs"))
    out = tmp_path / "pairs.jsonl"
    overrides = [*base_overrides, f"generate.prompts={prompts}", f"generate.output={out}", "generate.mode=pairs"]

    first, stopped_at, resumed = sigterm_then_resume(tmp_path, subprocess_env, "generate", overrides)
    assert 4 <= stopped_at < 24 and stopped_at % 4 == 0, first  # whole batches of 4
    assert f"{out}: 24 rows ({24 - stopped_at} new" in resumed, resumed
    rows = _rows(out)
    ids = [r["prompt_id"] for r in rows]
    assert len(ids) == len(set(ids)) == 24  # no prompt twice, none missing
    assert sorted(ids) == list(range(24))
    assert rows == _rows(straight)  # batch b samples with seed + b: a resumed run equals an uninterrupted one


# ----------------------------------------------------------------------------- errors, before any weights load


def test_prompt_longer_than_the_context_is_named(stage_overrides, tmp_path, monkeypatch):
    prompts = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "short?"}, {"prompt": "x" * 600}])
    _no_weights(monkeypatch)
    with pytest.raises(DataError) as e:
        run_generate(_config(stage_overrides, prompts, tmp_path / "out.jsonl", "generate.mode=pairs"))
    msg = str(e.value)
    assert str(prompts) in msg and "row 1" in msg and "context of 512 tokens" in msg and "max_new_tokens=8" in msg
    assert not (tmp_path / "out.jsonl").exists()


def test_prompt_error_reaches_the_cli_as_one_line(stage_overrides, tmp_path, monkeypatch, capsys):
    from jaxalign.cli.main import main

    prompts = write_jsonl(tmp_path / "long.jsonl", [{"prompt": "x" * 600}])
    _no_weights(monkeypatch)
    rc = main(["generate", *stage_overrides, f"generate.prompts={prompts}", f"generate.output={tmp_path / 'o.jsonl'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("jaxalign generate: error: ") and "row 0" in err and "context of 512 tokens" in err


def test_empty_prompt_file_is_refused(stage_overrides, tmp_path, monkeypatch):
    prompts = tmp_path / "empty.jsonl"
    prompts.write_text("")
    _no_weights(monkeypatch)
    with pytest.raises(DataError, match="no prompts"):
        run_generate(_config(stage_overrides, prompts, tmp_path / "out.jsonl"))


def test_empty_prompt_row_is_named(stage_overrides, tmp_path, monkeypatch):
    prompts = write_jsonl(tmp_path / "blank.jsonl", [{"prompt": "fine?"}, {"prompt": "ok?"}, {"prompt": "  "}])
    _no_weights(monkeypatch)
    with pytest.raises(DataError) as e:
        run_generate(_config(stage_overrides, prompts, tmp_path / "out.jsonl"))
    assert f"{prompts}:row 2 (line 3): field 'prompt' is empty" in str(e.value)


def test_model_folder_without_tokenizer_is_refused(stage_overrides, tiny_models, tmp_path, monkeypatch):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_models[1] / name, bare / name)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi?"}])
    _no_weights(monkeypatch)
    with pytest.raises(FileNotFoundError) as e:
        run_generate(_config(stage_overrides, prompts, tmp_path / "out.jsonl", f"model.path={bare}"))
    assert str(bare) in str(e.value) and "no tokenizer files" in str(e.value)
