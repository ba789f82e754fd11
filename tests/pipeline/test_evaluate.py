"""The ``eval`` stage: metrics per policy, the teacher as a policy, ties, a judge, KL against full logits."""

import contextlib
import dataclasses
import io
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxalign.config import load_config
from jaxalign.config.presets import preset_hf_config
from jaxalign.data import prepare
from jaxalign.models import ModelConfig, init_model, load_model, load_tokenizer, save_pretrained
from jaxalign.pipeline.evaluate import METRICS, run_eval
from tests.conftest import _byte_tokenizer
from tests.pipeline.conftest import write_jsonl
from tests.pipeline.test_generate import base_overrides  # noqa: F401 (fixtures)
from tests.train.conftest import synthetic_preferences


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory):
    """A tiny random reward model (scalar head) saved as an HF *ForSequenceClassification folder."""
    cfg = {**preset_hf_config("tiny"), "num_hidden_layers": 1}
    model = init_model(ModelConfig.from_hf_dict(cfg), seed=11, head="score")
    return save_pretrained(model, _byte_tokenizer(), tmp_path_factory.mktemp("judge") / "judge")


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("heldout") / "heldout.jsonl", synthetic_preferences(8, 9))


@pytest.fixture(scope="module")
def eval_run(base_overrides, tiny_models, prompts_file, heldout, judge_folder, tmp_path_factory):
    """Two policies (the student, which is also the reference, and a copy of the teacher) on 4 held-out
    prompts and 8 held-out pairs, judged by a reward model: (config, results, printed table, output)."""
    teacher, student = tiny_models
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    config = load_config(None, [
        *base_overrides, f"eval.prompts={prompts_file}", "eval.limit=4", f"eval_data={heldout}",
        f"eval.models=[{{name: student, path: {student}}}, {{name: teacher_copy, path: {teacher}}}]",
        f"eval.judge.path={judge_folder}", "eval.judge_kind=reward_model", f"eval.output={out}",
    ], stage="eval")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = run_eval(config)
    return config, results, printed.getvalue(), out


def _samples(out):
    return [json.loads(line) for line in out.with_name(out.stem + "_samples.jsonl").read_text().splitlines()]


def test_results_have_the_metrics_of_every_model(eval_run, prompts_file, heldout, judge_folder):
    _, results, _, out = eval_run
    assert list(results["models"]) == ["teacher", "student", "teacher_copy"]
    assert set(results["models"]["teacher"]) == {"kl_to_teacher", "teacher_logp_per_token", "win_rate_vs_teacher"}
    for name in ("student", "teacher_copy"):
        metrics = results["models"][name]
        assert set(metrics) == set(METRICS)
        assert all(np.isfinite(v) for v in metrics.values())
        assert 0 <= metrics["preference_accuracy"] <= 1 and 0 <= metrics["win_rate_vs_teacher"] <= 1
        assert metrics["kl_to_teacher"] >= 0 and metrics["teacher_logp_per_token"] < 0
    assert results["models"]["student"]["kl_to_teacher"] > 1e-4  # a different model
    assert (results["prompts"], results["max_new_tokens"], results["judge"], results["judge_kind"]) == (
        4, 8, str(judge_folder), "reward_model")
    assert 0 <= results["judge_accuracy"] <= 1 and results["eval_data"] == str(heldout)
    assert json.loads(out.read_text()) == results  # the JSON written is what was returned
    samples = _samples(out)
    assert [s["prompt_id"] for s in samples] == [0, 1, 2, 3]
    assert all(set(s) == {"prompt_id", "prompt", "teacher", "student", "teacher_copy"} for s in samples)


def test_table_is_printed_with_a_row_per_model(eval_run):
    _, results, printed, _ = eval_run
    lines = printed.splitlines()
    assert lines[0] == "| model | " + " | ".join(METRICS.values()) + " |"
    student = results["models"]["student"]
    row = "| student | " + " | ".join(f"{student[k]:.4f}" for k in METRICS) + " |"
    assert row in lines
    assert any(line.startswith("| teacher |  | 0.0000 | ") for line in lines)  # no preference accuracy for the teacher
    assert any(line.startswith("| teacher_copy | ") for line in lines)
    assert any(line.startswith("judge: ") and "held-out accuracy" in line for line in lines)


def test_teacher_evaluated_as_a_policy_matches_the_teacher(eval_run):
    """Same weights, same prompts and seed: the same samples, so KL ~ 0, the teacher's log-likelihood, a tie."""
    _, results, _, out = eval_run
    copy, teacher = results["models"]["teacher_copy"], results["models"]["teacher"]
    assert [s["teacher_copy"] for s in _samples(out)] == [s["teacher"] for s in _samples(out)]
    assert copy["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)
    assert copy["teacher_logp_per_token"] == pytest.approx(teacher["teacher_logp_per_token"], rel=1e-6)
    assert copy["win_rate_vs_teacher"] == 0.5


def test_preference_accuracy_of_the_reference_itself_is_one_half(eval_run):
    """The student is the reference (`reference` unset): every implicit-reward margin is exactly 0, a tie."""
    _, results, _, _ = eval_run
    assert results["models"]["student"]["preference_accuracy"] == 0.5


def _judge_scores(judge, rows, config):
    """Reward-model scores of chosen and rejected per row, straight from the model."""
    data = prepare(rows, load_tokenizer(config.eval.judge.path),
                   dataclasses.replace(config.data, task="preference", shuffle=False, drop_remainder=False, path=""))
    batch = data.collate(data.units)
    order = np.argsort(batch["row_id"][:, 0])

    def score(side):
        return np.asarray(judge(*(jnp.asarray(batch[f"{side}_{k}"]) for k in ("input_ids", "positions", "segment_ids"))))

    return score("chosen")[order], score("rejected")[order]


def _win(margin):
    return float(np.mean(np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))))


def test_win_rate_is_the_judges_preference_of_the_policy_samples(eval_run, judge_folder):
    config, results, _, out = eval_run
    judge = load_model(judge_folder)
    samples = _samples(out)
    rows = [{"prompt": [{"role": "user", "content": s["prompt"]}],
             "chosen": [{"role": "assistant", "content": s["student"]}],
             "rejected": [{"role": "assistant", "content": s["teacher"]}]} for s in samples]
    student, teacher = _judge_scores(judge, rows, config)
    assert np.any(student != teacher)  # not all ties: the rate is a real count
    assert results["models"]["student"]["win_rate_vs_teacher"] == pytest.approx(_win(student - teacher))
    held = [json.loads(line) for line in open(config.eval_data)]
    chosen, rejected = _judge_scores(judge, held, config)
    assert results["judge_accuracy"] == pytest.approx(_win(chosen - rejected))


def _sft_batch(config, rows):
    data = prepare(rows, load_tokenizer(config.model.path),
                   dataclasses.replace(config.data, task="sft", shuffle=False, drop_remainder=False, path=""))
    batch = data.collate(data.units)
    return [jnp.asarray(batch[k]) for k in ("input_ids", "positions", "segment_ids")], np.asarray(batch["loss_mask"])


def _log_softmax(model, inputs):
    return np.asarray(jax.nn.log_softmax(model(*inputs).astype(jnp.float32), axis=-1), np.float64)


def test_kl_to_teacher_equals_a_full_logits_computation(eval_run, tiny_models):
    """KL(teacher || student) per response token of the teacher's samples, from the full distributions."""
    config, results, _, out = eval_run
    rows = [{"prompt": [{"role": "user", "content": s["prompt"]}],
             "response": [{"role": "assistant", "content": s["teacher"]}]} for s in _samples(out)]
    inputs, loss_mask = _sft_batch(config, rows)
    lt, ls = _log_softmax(load_model(tiny_models[0]), inputs), _log_softmax(load_model(tiny_models[1]), inputs)
    kl = (np.exp(lt) * (lt - ls)).sum(-1)[:, :-1]  # position t predicts token t + 1
    mask = loss_mask[:, 1:]
    expected = float((kl * mask).sum() / mask.sum())
    assert expected > 1e-4
    assert results["models"]["student"]["kl_to_teacher"] == pytest.approx(expected, rel=1e-4)


def test_teacher_logp_of_policy_samples_equals_a_full_logits_computation(eval_run, tiny_models):
    config, results, _, out = eval_run
    rows = [{"prompt": [{"role": "user", "content": s["prompt"]}],
             "response": [{"role": "assistant", "content": s["student"]}]} for s in _samples(out)]
    inputs, loss_mask = _sft_batch(config, rows)
    lt = _log_softmax(load_model(tiny_models[0]), inputs)
    token = np.take_along_axis(lt[:, :-1], np.asarray(inputs[0])[:, 1:, None], axis=-1)[..., 0]
    mask = loss_mask[:, 1:]
    expected = float((token * mask).sum() / mask.sum())
    assert results["models"]["student"]["teacher_logp_per_token"] == pytest.approx(expected, rel=1e-5)


def test_an_empty_sample_loses_to_a_non_empty_one_without_the_judge(eval_run, judge_folder):
    from jaxalign.pipeline.evaluate import Evaluator

    config = eval_run[0]
    evaluator = Evaluator(config)
    judge = evaluator._load(config.eval.judge, "eval.judge", head="score")
    prompt = [{"role": "user", "content": "q?"}]
    say = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    rows = [{"prompt": prompt, "chosen": say(""), "rejected": say("an answer")},
            {"prompt": prompt, "chosen": say("an answer"), "rejected": say(" ")},
            {"prompt": prompt, "chosen": say(""), "rejected": say("")},
            {"prompt": prompt, "chosen": say("one answer"), "rejected": say("another")}]
    margins = evaluator.judge_margins(judge, rows)
    assert margins[0] == -np.inf and margins[1] == np.inf and margins[2] == 0.0
    assert np.isfinite(margins[3]) and margins[3] != 0.0  # scored by the judge
