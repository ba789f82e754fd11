"""Fixtures for the offline stages: tiny teacher/student folders with a tokenizer, prompt sets."""

import json
import signal

import pytest

from tests.conftest import _byte_tokenizer


def sigterm_at(proc, first_line) -> str:
    """Read `proc`'s output until a line for which `first_line(line)` holds, send it SIGTERM, wait
    (killing it if it outlives the wait) and return its whole output."""
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if first_line(line):
                proc.send_signal(signal.SIGTERM)
                break
        rest, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return "".join(seen) + rest


class StopAfterFirstBatch:
    """A stand-in `PreemptionGuard` whose signal has already arrived: a stage loop stops after one batch."""

    requested, signal_name = True, "SIGTERM"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def assert_same_topk_cache(path, reference, tol: float) -> None:
    """Two top-k cache files hold the same rows in the same order: equal row ids, response tokens and top-k ids;
    log-probs and residuals within ``tol``."""
    import numpy as np
    import pyarrow.parquet as pq

    got, want = pq.read_table(path), pq.read_table(reference)
    assert got.column_names == want.column_names and got.num_rows == want.num_rows
    for name in want.column_names:
        a, b = got.column(name).to_pylist(), want.column(name).to_pylist()
        if name.endswith(("_logps", "_residual")):
            np.testing.assert_allclose(np.concatenate(a), np.concatenate(b), rtol=tol, atol=tol, err_msg=name)
        else:
            assert a == b, name


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _save_tiny(path, layers: int, seed: int):
    from jaxalign.config.presets import preset_hf_config
    from jaxalign.models import ModelConfig, init_model, save_pretrained

    hf = {**preset_hf_config("tiny"), "num_hidden_layers": layers}
    model = init_model(ModelConfig.from_hf_dict(hf), seed=seed)
    save_pretrained(model, _byte_tokenizer(), path)
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """(teacher, student) HF folders: tiny random Llamas (3 and 2 layers) sharing the byte tokenizer."""
    root = tmp_path_factory.mktemp("models")
    return _save_tiny(root / "teacher", 3, seed=1), _save_tiny(root / "student", 2, seed=2)


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    rows = [{"prompt": f"question {i}: what is {i} plus {i}?", "category": "math"} for i in range(10)]
    return write_jsonl(tmp_path_factory.mktemp("prompts") / "prompts.jsonl", rows)


@pytest.fixture
def stage_overrides(tiny_models, tmp_path):
    """Overrides for a tiny, quiet pipeline stage (models, short lengths, no progress bars)."""
    teacher, student = tiny_models
    return [
        f"model.path={student}", f"teacher.path={teacher}", f"train.output_dir={tmp_path / 'run'}",
        "data.max_length=64", "data.max_prompt_length=40", "data.buckets=[64]", "data.batch_size=4",
        "logging.progress_bar=false", "logging.tensorboard=false", "logging.plot=false", "checkpoint.async_save=false",
        "generate.max_new_tokens=8", "generate.batch_size=4", "eval.max_new_tokens=8", "mesh.data=1",
    ]
