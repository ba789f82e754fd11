"""Every registered objective through the training engine, on a tiny random model and tiny data.

Runs are 3 steps on one device (``mesh.data=1``); what dominates is compiling each
objective's train step once. Identities pinned here (DESIGN.md "Objectives"):
at initialisation the policy equals the reference, so DPO's first loss is ln 2;
daDPO with β₂ = 0 is DPO with β = β₁; precomputed reference log-probs give the
same run as computing them in the step; RDO weights multiply the pair losses.
"""

import json
import math
import random
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

from jaxalign.config import load_config
from jaxalign.config.presets import preset_hf_config
from jaxalign.config.schema import ConfigError, LossConfig
from jaxalign.data import DataError, prepare
from jaxalign.data.config import DataConfig
from jaxalign.models import ModelConfig, init_model
from jaxalign.objectives import Models, ObjectiveContext, get_objective
from jaxalign.train.trainer import Trainer, train
from tests.train.conftest import synthetic_preferences, write_jsonl

LN2 = math.log(2)
LN_VOCAB = math.log(320)  # the tiny preset's vocabulary: a random init is close to uniform over it
FAST = ["mesh.data=1", "train.steps=3", "train.log_every=1", "optimizer.lr=1e-3", "optimizer.schedule=constant",
        "eval_data=null", "checkpoint.resume=false"]


# ----------------------------------------------------------------------------- set-up
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("objective_runs")


@pytest.fixture(scope="module")
def common(byte_tokenizer_dir):
    return [f"model.tokenizer={byte_tokenizer_dir}", "data.max_length=64", "data.max_prompt_length=32",
            "data.buckets=[64]", "logging.tensorboard=false", "logging.progress_bar=false", "logging.plot=false",
            "train.export_hf=false", "checkpoint.async_save=false"]


def _config(common, data, out, *extra):
    overrides = [*common, *FAST, f"data.path={data}", f"train.output_dir={out}", *extra]
    return load_config("configs/tiny_dpo.yaml", overrides)


def _assert_declared_metrics(name: str, result) -> None:
    """The metrics an objective's spec declares (``--help-config`` lists them) are logged at every step."""
    missing = set(get_objective(name).metrics) - set(_step_metrics(result)[0])
    assert not missing, f"{name} declares metrics it does not return: {sorted(missing)}"


def _step_metrics(result) -> list[dict]:
    """Each train step's logged metrics (log_every=1), in step order."""
    rows = [json.loads(x) for x in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    return sorted((r for r in rows if r["split"] == "train"), key=lambda r: r["step"])


def _assert_moves(losses, steps=3):
    assert len(losses) == steps
    assert all(math.isfinite(x) for x in losses), losses
    assert abs(losses[-1] - losses[0]) > 1e-5, f"the loss did not move: {losses}"


def _first_batch_rows(trainer) -> np.ndarray:
    """Source rows of the first training batch (the batcher is deterministic in data.seed)."""
    rows = next(iter(trainer.data.batcher()))["row_id"].reshape(-1)
    return rows[rows >= 0]


@nnx.jit
def _sequence_logps(model, input_ids, positions, segment_ids, loss_mask):
    """Summed response log-probs per (unpacked) row, from the full materialised logits: an
    independent check of the engine's chunked `token_logprobs` path."""
    logits = model(input_ids, positions, segment_ids)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]
    return (tok * loss_mask[:, 1:]).sum(-1)


def _side_logps(model, batch: dict, side: str) -> np.ndarray:
    keys = ("input_ids", "positions", "segment_ids", "loss_mask")
    return np.asarray(_sequence_logps(model, *(jnp.asarray(batch[f"{side}_{k}"]) for k in keys)), np.float64)


def _with_columns(rows, path, **columns):
    """`rows` with extra per-row columns (callables of the row index), written as jsonl."""
    return write_jsonl(path, [{**r, **{k: f(i) for k, f in columns.items()}} for i, r in enumerate(rows)])


@pytest.fixture(scope="module")
def pref_rows(preference_data):
    """The rows of the shared synthetic preference set (`preference_data`'s train split)."""
    return [json.loads(x) for x in preference_data[0].read_text().splitlines()]


@pytest.fixture(scope="module")
def dpo_baseline(common, preference_data, pref_rows, runs):
    """A plain sigmoid-DPO run (β=0.1), plus the initial policy's log-probs of every row.

    The log-probs are the true reference log-probs (the reference is the initial
    policy) and are computed before the run, which donates the parameters.
    """
    trainer = Trainer(_config(common, preference_data[0], runs / "dpo"))
    policy = nnx.merge(trainer.graphdefs.policy, trainer.state["params"])
    batch = trainer.data.collate([(i,) for i in range(len(trainer.data.examples))])
    chosen, rejected = _side_logps(policy, batch, "chosen"), _side_logps(policy, batch, "rejected")
    logps = {int(r): (float(c), float(j)) for r, c, j in zip(batch["row_id"][:, 0], chosen, rejected)}
    result = trainer.run()
    return SimpleNamespace(result=result, losses=np.array(result.losses), logps=logps, rows=pref_rows)


# ----------------------------------------------------------------------------- each objective trains
def test_dpo_sigmoid_first_loss_is_ln2(dpo_baseline):
    losses = dpo_baseline.result.losses
    assert losses[0] == pytest.approx(LN2, abs=1e-6)
    _assert_moves(losses)
    _assert_declared_metrics("dpo", dpo_baseline.result)


def test_sft_trains(common, runs):
    rows = [{"prompt": r["prompt"], "response": r["chosen"]} for r in synthetic_preferences(32, 0)]
    data = write_jsonl(runs / "sft.jsonl", rows)
    result = train(_config(common, data, runs / "sft", "loss.name=sft", "data.task=sft"))
    assert result.losses[0] == pytest.approx(LN_VOCAB, abs=0.2)  # token-mean NLL of a near-uniform model
    _assert_moves(result.losses)
    assert result.losses[-1] < result.losses[0]
    _assert_declared_metrics("sft", result)


def test_rrhf_trains(common, preference_data, runs):
    result = train(_config(common, preference_data[0], runs / "rrhf", "loss.name=rrhf"))
    _assert_moves(result.losses)
    first = _step_metrics(result)[0]
    assert first["loss"] == pytest.approx(first["loss/ranking"] + first["loss/nll"], abs=1e-5)  # rrhf_nll_weight=1
    _assert_declared_metrics("rrhf", result)


def test_kto_from_pairs_trains(common, preference_data, runs):
    result = train(_config(common, preference_data[0], runs / "kto", "loss.name=kto", "data.task=kto"))
    # at initialisation r = 0 and z0 = 0: every example's loss is λ(1 − σ(0)) = 0.5
    assert result.losses[0] == pytest.approx(0.5, abs=1e-6)
    _assert_moves(result.losses)
    first = _step_metrics(result)[0]
    assert first["count/desirable"] > 0 and first["count/undesirable"] > 0
    _assert_declared_metrics("kto", result)


# reward_model: covered by tests/config/test_recipe_smoke.py (configs/reward_model.yaml).


@pytest.mark.parametrize("label_type", ["graded"])  # binary: configs/difference_model.yaml in test_recipe_smoke.py
def test_difference_model_trains(common, runs, label_type):
    rng = random.Random(3)
    rows = [{**r, "score_chosen": rng.uniform(0.5, 1.5), "score_rejected": rng.uniform(-0.5, 0.5)}
            for r in synthetic_preferences(32, 2)]
    data = write_jsonl(runs / f"dm_{label_type}.jsonl", rows)
    result = train(_config(common, data, runs / f"dm_{label_type}", "loss.name=difference_model", "data.task=pairwise",
                           f"loss.difference_label_type={label_type}", "data.max_length=128", "data.buckets=[128]"))
    _assert_moves(result.losses)
    _assert_declared_metrics("difference_model", result)


# ----------------------------------------------------------------------------- daDPO
def test_dadpo_without_teacher_kl_is_dpo(common, preference_data, runs, dpo_baseline):
    """β₂ = 0 is exactly DPO with β = β₁ (the teacher is loaded and run, but weighs nothing)."""
    result = train(_config(common, preference_data[0], runs / "dadpo_b2_0", "loss.name=dadpo", "teacher.preset=tiny",
                           "loss.beta_ref=0.1", "loss.beta_teacher=0"))
    np.testing.assert_allclose(result.losses, dpo_baseline.losses, rtol=0, atol=1e-6)
    _assert_declared_metrics("dadpo", result)


@pytest.fixture(scope="module")
def teacher_columns(runs, dpo_baseline):
    """The DPO rows with cached teacher log-probs chosen so that, at initialisation
    (Δ_θ = Δ_ref), daDPO's logit is z_i = β₂(Δ_θ − Δ_te) = β₂·o_i for offsets o_i > 0:
    Δ_te = Δ_θ − o_i. Returns (data path, {row: o_i})."""
    offsets = np.random.default_rng(0).uniform(5.0, 20.0, len(dpo_baseline.rows))
    data = _with_columns(dpo_baseline.rows, runs / "dadpo_teacher_cols.jsonl",
                         teacher_chosen_logps=lambda i: dpo_baseline.logps[i][0] - offsets[i],
                         teacher_rejected_logps=lambda i: dpo_baseline.logps[i][1])
    return data, offsets


def test_cached_teacher_logps_skip_the_teacher_model(common, runs, teacher_columns):
    trainer = Trainer(_config(common, teacher_columns[0], runs / "dadpo_cols_only", "loss.name=dadpo",
                              "teacher.preset=tiny"))
    assert "teacher" not in trainer.frozen and "reference" in trainer.frozen


@pytest.mark.parametrize("divergence, extra", [
    ("forward_kl", []),
    ("reverse_kl", ["loss.kd_on=both", "loss.kd_top_k=16"]),
    ("jsd", ["loss.kd_on=rejected", "loss.kd_temperature=2.0", "loss.kd_jsd_lambda=0.3"]),
])
def test_dadpo_with_token_kd(common, preference_data, runs, teacher_columns, divergence, extra):
    """daDPO (β₁ = β₂ = 0.1) + α·KD against a `teacher.preset=tiny` teacher.

    A preset is initialised from train.seed, so this teacher starts equal to the
    policy and the reference: KD is 0 at the first step and grows as the policy
    moves. The first preference loss is then ln 2 when the teacher's sequence
    log-probs come from the teacher model, and for `forward_kl` they come from
    cached columns (`teacher_columns`) instead, which puts it at the closed form
    mean_i −log σ(β₂·o_i) over the first batch — computed here by hand.
    """
    cached = divergence == "forward_kl"
    data = teacher_columns[0] if cached else preference_data[0]
    trainer = Trainer(_config(common, data, runs / f"kd_{divergence}", "loss.name=dadpo", "teacher.preset=tiny",
                              "loss.beta_ref=0.1", "loss.beta_teacher=0.1", "loss.kd_weight=0.5",
                              f"loss.kd_divergence={divergence}", *extra))
    assert "teacher" in trainer.frozen  # KD needs its token distributions, cached columns or not
    if cached:
        z = 0.1 * teacher_columns[1][_first_batch_rows(trainer)]
        first_preference = float(np.mean(np.log1p(np.exp(-z))))
        assert first_preference < LN2 - 0.1  # the teacher term moves the first loss away from DPO's ln 2
    else:
        first_preference = LN2
    result = trainer.run()
    _assert_moves(result.losses)
    steps = _step_metrics(result)
    for m in steps:
        assert m["loss"] == pytest.approx(m["loss/preference"] + 0.5 * m["loss/kd"], abs=1e-5)
    assert steps[0]["loss/preference"] == pytest.approx(first_preference, abs=1e-5)
    assert steps[0]["loss/kd"] == pytest.approx(0.0, abs=1e-6)
    assert steps[-1]["loss/kd"] > 1e-6


def test_dadpo_average_logps_divides_each_margin_by_its_length(common, runs, teacher_columns):
    """`loss.average_logps=true` (length normalisation) reaches the loss: at initialisation the
    cached teacher columns put Δ̄θ − Δ̄te = o_i / |y_w,i| (chosen response tokens), so the first loss
    is mean_i −log σ(β₂·o_i / |y_w,i|) over the first batch, not the summed form's −log σ(β₂·o_i)."""
    trainer = Trainer(_config(common, teacher_columns[0], runs / "dadpo_avg", "loss.name=dadpo",
                              "teacher.preset=tiny", "loss.beta_ref=0.1", "loss.beta_teacher=2.0",
                              "loss.average_logps=true", "train.steps=1"))
    batch = next(iter(trainer.data.batcher()))
    mask, seg = batch["chosen_loss_mask"][:, 1:], batch["chosen_segment_ids"][:, 1:]
    lengths = np.stack([(mask * (seg == k + 1)).sum(-1) for k in range(batch["row_id"].shape[1])], -1)
    real = batch["row_id"] >= 0
    z = 2.0 * teacher_columns[1][batch["row_id"][real]] / lengths[real]
    summed = float(np.mean(np.log1p(np.exp(-2.0 * teacher_columns[1][batch["row_id"][real]]))))
    expected = float(np.mean(np.log1p(np.exp(-z))))
    assert abs(expected - summed) > 1e-2  # the batch's lengths make the two forms differ
    assert trainer.run().losses[0] == pytest.approx(expected, abs=1e-5)


# ----------------------------------------------------------------------------- DPO variants and data columns
def test_dpo_with_nll_term(common, preference_data, runs):
    """RPO-style DPO: L = L_dpo + γ·NLL(y_w), γ = 1."""
    result = train(_config(common, preference_data[0], runs / "dpo_nll", "loss.nll_weight=1"))
    _assert_moves(result.losses)
    first = _step_metrics(result)[0]
    assert first["loss/preference"] == pytest.approx(LN2, abs=1e-6)
    assert first["loss/nll"] == pytest.approx(LN_VOCAB, abs=0.2)
    assert result.losses[0] == pytest.approx(LN2 + first["loss/nll"], abs=1e-5)


def test_precomputed_reference_logps_match_in_step_reference(common, runs, dpo_baseline):
    """True reference log-probs in `ref_*_logps` columns: no reference model, same run."""
    data = _with_columns(dpo_baseline.rows, runs / "dpo_ref_cols.jsonl",
                         ref_chosen_logps=lambda i: dpo_baseline.logps[i][0],
                         ref_rejected_logps=lambda i: dpo_baseline.logps[i][1])
    trainer = Trainer(_config(common, data, runs / "dpo_ref_cols"))
    assert "reference" not in trainer.frozen
    result = trainer.run()
    assert result.losses[0] == pytest.approx(LN2, abs=1e-5)
    np.testing.assert_allclose(result.losses, dpo_baseline.losses, rtol=0, atol=1e-5)


def test_rdo_weights_scale_pair_losses(common, runs, dpo_baseline):
    """RDO-DPO: loss = mean(w_i·ℓ_i); at initialisation every ℓ_i = ln 2, so the first
    loss is ln 2 times the mean weight of the first batch's pairs."""
    weight = lambda i: 0.5 + 0.5 * (i % 4)  # noqa: E731  (0.5, 1, 1.5, 2)
    data = _with_columns(dpo_baseline.rows, runs / "rdo.jsonl", rdo_weight=weight)
    trainer = Trainer(_config(common, data, runs / "rdo", "loss.rdo.enabled=true"))
    rows = _first_batch_rows(trainer)
    expected = LN2 * float(np.mean([weight(int(i)) for i in rows]))
    assert abs(expected - LN2) > 1e-3  # the batch's weights are not all 1
    result = trainer.run()
    assert result.losses[0] == pytest.approx(expected, abs=1e-6)
    _assert_moves(result.losses)


def test_rdo_without_weight_column_is_named(common, preference_data, runs):
    with pytest.raises(DataError, match="rdo_weight"):
        Trainer(_config(common, preference_data[0], runs / "rdo_missing", "loss.rdo.enabled=true"))
    assert not (runs / "rdo_missing").exists()


def test_packed_dpo_first_loss_is_ln2(common, preference_data, runs):
    result = train(_config(common, preference_data[0], runs / "packed", "data.packing=true",
                           "data.max_segments_per_row=4"))
    assert result.losses[0] == pytest.approx(LN2, abs=1e-6)
    _assert_moves(result.losses)


# ----------------------------------------------------------------------------- known bugs
@pytest.fixture(scope="module")
def one_per_row(byte_tokenizer):
    """The same 8 pairs unpacked and 'packed' with K=4 where no two pairs fit a row (each is
    longer than half of max_length): identical examples, plus 3 empty slots per packed row."""
    rows = [{"prompt": "p" * 30 + str(i) + "?", "chosen": " good " + "a" * (3 + i % 5),
             "rejected": " bad " + "b" * (3 + i % 4)} for i in range(8)]

    def batch(**kw):
        data = prepare(rows, byte_tokenizer, DataConfig(max_length=64, max_prompt_length=40, buckets=[64], batch_size=8,
                                                       shuffle=False, **kw))
        return data, {k: jnp.asarray(v) for k, v in data.collate(data.units).items() if k != "row_id"}

    (_, unpacked), (packed_data, packed) = batch(), batch(packing=True, max_segments_per_row=4)
    assert packed_data.units == [(i,) for i in range(8)] and packed["example_mask"].shape == (8, 4)
    policy = init_model(ModelConfig.from_hf_dict(preset_hf_config("tiny")), seed=0)
    graphdef, params = nnx.split(policy)
    noise = jax.tree.map(lambda x: 0.02 * jax.random.normal(jax.random.key(1), x.shape, x.dtype), params)
    reference = nnx.merge(graphdef, jax.tree.map(jnp.add, params, noise))  # differs from the policy: rewards != 0
    return SimpleNamespace(unpacked=unpacked, packed=packed, policy=policy, reference=reference)


def _objective(name: str, policy, reference, batch: dict):
    """`get_objective(name)` on one batch, jitted (the models are arguments, not constants)."""
    ctx = ObjectiveContext(LossConfig(name=name))
    return nnx.jit(lambda p, r, b: get_objective(name).fn(Models(p, r), b, ctx))(policy, reference, batch)


def test_packing_does_not_change_rrhf_loss(one_per_row):
    loss_u, m_u = _objective("rrhf", one_per_row.policy, None, one_per_row.unpacked)
    loss_p, m_p = _objective("rrhf", one_per_row.policy, None, one_per_row.packed)
    assert float(m_p["loss/ranking"]) == pytest.approx(float(m_u["loss/ranking"]), abs=1e-5)
    assert float(m_p["loss/nll"]) == pytest.approx(float(m_u["loss/nll"]), rel=1e-5)
    assert float(loss_p) == pytest.approx(float(loss_u), rel=1e-5)


def test_packing_does_not_change_dpo_metrics(one_per_row):
    loss_u, m_u = _objective("dpo", one_per_row.policy, one_per_row.reference, one_per_row.unpacked)
    loss_p, m_p = _objective("dpo", one_per_row.policy, one_per_row.reference, one_per_row.packed)
    assert float(loss_p) == pytest.approx(float(loss_u), rel=1e-5)  # the loss itself is right (weights mask slots)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected"):
        assert float(m_p[key]) == pytest.approx(float(m_u[key]), rel=1e-4, abs=1e-6), key


def test_reward_model_with_packing_is_refused(common, preference_data, runs):
    """One score per row: a packed reward model is refused before any work, naming the setting."""
    with pytest.raises(ConfigError, match=r"^data\.packing is not supported for loss\.name='reward_model' \(one score "
                                          r"per row\); set data\.packing=false$"):
        train(_config(common, preference_data[0], runs / "rm_packed", "loss.name=reward_model",
                      "data.packing=true", "data.max_segments_per_row=4"))
    assert not (runs / "rm_packed" / "checkpoints").exists()


def test_half_of_the_precomputed_columns_is_named(common, runs, pref_rows):
    data = _with_columns(pref_rows, runs / "ref_half.jsonl", ref_chosen_logps=lambda i: -10.0)
    with pytest.raises((DataError, ConfigError), match="ref_rejected_logps"):
        train(_config(common, data, runs / "ref_half"))


def test_graded_difference_model_without_scores_is_named(common, preference_data, runs):
    with pytest.raises((DataError, ConfigError), match="score_chosen"):
        train(_config(common, preference_data[0], runs / "dm_no_scores", "loss.name=difference_model",
                      "data.task=pairwise", "loss.difference_label_type=graded", "data.max_length=128",
                      "data.buckets=[128]"))
    assert not (runs / "dm_no_scores" / "checkpoints").exists()


def test_reward_model_returns_its_declared_metrics(one_per_row):
    """(The other objectives' declared metrics are checked where they train, above.)"""
    scorer = init_model(ModelConfig.from_hf_dict(preset_hf_config("tiny")), seed=0, head="score")
    _, metrics = _objective("reward_model", scorer, None, one_per_row.unpacked)
    assert set(get_objective("reward_model").metrics) <= set(metrics)
