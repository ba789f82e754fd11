"""Mixed precision: bfloat16 compute over float32 master weights and optimizer state, with the
frozen reference and teacher stored in bfloat16, tracks the all-float32 run.

Both runs train daDPO with the teacher in the step for the same steps on the same batches; the
log-prob sums and losses are float32 in both (the ops accumulate in float32 whatever the compute
dtype). Tolerance: bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 ~ 2e-3 per value); the
losses, near ln 2 and moving by ~0.1 over the run, are held within 5e-3 of the float32 run's
(measured: 6.1e-4 at most over the 8 steps).
"""

import numpy as np
from safetensors.numpy import load_file

from jaxalign.config import load_config
from jaxalign.train.trainer import train
from tests.train.conftest import tiny_overrides

TOLERANCE = 5e-3
DADPO = ["loss.name=dadpo", "loss.beta_ref=0.1", "loss.beta_teacher=0.1", "teacher.preset=tiny",
         "reference.preset=tiny", "train.steps=8", "train.log_every=1", "optimizer.lr=1e-3",
         "optimizer.schedule=constant", "eval_data=null", "checkpoint.resume=false", "train.export_hf=true"]
BF16 = ["model.dtype=bfloat16", "model.param_dtype=float32",
        "reference.dtype=bfloat16", "reference.param_dtype=bfloat16",
        "teacher.dtype=bfloat16", "teacher.param_dtype=bfloat16"]


def _run(preference_data, tokenizer_dir, out, extra):
    cfg = load_config("configs/tiny_dpo.yaml", tiny_overrides(preference_data, tokenizer_dir, out) + DADPO + extra)
    result = train(cfg)
    return np.array(result.losses), result.export_dir


def test_bf16_compute_with_float32_master_weights_tracks_the_float32_run(preference_data, byte_tokenizer_dir, tmp_path):
    f32, _ = _run(preference_data, byte_tokenizer_dir, tmp_path / "f32", [])
    bf16, export = _run(preference_data, byte_tokenizer_dir, tmp_path / "bf16", BF16)
    assert np.isclose(f32[0], np.log(2), atol=1e-5) and f32[-1] < f32[0] - 0.05, f32  # the run learns
    assert not np.array_equal(bf16, f32)  # bfloat16 was really used
    print(f"max |bf16 - f32| loss over {len(f32)} steps: {np.abs(bf16 - f32).max():.2e}")
    np.testing.assert_allclose(bf16, f32, rtol=0, atol=TOLERANCE)
    tensors = {}
    for f in export.glob("*.safetensors"):
        tensors.update(load_file(str(f)))
    assert tensors and {v.dtype for v in tensors.values()} == {np.dtype("float32")}  # master weights stayed float32
