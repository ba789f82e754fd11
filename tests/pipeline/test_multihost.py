"""Multi-host ``generate`` and ``score``: 2 processes x 4 CPU devices (``jax.distributed`` on localhost,
launched by ``launch/local_multiprocess.sh``) write the same rows as 1 process x 8 devices (this test
process), with the models sharded over the global mesh across the processes (``mesh.fsdp=4
mesh.tensor=2``: each process holds half of every fsdp-sharded weight); a 2-process run stopped by
SIGTERM resumes, with another process count, to the same rows, each exactly once. One 2-process
launch serves both tests (``generate`` whole, then ``score`` stopped), as each launch costs ~30 s.
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
from jaxalign.pipeline.generate import run_generate
from jaxalign.pipeline.score import run_score
from tests.pipeline.conftest import sigterm_at, write_jsonl
from tests.train.conftest import synthetic_preferences

REPO = Path(__file__).resolve().parents[2]
HELPER = [sys.executable, str(REPO / "tests/pipeline/multihost_stages.py")]
PROMPTS = 20  # batches of 8: two full and a padded last one


def _rows(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory, subprocess_env):
    """(subprocess environment, overrides shared by every run, work folder)."""
    assert jax.device_count() == 8, "the 1-process runs need 8 devices (tests/conftest.py sets XLA_FLAGS)"
    teacher, student = tiny_models
    root = tmp_path_factory.mktemp("multihost")
    prompts = write_jsonl(root / "prompts.jsonl", [{"prompt": f"what is {i} times {i + 1}?"} for i in range(PROMPTS)])
    prefs = write_jsonl(root / "prefs.jsonl", synthetic_preferences(PROMPTS, 3))
    env = dict(subprocess_env, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # the launcher sets 4 devices per process
    overrides = [
        f"model.path={student}", f"teacher.path={teacher}", "data.max_length=64", "data.max_prompt_length=40",
        "data.buckets=[64]", "logging.progress_bar=false", "generate.max_new_tokens=4", "generate.batch_size=8",
        "generate.temperature=0", f"generate.prompts={prompts}", f"score.input={prefs}", "score.batch_size=8",
        "mesh.data=1", "mesh.fsdp=4", "mesh.tensor=2",
    ]
    return env, overrides, root


def _stages(overrides, out: Path, stages=("generate", "score")) -> list[str]:
    """multihost_stages.py's arguments for ``stages`` writing into ``out``."""
    outputs = {"generate": f"generate.output={out / 'gen.jsonl'}", "score": f"score.output={out / 'score.jsonl'}"}
    args = []
    for stage in stages:
        args += ([":::"] if args else []) + [stage, *overrides, outputs[stage]]
    return args


def _one_process(overrides, out: Path, stages=("generate", "score")):
    """1 process x 8 devices: the stages run in this test process."""
    results = {}
    for stage in stages:
        args = [a for a in _stages(overrides, out, (stage,)) if a != stage]
        config = load_config(None, args, stage=stage)
        results[stage] = (run_generate if stage == "generate" else run_score)(config)
    return results


def _two_processes(env, args, pause=0.0):
    """2 processes x 4 devices, through the launcher; returns the Popen (stdout and stderr merged)."""
    return subprocess.Popen([str(REPO / "launch/local_multiprocess.sh"), "2", "4", *HELPER, str(pause), *args], cwd=REPO,
                            env={**env, "JAXALIGN_PORT": str(_free_port())}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def single(setup):
    """The 1 x 8 run of both stages: the reference rows."""
    env, overrides, root = setup
    out = root / "single"
    _one_process(overrides, out)
    return out


@pytest.fixture(scope="module")
def two(setup):
    """One 2 x 4 launch (the costly part): ``generate`` runs to the end, then ``score`` is sent SIGTERM
    after its first written batch. Returns (the launch's log, its folder)."""
    env, overrides, root = setup
    out = root / "two"
    run = _two_processes(env, _stages(overrides, out), pause=0.5)
    # the launcher forwards the SIGTERM to both processes
    log = sigterm_at(run, lambda line: line.startswith("wrote ") and "score.jsonl.part" in line)
    assert run.returncode == 0, log[-4000:]
    return log, out


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

    # Another process count (1 x 8, this process): the parts are folded in and only the other rows scored.
    resumed = _one_process(setup[1], out, ("score",))["score"]
    assert (resumed.rows, resumed.new_rows, resumed.interrupted) == (PROMPTS, PROMPTS - len(written), False)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("score")) == ["score.jsonl", "score.jsonl.provenance.json"]
    scored, reference = _rows(out / "score.jsonl"), _rows(single / "score.jsonl")
    assert len(scored) == len(reference) == PROMPTS  # each row once, in the input's order
    for row, ref in zip(scored, reference):
        assert {k: v for k, v in row.items() if not k.endswith("_logps")} == {k: v for k, v in ref.items() if not k.endswith("_logps")}
        # float32 sums of ~60 token log-probs whose tensor-parallel reductions run through gloo: equal to a few ulp
        np.testing.assert_allclose([row["ref_chosen_logps"], row["ref_rejected_logps"]],
                                   [ref["ref_chosen_logps"], ref["ref_rejected_logps"]], rtol=1e-6, atol=1e-5)
