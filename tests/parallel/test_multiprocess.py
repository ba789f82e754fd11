"""Two processes x 4 CPU devices (jax.distributed on localhost) train exactly like one process x 8."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from jaxalign.config import load_config
from jaxalign.train.trainer import train

ROOT = Path(__file__).resolve().parents[2]


def _losses(run_dir):
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["split"] == "train"]


def test_two_processes_match_one_process(tiny_dpo_overrides, subprocess_env, tmp_path):
    jaxalign = [sys.executable, "-m", "jaxalign.cli.main", "train", "configs/tiny_dpo.yaml"]
    common = [o for o in tiny_dpo_overrides if not o.startswith(("train.output_dir", "eval_data"))]
    common += ["eval_data=null", "train.steps=6", "optimizer.lr=1e-3", "mesh.data=8", "train.log_every=1"]
    env = dict(subprocess_env)
    env.pop("XLA_FLAGS", None)  # the launcher gives each process 4 devices
    multi = subprocess.run([str(ROOT / "launch/local_multiprocess.sh"), "2", "4", *jaxalign, *common,
                            f"train.output_dir={tmp_path / 'multi'}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert multi.returncode == 0, multi.stdout[-3000:] + multi.stderr[-3000:]
    # the single-process run in this process (8 devices, the same compile settings as `subprocess_env`)
    train(load_config("configs/tiny_dpo.yaml", [*common, f"train.output_dir={tmp_path / 'single'}"]))
    np.testing.assert_allclose(_losses(tmp_path / "multi"), _losses(tmp_path / "single"), atol=1e-5)
