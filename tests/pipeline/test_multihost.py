"""Multi-host ``train``, ``generate`` and ``score``: 2 processes x 4 CPU devices (``jax.distributed`` on
localhost, launched by ``launch/local_multiprocess.sh``) train with the same losses and write the same rows
as 1 process x 8 devices (this test process). ``train`` splits the batch over the global data axis
(``mesh.data=8``); ``generate`` and ``score`` shard the models over the global mesh across the processes
(``mesh.fsdp=4 mesh.tensor=2``: each process holds half of every fsdp-sharded weight); a 2-process run
stopped by SIGTERM resumes, with another process count, to the same rows, each exactly once, and the same
teacher top-k cache (each process writes the parts of its rows; the resumed run joins them). One 2-process
launch serves every test (``train``, then ``generate`` whole, then ``score`` stopped), as each launch costs
two jax starts (~30 s).
"""

import json
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxalign.config import load_config
from jaxalign.data.kd_cache import read_record
from jaxalign.pipeline.generate import run_generate
from jaxalign.pipeline.score import run_score
from jaxalign.train.trainer import train
from tests.pipeline.conftest import assert_same_topk_cache, sigterm_at, write_jsonl
from tests.train.conftest import byte_tokenizer_dir, preference_data, synthetic_preferences, tiny_overrides  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
HELPER = [sys.executable, str(REPO / "tests/pipeline/multihost_stages.py")]
PROMPTS = 20  # batches of 8: two full and a padded last one
TINY_DPO = str(REPO / "configs/tiny_dpo.yaml")


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tiny_models, preference_data, byte_tokenizer_dir, tmp_path_factory, subprocess_env):
    """(subprocess environment, overrides shared by the generate/score runs, overrides of every train run
    of configs/tiny_dpo.yaml, work folder)."""
    assert jax.device_count() == 8, "the 1-process runs need 8 devices (tests/conftest.py sets XLA_FLAGS)"
    teacher, student = tiny_models
    root = tmp_path_factory.mktemp("multihost")
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": f"what is {i} times {i + 1}?"} for i in range(PROMPTS)])
    prefs = write_jsonl(root / "prefs.jsonl", synthetic_preferences(PROMPTS, 3))
    # the launcher sets 4 devices per process; the other XLA flags (code generation) stay as in this process
    flags = [f for f in subprocess_env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env = dict(subprocess_env, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags))
    overrides = [
        f"model.path={student}", f"teacher.path={teacher}", "data.max_length=64", "data.max_prompt_length=40",
        "data.buckets=[64]", "logging.progress_bar=false", "generate.max_new_tokens=4", "generate.batch_size=8",
        "generate.temperature=0", f"generate.prompts={prompts}", f"score.input={prefs}", "score.batch_size=8",
        "score.teacher_logps=true", "score.teacher_top_k=4",
        "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2",
    ]
    train_overrides = [o for o in tiny_overrides(preference_data, byte_tokenizer_dir, root)
                       if not o.startswith(("train.output_dir", "eval_data"))]
    train_overrides += ["eval_data=null", "train.steps=6", "optimizer.lr=1e-3", "mesh.data=8", "train.log_every=1"]
    return env, overrides, train_overrides, root


def _stage_args(stage: str, overrides, out: Path) -> list[str]:
    """The arguments of ``jaxalign STAGE`` (without the stage's name) writing into ``out``."""
    if stage == "train":
        return [TINY_DPO, *overrides, f"train.output_dir={out / 'train'}"]
    output = {"generate": f"generate.output={out / 'gen.jsonl'}", "score": f"score.output={out / 'score.jsonl'}"}[stage]
    return [*overrides, output]


def _one_process(overrides, out: Path, stages=("generate", "score")):
    """1 process x 8 devices: the stages run in this test process."""
    results = {}
    for stage in stages:
        config = load_config(None, _stage_args(stage, overrides, out), stage=stage)
        results[stage] = (run_generate if stage == "generate" else run_score)(config)
    return results


def _two_processes(env, commands, pause=0.0):
    """2 processes x 4 devices, through the launcher, each running ``commands`` (``[stage, *args]`` lists)
    one after another (multihost_stages.py); returns the Popen (stdout and stderr merged)."""
    args = [a for i, command in enumerate(commands) for a in [*([":::"] if i else []), *command]]
    return subprocess.Popen([str(REPO / "launch/local_multiprocess.sh"), "2", "4", *HELPER, str(pause), *args], cwd=REPO,
                            env={**env, "JAXALIGN_PORT": str(_free_port())}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def single(setup):
    """The 1 x 8 run of both stages: the reference rows."""
    _, overrides, _, root = setup
    out = root / "single"
    _one_process(overrides, out)
    return out


@pytest.fixture(scope="module")
def two(setup):
    """One 2 x 4 launch (the costly part): ``train`` and ``generate`` run to the end, then ``score`` is sent
    SIGTERM after its first written batch. Returns (the launch's log, its folder)."""
    env, overrides, train_overrides, root = setup
    out = root / "two"
    commands = [["train", *_stage_args("train", train_overrides, out)],
                *([stage, *_stage_args(stage, overrides, out)] for stage in ("generate", "score"))]
    run = _two_processes(env, commands, pause=0.5)
    # the launcher forwards the SIGTERM to both processes
    log = sigterm_at(run, lambda line: line.startswith("wrote ") and "score.jsonl.part" in line)
    assert run.returncode == 0, log[-4000:]
    return log, out


def _losses(run_dir: Path) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["split"] == "train"]


def test_two_processes_train_like_one(two, setup, tmp_path):
    """The same 6 DPO steps, the batch split over 2 x 4 devices or 1 x 8 (this process, same compile settings)."""
    _, out = two
    _, _, train_overrides, _ = setup
    train(load_config(TINY_DPO, [*train_overrides, f"train.output_dir={tmp_path / 'single'}"]))
    multi, single = _losses(out / "train"), _losses(tmp_path / "single")
    assert len(multi) == 6, multi
    np.testing.assert_allclose(multi, single, atol=1e-5)


def test_two_processes_generate_the_rows_of_one(two, single):
    log, out = two
    assert "gen.jsonl.part-0-of-2.jsonl" in log and "gen.jsonl.part-1-of-2.jsonl" in log, log[-4000:]  # both wrote
    assert not list(out.glob("gen.jsonl.part-*")), "parts are merged into the output and removed"
    generated = _rows(out / "gen.jsonl")
    assert [r["prompt_id"] for r in generated] == list(range(PROMPTS))  # every prompt once, in prompt order
    assert generated == _rows(single / "gen.jsonl")  # greedy: the same tokens, hence the same texts


def test_sigterm_stops_both_processes_and_a_rerun_with_one_completes_exactly(two, single, setup):
    log, out = two
    assert log.count("interrupted; rerun to continue") == 2, log[-4000:]  # both stopped, at the same batch
    assert not (out / "score.jsonl").exists()
    parts = sorted(out.glob("score.jsonl.part-*-of-2.jsonl"))
    assert [p.name for p in parts] == ["score.jsonl.part-0-of-2.jsonl", "score.jsonl.part-1-of-2.jsonl"]
    written = [r["row"] for p in parts for r in _rows(p)]
    assert len(written) == len(set(written)) < PROMPTS
    cache_parts = {p.name.split("-r")[0] for p in (out / "score.teacher_topk.parquet.partial").iterdir()}
    assert cache_parts == {"part-p0", "part-p1"}  # each process wrote its rows' cache entries

    # Another process count (1 x 8, this process): the parts are folded in and only the other rows scored.
    resumed = _one_process(setup[1], out, ("score",))["score"]
    assert (resumed.rows, resumed.new_rows, resumed.interrupted) == (PROMPTS, PROMPTS - len(written), False)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("score")) == [
        "score.jsonl", "score.jsonl.provenance.json", "score.teacher_topk.parquet"]
    scored, reference = _rows(out / "score.jsonl"), _rows(single / "score.jsonl")
    assert len(scored) == len(reference) == PROMPTS  # each row once, in the input's order
    for row, ref in zip(scored, reference):
        assert {k: v for k, v in row.items() if not k.endswith("_logps")} == {k: v for k, v in ref.items() if not k.endswith("_logps")}
        # float32 sums of ~60 token log-probs whose tensor-parallel reductions run through gloo: equal to a few ulp
        logps = [k for k in ref if k.endswith("_logps")]
        assert sorted(logps) == ["ref_chosen_logps", "ref_rejected_logps", "teacher_chosen_logps", "teacher_rejected_logps"]
        np.testing.assert_allclose([row[k] for k in logps], [ref[k] for k in logps], rtol=1e-6, atol=1e-5)
    cache, reference_cache = out / "score.teacher_topk.parquet", single / "score.teacher_topk.parquet"
    assert read_record(cache)["rows"] == PROMPTS
    assert read_record(cache)["responses"] == read_record(reference_cache)["responses"]
    assert_same_topk_cache(cache, reference_cache, tol=1e-5)

