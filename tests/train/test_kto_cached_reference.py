"""KTO with the reference log-probs cached in a `ref_logps` column: no reference model is loaded,
and the first update equals the one computed with the reference model in the step.

At initialisation the policy is the reference, so the in-step run's KL estimate z0 is 0, the
value the cached run uses (it has no reference model for the mismatched pairs): both first
gradients, hence both first updates, are the same.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.config import load_config
from jaxalign.train.forward import Sequences, sequence_logps
from jaxalign.train.trainer import Trainer
from tests.train.conftest import synthetic_preferences, tiny_overrides, write_jsonl


def _unpaired(n: int) -> list[dict]:
    rows = []
    for i, r in enumerate(synthetic_preferences(n, 0)):
        rows.append({"prompt": r["prompt"], "completion": r["chosen"] if i % 2 else r["rejected"], "label": bool(i % 2)})
    return rows


def _trainer(preference_data, tokenizer_dir, data, out):
    # Adam's ε at 1e-3: the first update lr·g/(|g|+ε) is then smooth in the gradient, so float noise in
    # near-zero gradient components (two programs, two summation orders) is not blown up to lr-sized steps
    cfg = load_config("configs/tiny_dpo.yaml", tiny_overrides(preference_data, tokenizer_dir, out) + [
        "loss.name=kto", "data.task=kto", f"data.path={data}", "eval_data=null", "mesh.data=1", "train.steps=1",
        "optimizer.lr=1e-3", "optimizer.eps=1e-3", "checkpoint.resume=false"])
    return Trainer(cfg)


def test_cached_reference_logps_give_the_in_step_reference_update(preference_data, byte_tokenizer_dir, tmp_path):
    rows = _unpaired(32)
    live = _trainer(preference_data, byte_tokenizer_dir, write_jsonl(tmp_path / "plain.jsonl", rows), tmp_path / "live")
    assert "reference" in live.frozen
    # the reference log-prob of every row, from the initial policy (= the reference)
    model = nnx.merge(live.graphdefs.policy, jax.tree.map(jnp.copy, live.state["params"]))
    batch = live.data.collate([(i,) for i in range(len(live.data.examples))])
    seqs = Sequences(*(jnp.asarray(batch[k]) for k in ("input_ids", "positions", "segment_ids", "loss_mask")))
    logps = nnx.jit(lambda m: sequence_logps(m, seqs, 1, chunk_size=64).logps)(model)
    by_row = {int(r): float(v) for r, v in zip(batch["row_id"][:, 0], np.asarray(logps)[:, 0])}
    cached_rows = [{**r, "ref_logps": by_row[i]} for i, r in enumerate(rows)]
    cached = _trainer(preference_data, byte_tokenizer_dir, write_jsonl(tmp_path / "cached.jsonl", cached_rows),
                      tmp_path / "cached")
    assert "reference" not in cached.frozen  # the column replaces the model

    live_result, cached_result = live.run(), cached.run()
    assert live_result.losses[0] == pytest.approx(0.5, abs=1e-6)  # r = 0, z0 = 0: λ(1 − σ(0)) per example
    assert cached_result.losses[0] == pytest.approx(0.5, abs=1e-6)
    moved = 0.0
    for a, b, init in zip(jax.tree.leaves(cached.state["params"]), jax.tree.leaves(live.state["params"]),
                          jax.tree.leaves(nnx.state(model))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
        moved = max(moved, float(jnp.max(jnp.abs(a - init))))
    assert moved > 1e-4  # the compared update is not empty


def test_cached_reference_logps_that_are_wrong_change_the_update(preference_data, byte_tokenizer_dir, tmp_path):
    """The cached column is really used: shifting it makes the first loss differ from 0.5."""
    rows = [{**r, "ref_logps": -1000.0 if r["label"] else 0.0} for r in _unpaired(32)]
    trainer = _trainer(preference_data, byte_tokenizer_dir, write_jsonl(tmp_path / "shifted.jsonl", rows), tmp_path / "r")
    loss = trainer.run().losses[0]
    assert loss < 0.1  # desirable: r ≫ 0 (loss → 0); undesirable: r < 0 (loss → 0)
