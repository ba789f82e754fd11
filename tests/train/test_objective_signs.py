"""Each preference objective learns the right direction, and a sign error would be caught.

The first-step identities (DPO's ln 2, KTO's 0.5) hold for either sign of the logit, so
they cannot see a flipped objective. Here every preference objective trains on a learnable
synthetic preference (chosen responses start with "good", rejected ones with "bad") and
must raise the held-out preference accuracy of its implicit reward,
`(logp_θ(y_w) − logp_ref(y_w)) > (logp_θ(y_l) − logp_ref(y_l))` (ties ½, so the untrained
policy scores 0.5), above 0.9; the same run on the swapped data (chosen <-> rejected: exactly
the sign-flipped objective for the pair losses, flipped labels for KTO) must push it below
0.1 (RRHF: below 0.5; its length-normalised ranking and NLL terms do not define this margin,
and its swapped run measured 0.375).

One run per objective: DPO's other loss types (IPO, hinge, robust) go through the same objective
(the same chosen/rejected wiring), and their formulas, sign included, are pinned by the float64
NumPy oracles of tests/losses/test_dpo.py at non-zero margins.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.config import load_config
from jaxalign.data import prepare
from jaxalign.data.config import DataConfig
from jaxalign.train.forward import Sequences, sequence_logps, split_pairs
from jaxalign.train.trainer import Trainer
from tests.train.conftest import synthetic_preferences, write_jsonl

FLIPPED_BELOW = {"rrhf": 0.5}  # default 0.1

OBJECTIVES = {
    "dpo": ["loss.name=dpo", "loss.beta=0.5"],
    "dadpo": ["loss.name=dadpo", "teacher.preset=tiny", "loss.beta_ref=0.25", "loss.beta_teacher=0.25"],
    "kto": ["loss.name=kto", "data.task=kto", "loss.beta=0.5"],
    "rrhf": ["loss.name=rrhf"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("signs")
    train = synthetic_preferences(64, 0)
    swapped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in train]
    return {"right": write_jsonl(root / "train.jsonl", train), "swapped": write_jsonl(root / "swapped.jsonl", swapped),
            "held_out": write_jsonl(root / "held_out.jsonl", synthetic_preferences(32, 1))}


def held_out_accuracy(policy, reference, tokenizer, path) -> float:
    """Share of held-out pairs whose implicit reward margin (policy vs reference) is positive, ties ½."""
    cfg = DataConfig(task="preference", max_length=64, max_prompt_length=32, buckets=[64], batch_size=32, shuffle=False)
    held_out = prepare(str(path), tokenizer, cfg)
    batch = {k: jnp.asarray(v) for k, v in held_out.collate(held_out.units).items() if k != "row_id"}
    both = Sequences.concat(Sequences.from_batch(batch, "chosen_"), Sequences.from_batch(batch, "rejected_"))

    @nnx.jit
    def pair_margins(p, r):
        (pc, pr), (rc, rr) = (split_pairs(sequence_logps(m, both, 1, chunk_size=64).logps) for m in (p, r))
        return (pc - rc) - (pr - rr)

    margin = np.asarray(pair_margins(policy, reference))
    return float(np.mean(np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))))


def _train(name, data_path, overrides, out):
    cfg = load_config("configs/tiny_dpo.yaml", overrides + OBJECTIVES[name] + [
        f"data.path={data_path}", f"train.output_dir={out}", "eval_data=null", "mesh.data=1", "train.steps=16",
        "optimizer.lr=2e-3", "optimizer.schedule=constant", "checkpoint.resume=false", "train.log_every=16"])
    trainer = Trainer(cfg)
    reference = nnx.merge(trainer.graphdefs.policy, jax.tree.map(jnp.copy, trainer.state["params"]))
    trainer.run()
    return nnx.merge(trainer.graphdefs.policy, trainer.state["params"]), reference, trainer.tokenizer


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_objective_raises_held_out_accuracy_and_its_sign_flip_lowers_it(name, data, tiny_dpo_overrides, tmp_path):
    policy, reference, tokenizer = _train(name, data["right"], tiny_dpo_overrides, tmp_path / "right")
    right = held_out_accuracy(policy, reference, tokenizer, data["held_out"])
    policy, reference, tokenizer = _train(name, data["swapped"], tiny_dpo_overrides, tmp_path / "swapped")
    flipped = held_out_accuracy(policy, reference, tokenizer, data["held_out"])
    assert right > 0.9 and flipped < FLIPPED_BELOW.get(name, 0.1), (name, right, flipped)


def test_untrained_policy_has_no_preference(data, tiny_dpo_overrides, tmp_path):
    """The measure itself: policy = reference gives margin 0 for every pair, all ties: 0.5."""
    cfg = load_config("configs/tiny_dpo.yaml", tiny_dpo_overrides + [f"data.path={data['right']}", "mesh.data=1"])
    trainer = Trainer(cfg)
    model = nnx.merge(trainer.graphdefs.policy, trainer.state["params"])
    assert held_out_accuracy(model, model, trainer.tokenizer, data["held_out"]) == 0.5
