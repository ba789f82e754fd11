"""daDPO with the teacher in the step and token-level KD on sharded meshes equals one device.

The teacher tests elsewhere run on one device; here the same 4-step run (teacher sequence
log-probs and KD over both responses, both computed in the step) on 8x1x1 (pure data
parallel) and 2x2x2 (data, fsdp and a vocab-parallel tensor axis) gives the one-device
losses and KD terms within 1e-5. The one-device run is computed once for both meshes.
"""

import json

import numpy as np
import pytest

from jaxalign.config import load_config
from jaxalign.train.trainer import train
from tests.train.conftest import tiny_overrides

DADPO_KD = ["loss.name=dadpo", "teacher.preset=tiny", "loss.beta_ref=0.1", "loss.beta_teacher=0.1",
            "loss.kd_weight=0.5", "loss.kd_on=both", "loss.kd_divergence=forward_kl", "train.steps=4",
            "train.log_every=1", "optimizer.lr=1e-3", "optimizer.schedule=constant", "eval_data=null",
            "checkpoint.resume=false"]


def _run(preference_data, tokenizer_dir, out, data, fsdp, tensor) -> dict:
    cfg = load_config("configs/tiny_dpo.yaml", tiny_overrides(preference_data, tokenizer_dir, out) + DADPO_KD + [
        f"mesh.data={data}", f"mesh.fsdp={fsdp}", f"mesh.tensor={tensor}"])
    result = train(cfg)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["step"])
    return {"loss": np.array(result.losses), **{k: np.array([r[k] for r in steps]) for k in ("loss/kd", "loss/preference")}}


@pytest.fixture(scope="module")
def one_device(preference_data, byte_tokenizer_dir, tmp_path_factory):
    return _run(preference_data, byte_tokenizer_dir, tmp_path_factory.mktemp("dadpo_kd_one"), 1, 1, 1)


@pytest.mark.parametrize("mesh", [(8, 1, 1), (2, 2, 2)])
def test_dadpo_with_teacher_and_kd_on_a_mesh_equals_one_device(preference_data, byte_tokenizer_dir, tmp_path, one_device,
                                                                mesh):
    many = _run(preference_data, byte_tokenizer_dir, tmp_path / "many", *mesh)
    assert one_device["loss/kd"][-1] > 1e-4  # KD is a real part of the compared loss (0 only at step 1)
    for key, expected in one_device.items():
        np.testing.assert_allclose(many[key], expected, rtol=0, atol=1e-5, err_msg=f"{key} on {mesh}")
