"""Stage paths no other test runs: eval judged by a difference model, score with RDO coefficients
from a reward model, and `jaxalign prune --fraction` from the command line."""

import contextlib
import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxalign.cli.main import main
from jaxalign.config import load_config
from jaxalign.config.presets import preset_hf_config
from jaxalign.data import prepare
from jaxalign.losses import rdo_weights
from jaxalign.models import ModelConfig, init_model, load_model, load_tokenizer, save_pretrained
from jaxalign.models.prune import layers_to_drop
from jaxalign.pipeline.evaluate import run_eval
from jaxalign.pipeline.score import run_score
from tests.conftest import _byte_tokenizer
from tests.pipeline.conftest import write_jsonl
from tests.pipeline.test_generate import base_overrides  # noqa: F401 (fixtures)
from tests.train.conftest import synthetic_preferences


@pytest.fixture(scope="module")
def scalar_head_folder(tmp_path_factory):
    """A tiny random scalar-head model (reward or difference model: the same architecture)."""
    model = init_model(ModelConfig.from_hf_dict({**preset_hf_config("tiny"), "num_hidden_layers": 1}), seed=13,
                       head="score")
    return save_pretrained(model, _byte_tokenizer(), tmp_path_factory.mktemp("scalar") / "judge")


def _win(margin):
    return float(np.mean(np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))))


def _pairwise_differences(judge_folder, rows, config) -> np.ndarray:
    """Antisymmetric differences (D(x,a,b) − D(x,b,a)) / 2 per row, straight from the model."""
    data = prepare(rows, load_tokenizer(judge_folder),
                   dataclasses.replace(config.data, task="pairwise", shuffle=False, drop_remainder=False, path=""))
    batch = {k: jnp.asarray(v) for k, v in data.collate(data.units).items()}
    judge = load_model(judge_folder, head="score")
    fwd, bwd = (np.asarray(judge(batch[f"{o}_input_ids"], batch[f"{o}_positions"], batch[f"{o}_segment_ids"],
                                 batch[f"{o}_last_index"]), np.float64) for o in ("fwd", "bwd"))
    return ((fwd - bwd) / 2)[np.argsort(np.asarray(batch["row_id"])[:, 0])]


def _rewards(judge_folder, rows, config) -> tuple[np.ndarray, np.ndarray]:
    """Reward-model scores of chosen and rejected per row, straight from the model."""
    data = prepare(rows, load_tokenizer(judge_folder),
                   dataclasses.replace(config.data, task="preference", shuffle=False, drop_remainder=False, path=""))
    batch = data.collate(data.units)
    order = np.argsort(batch["row_id"][:, 0])
    judge = load_model(judge_folder, head="score")

    def score(side):
        keys = ("input_ids", "positions", "segment_ids")
        return np.asarray(judge(*(jnp.asarray(batch[f"{side}_{k}"]) for k in keys)), np.float64)[order]

    return score("chosen"), score("rejected")


# ----------------------------------------------------------------------------- eval, difference-model judge
def test_eval_with_a_difference_model_judge(base_overrides, tiny_models, prompts_file, scalar_head_folder, tmp_path):
    teacher, student = tiny_models
    short = [{**r, "prompt": f"question {i}?"} for i, r in enumerate(synthetic_preferences(8, 9))]  # fit max_length
    heldout = write_jsonl(tmp_path / "heldout.jsonl", short)
    out = tmp_path / "eval.json"
    config = load_config(None, [
        *base_overrides, f"eval.prompts={prompts_file}", "eval.limit=4", f"eval_data={heldout}",
        f"eval.models=[{{name: student, path: {student}}}, {{name: teacher_copy, path: {teacher}}}]",
        f"eval.judge.path={scalar_head_folder}",
        "eval.judge_kind=difference_model", f"eval.output={out}",
    ], stage="eval")
    with contextlib.redirect_stdout(io.StringIO()):
        results = run_eval(config)
    assert results["judge_kind"] == "difference_model"
    samples = [json.loads(x) for x in out.with_name(out.stem + "_samples.jsonl").read_text().splitlines()]
    rows = [{"prompt": [{"role": "user", "content": s["prompt"]}],
             "chosen": [{"role": "assistant", "content": s["student"]}],
             "rejected": [{"role": "assistant", "content": s["teacher"]}]} for s in samples]
    d = _pairwise_differences(scalar_head_folder, rows, config)
    assert np.any(d != 0)  # not all ties (identical samples tie exactly): the rate below is a real count
    assert results["models"]["student"]["win_rate_vs_teacher"] == pytest.approx(_win(d))
    held = [json.loads(line) for line in open(heldout)]
    assert results["judge_accuracy"] == pytest.approx(_win(_pairwise_differences(scalar_head_folder, held, config)))
    assert results["models"]["teacher"]["win_rate_vs_teacher"] == 0.5
    # preference accuracy: the implicit reward of each policy against the reference (the student)
    assert results["models"]["student"]["preference_accuracy"] == 0.5  # margins all exactly 0: ties
    expected = _win(_implicit_margins(teacher, student, held, config))
    assert expected not in (0.0, 0.5, 1.0)  # a value, not a degenerate case
    assert results["models"]["teacher_copy"]["preference_accuracy"] == pytest.approx(expected)


def _implicit_margins(policy_folder, reference_folder, rows, config) -> np.ndarray:
    """(logp_π(y_w) − logp_ref(y_w)) − (logp_π(y_l) − logp_ref(y_l)) per row, from the full logits."""
    data = prepare(rows, load_tokenizer(reference_folder),
                   dataclasses.replace(config.data, task="preference", shuffle=False, drop_remainder=False, path=""))
    batch = data.collate(data.units)
    order = np.argsort(batch["row_id"][:, 0])

    def logps(model, side):
        ids, pos, seg, mask = (jnp.asarray(batch[f"{side}_{k}"]) for k in ("input_ids", "positions", "segment_ids",
                                                                           "loss_mask"))
        logp = jax.nn.log_softmax(model(ids, pos, seg).astype(jnp.float32), axis=-1)[:, :-1]
        tok = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
        return np.asarray((tok * mask[:, 1:]).sum(-1), np.float64)[order]

    policy, reference = load_model(policy_folder), load_model(reference_folder)
    return (logps(policy, "chosen") - logps(reference, "chosen")) - (logps(policy, "rejected") - logps(reference, "rejected"))


# ----------------------------------------------------------------------------- score, reward-model RDO source
def test_score_with_reward_model_rdo_source(base_overrides, scalar_head_folder, tmp_path):
    """`rdo_difference` = r(x, y_w) − r(x, y_l) of the reward model; `rdo_weight` = rdo_weights of those."""
    rows = [{"prompt": f"q{i}?", "chosen": " good " + "a" * (1 + i % 4), "rejected": " bad " + "b" * (1 + i % 3)}
            for i in range(6)]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "scored.jsonl"
    config = load_config(None, [*base_overrides, f"score.input={data}", f"score.output={out}",
                                "score.reference_logps=false", "score.rdo_weights=true",
                                "loss.rdo.source=reward_model", f"loss.rdo.model.path={scalar_head_folder}"],
                         stage="score")
    run_score(config)
    scored = [json.loads(x) for x in out.read_text().splitlines()]
    assert [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in scored] == rows
    d = np.asarray([r["rdo_difference"] for r in scored])
    chosen, rejected = _rewards(scalar_head_folder, rows, config)
    np.testing.assert_allclose(d, chosen - rejected, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(d) > 1e-6)
    weights = np.asarray([r["rdo_weight"] for r in scored])
    np.testing.assert_allclose(weights, np.asarray(rdo_weights(d.astype(np.float32))), rtol=1e-5)


# ----------------------------------------------------------------------------- prune --fraction
@pytest.mark.parametrize("strategy", ["uniform", "last"])
def test_prune_by_fraction_from_the_cli(tmp_path, capsys, strategy):
    """7 layers, --fraction 0.3: two inner layers go; the kept layers are the source's, unchanged."""
    source = save_pretrained(init_model(ModelConfig.from_hf_dict({**preset_hf_config("tiny"), "num_hidden_layers": 7}),
                                        seed=3), _byte_tokenizer(), tmp_path / "teacher")
    out = tmp_path / "student"
    assert main(["prune", str(source), str(out), "--fraction", "0.3", "--strategy", strategy]) == 0
    dropped = layers_to_drop(7, 0.3, strategy)
    assert len(dropped) == 2 and 0 not in dropped and 6 not in dropped
    assert f"dropped layers {dropped}" in capsys.readouterr().out
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 5
    src = {k: v for f in source.glob("*.safetensors") for k, v in load_file(f).items()}
    got = {k: v for f in out.glob("*.safetensors") for k, v in load_file(f).items()}
    kept = [i for i in range(7) if i not in dropped]
    for j, i in enumerate(kept):
        layer = {k.split(f"layers.{j}.", 1)[1]: v for k, v in got.items() if f"layers.{j}." in k}
        assert layer, j
        for name, value in layer.items():
            np.testing.assert_array_equal(value, src[f"model.layers.{i}.{name}"], err_msg=f"layer {j} <- {i}: {name}")
    assert not any("layers.5." in k for k in got)
    np.testing.assert_array_equal(got["model.embed_tokens.weight"], src["model.embed_tokens.weight"])
