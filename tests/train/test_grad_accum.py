"""Gradient accumulation gives the full batch's gradient, for every objective.

The gradients themselves are compared (not losses after an optimizer, which Adam's scale
invariance and gradient clipping would hide): one batch of 8 rows whose micro-batches hold
different numbers of examples and tokens (packed rows, empty slots, empty rows), split into
1, 2 and 4 micro-batches. A per-micro-batch normalisation (the mean of micro-batch means)
differs from the full batch's by far more than the 1e-6 tolerance.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.config.presets import preset_hf_config
from jaxalign.config.schema import LossConfig
from jaxalign.data import prepare
from jaxalign.data.config import DataConfig
from jaxalign.models import ModelConfig, init_model
from jaxalign.objectives import ObjectiveContext, get_objective
from jaxalign.train.step import GraphDefs, accumulated_grads, make_loss_fn, micro_totals

# 8 rows -> micro-batches of 4/2 rows holding 11|4 and 9|2|4|0 examples (None: an empty row)
PACKED_UNITS = [(0, 1, 2, 3), (4, 5, 6), (7,), None, (8, 9), (10,), None, (11, 12, 13, 14)]
# unpacked (KTO, reward model): 3|2 and 2|1|0|2 examples
SINGLE_UNITS = [(0,), (1,), (2,), None, None, None, (3,), (4,)]


def _rows(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    word = lambda k: "".join(rng.choice(list("abcdefgh"), k))  # noqa: E731
    return [{"prompt": word(2 + i % 3) + "?", "chosen": " good " + word(1 + (3 * i) % 7),
             "rejected": " bad " + word(1 + (5 * i) % 6)} for i in range(n)]


def _batch(byte_tokenizer, task: str, units, **data_kw) -> dict:
    rows = _rows(16)
    if task == "sft":
        rows = [{"prompt": r["prompt"], "response": r["chosen"]} for r in rows]
    cfg = DataConfig(task=task, max_length=128, max_prompt_length=16, buckets=[128], batch_size=8, shuffle=False,
                     **data_kw)
    data = prepare(rows, byte_tokenizer, cfg)
    return {k: jnp.asarray(v) for k, v in data.collate(units).items() if k != "row_id"}


def _tiny(seed: int, head: str = "lm"):
    return init_model(ModelConfig.from_hf_dict(preset_hf_config("tiny")), seed=seed, head=head)


def _perturbed(model, seed: int, scale: float = 0.05):
    """A copy of `model` with every parameter moved by Gaussian noise (so rewards and KL are not 0)."""
    graphdef, params = nnx.split(model)
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(params))))
    return graphdef, jax.tree.map(lambda x: x + scale * jax.random.normal(next(keys), x.shape, x.dtype), params)


CASES = {
    # name: (loss config, data task, units, data options, needs reference, needs teacher, head)
    "sft": (LossConfig(name="sft"), "sft", PACKED_UNITS, dict(packing=True, max_segments_per_row=5), False, False, "lm"),
    "dpo+nll": (LossConfig(name="dpo", nll_weight=1.0), "preference", PACKED_UNITS,
                dict(packing=True, max_segments_per_row=5), True, False, "lm"),
    "dadpo+kd": (LossConfig(name="dadpo", beta_ref=0.1, beta_teacher=0.1, kd_weight=0.5, kd_on="both"), "preference",
                 PACKED_UNITS, dict(packing=True, max_segments_per_row=5), True, True, "lm"),
    "rrhf": (LossConfig(name="rrhf"), "preference", PACKED_UNITS, dict(packing=True, max_segments_per_row=5), False,
             False, "lm"),
    "kto": (LossConfig(name="kto"), "kto", SINGLE_UNITS, {}, True, False, "lm"),
    "reward_model": (LossConfig(name="reward_model"), "preference", SINGLE_UNITS, {}, False, False, "score"),
}


@pytest.fixture(scope="module")
def setups(byte_tokenizer):
    built = {}

    def get(name):
        if name not in built:
            loss_cfg, task, units, data_kw, needs_ref, needs_teacher, head = CASES[name]
            policy_def, params = _perturbed(_tiny(0, head), 1)
            graphdefs, frozen = {"policy": policy_def}, {}
            if needs_ref:
                graphdefs["reference"], frozen["reference"] = _perturbed(_tiny(0), 4, 0.3)
            if needs_teacher:
                graphdefs["teacher"], frozen["teacher"] = _perturbed(_tiny(2), 3, 0.2)
            loss_fn = make_loss_fn(get_objective(loss_cfg.name), ObjectiveContext(loss_cfg), GraphDefs(**graphdefs))
            built[name] = (loss_fn, params, frozen, _batch(byte_tokenizer, task, units, **data_kw))
        return built[name]

    return get


def _grads(loss_fn, params, frozen, batch, n):
    return jax.jit(lambda p, f, b: accumulated_grads(loss_fn, p, f, b, n))(params, frozen, batch)


@pytest.mark.parametrize("name", list(CASES))
def test_accumulated_gradient_is_the_full_batch_gradient(setups, name):
    loss_fn, params, frozen, batch = setups(name)
    full_metrics, full = _grads(loss_fn, params, frozen, batch, 1)
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(full)) > 1e-3  # a gradient worth comparing
    for n in (2, 4):
        metrics, grads = _grads(loss_fn, params, frozen, batch, n)
        for (path, g), g1 in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(full)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(g1), rtol=0, atol=1e-6,
                                       err_msg=f"{name}, grad_accum_steps={n}, {jax.tree_util.keystr(path)}")
        assert float(metrics["loss"]) == pytest.approx(float(full_metrics["loss"]), abs=1e-6), n


def test_the_batch_is_uneven(setups):
    """The cases above would not see a per-micro-batch normalisation if the micro-batches were even."""
    loss_fn, params, frozen, batch = setups("dadpo+kd")
    micro = jax.tree.map(lambda x: x.reshape(4, 2, *x.shape[1:]), batch)
    per_micro = [loss_fn.totals(params, frozen, jax.tree.map(lambda x: x[i], micro)) for i in range(4)]
    assert len({float(t["examples"]) for t in per_micro}) == 4
    assert len({float(t["kd_tokens"]) for t in per_micro}) == 4
    mean = micro_totals(loss_fn, params, frozen, micro, 4)
    assert float(mean["examples"]) == pytest.approx(float(jnp.sum(batch["example_mask"])) / 4)


def test_kto_kl_estimate_is_positive(setups):
    """KTO's z0 is clamped at 0: the accumulation case only tests the global KL estimate if it is > 0."""
    loss_fn, params, frozen, batch = setups("kto")
    totals = loss_fn.totals(params, frozen, batch)
    assert float(totals["kl_sum"]) > 0
