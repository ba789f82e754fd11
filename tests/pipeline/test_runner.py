"""``jaxalign pipeline`` end to end on tiny models: the main job's own recipe (asset:main.yaml, its
``bundled:`` teacher resolved to a tiny stand-in, shrunk only in sizes) runs every stage of the daDPO
paper's protocol (prune -> teacher responses -> dSFT -> pairs -> score -> judge -> daDPO -> eval), then
reruns with every stage skipped, then with only eval rerun; configs/pipeline_dadpo.yaml's settings are
checked before any stage runs."""

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxalign.config.schema import ConfigError
from jaxalign.pipeline.evaluate import METRICS
from jaxalign.pipeline.runner import run_pipeline
from jaxalign.train.trainer import EXPORT_PROVENANCE

RECIPE = str(Path(__file__).parents[2] / "configs" / "pipeline_dadpo.yaml")
MAIN_STAGES = [("prune", "prune"), ("teacher responses", "generate"), ("dSFT", "train"), ("pairs", "generate"),
               ("cache log-probs", "score"), ("judge", "train"), ("daDPO", "train"), ("eval", "eval")]
MAIN_MODELS = ["teacher", "student (pruned)", "student + dSFT", "student + dSFT + daDPO"]
#: asset:main.yaml shrunk in sizes only
MAIN_OVERRIDES = [
    "teacher.dtype=float32", "teacher.param_dtype=float32", "model.dtype=float32", "model.remat=none",
    "data.batch_size=4", "data.max_length=64", "data.max_prompt_length=40", "data.buckets=[64]",
    "train.steps=2", "mesh.data=1", "logging.progress_bar=false", "logging.plot=false", "prune.fraction=0.34",
    "generate.limit=8", "generate.max_new_tokens=8", "generate.batch_size=8", "score.batch_size=8",
    "eval.limit=4", "eval.max_new_tokens=8", "eval.batch_size=4",
]


def _tiny(teacher, prompts) -> list[str]:
    """Overrides that shrink configs/pipeline_dadpo.yaml to tiny float32 models."""
    return [
        f"teacher.path={teacher}", "teacher.dtype=float32", "teacher.param_dtype=float32", "model.dtype=float32",
        "model.remat=none", "data.batch_size=4", "data.max_length=64", "data.max_prompt_length=40", "data.buckets=[64]",
        "train.steps=2", "mesh.data=1", "prune.fraction=0.34", f"generate.prompts={prompts}", f"eval.prompts={prompts}",
    ]


def _weights(folder):
    return {k: v for f in folder.glob("*.safetensors") for k, v in load_file(f).items()}


@pytest.fixture(scope="module")
def job(tiny_models, tmp_path_factory):
    """asset:main.yaml on tiny models, run three times from a scratch directory (its outputs are relative):
    (root, first result, second result, stage records reported on the way, first report text, third result)."""
    from jaxalign.models import bundled

    tmp = tmp_path_factory.mktemp("pipeline")
    seen = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(bundled.BUNDLED, "smollm2-135m-instruct", lambda: tiny_models[0])
        mp.chdir(tmp)
        first = run_pipeline("asset:main.yaml", MAIN_OVERRIDES, on_stage=seen.append)
        report = first.report.read_text()  # the second run writes its own report to the same path
        second = run_pipeline("asset:main.yaml", MAIN_OVERRIDES)
        third = run_pipeline("asset:main.yaml", [*MAIN_OVERRIDES, "eval.temperature=0.5"])  # only eval depends on it
    return tmp / "runs" / "main", first, second, seen, report, third


def test_every_stage_runs_and_writes_its_output(job):
    root, first, _, seen, _, _ = job
    assert not first.interrupted
    assert [(r.name, r.run, r.status) for r in first.stages] == [(name, run, "ran") for name, run in MAIN_STAGES]
    assert seen == first.stages  # on_stage saw each record as it finished
    assert first.stages[6].detail.startswith("2 steps, final loss ")
    assert list(first.eval_results["models"]) == MAIN_MODELS
    # the third run (another eval.temperature) moved the first run's eval.json aside
    assert json.loads((root / "eval.json.replaced-1").read_text()) == first.eval_results


def test_main_recipe_follows_the_paper_protocol(job, tiny_models):
    """prune -> teacher responses -> dSFT of the pruned student on them -> pairs (new teacher sample vs
    dSFT-student sample) -> reference (= dSFT student) and teacher log-probs -> judge (only its scalar
    head trains) -> daDPO from the dSFT student -> eval of the pruned, dSFT and daDPO students."""
    from jaxalign.train.trainer import EXPORT_PROVENANCE

    root, _, _, _, report, _ = job
    teacher = tiny_models[0]
    assert json.loads((root / "student" / "config.json").read_text())["num_hidden_layers"] == 2  # 1 of 3 dropped

    # dSFT: SFT of the pruned student on the teacher's responses, one epoch
    responses = [json.loads(x) for x in (root / "teacher_responses.jsonl").read_text().splitlines()]
    assert len(responses) == 8 and all(r["model"] == "teacher" and "response" in r for r in responses)
    dsft = json.loads((root / "dsft" / "hf" / EXPORT_PROVENANCE).read_text())
    assert dsft["config"]["loss.name"] == "sft" and dsft["config"]["model.path"] == "runs/main/student"
    assert dsft["config"]["data.path"] == "runs/main/teacher_responses.jsonl" and dsft["steps"] == 2  # 8 rows / 4
    pruned, dsft_weights = _weights(root / "student"), _weights(root / "dsft" / "hf")
    assert any(not np.array_equal(pruned[k], dsft_weights[k]) for k in pruned)

    # pairs: chosen = a new teacher sample, rejected = a sample of the dSFT student; reference = dSFT student
    pairs = [json.loads(x) for x in (root / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 8 and {(r["chosen_model"], r["rejected_model"]) for r in pairs} == {("teacher", "student")}
    by_prompt = {r["prompt_id"]: r["response"] for r in responses}
    assert any(r["chosen"] != by_prompt[r["prompt_id"]] for r in pairs)  # sampled anew, not the dSFT data
    pairs_record = json.loads((root / "pairs.jsonl.provenance.json").read_text())
    score_record = json.loads((root / "pairs_scored.jsonl.provenance.json").read_text())
    from jaxalign.config.schema import ModelSpec
    from jaxalign.train.provenance import spec_fingerprint

    dsft_print = spec_fingerprint(ModelSpec(path=str(root / "dsft" / "hf")))
    assert pairs_record["model[student]"] == dsft_print and score_record["reference"] == dsft_print
    scored = [json.loads(x) for x in (root / "pairs_scored.jsonl").read_text().splitlines()]
    assert scored and all("teacher_chosen_logps" in r and "ref_rejected_logps" in r for r in scored)

    # daDPO starts from the dSFT student (its reference) on the scored pairs
    dadpo = json.loads((root / "hf" / EXPORT_PROVENANCE).read_text())
    assert dadpo["config"]["loss.name"] == "dadpo" and dadpo["config"]["model.path"] == "runs/main/dsft/hf"
    assert dadpo["config"]["data.path"] == "runs/main/pairs_scored.jsonl" and dadpo["steps"] == 2
    # the judge: the teacher's backbone, bit-identical, with a trained scalar head
    src, judge = _weights(teacher), _weights(root / "judge" / "hf")
    backbone = [k for k in judge if k in src]
    assert backbone and any("score" in k for k in judge if k not in src)
    for k in backbone:
        np.testing.assert_array_equal(judge[k], src[k], err_msg=k)
    evaluated = json.loads((root / "eval.json.replaced-1").read_text())
    assert list(evaluated["models"]) == MAIN_MODELS
    assert all(0 <= m["win_rate_vs_teacher"] <= 1 for m in evaluated["models"].values())
    assert all(f"| {name} | {run} | ran |" in report for name, run in MAIN_STAGES) and "student + dSFT + daDPO" in report


def test_report_has_the_stage_table_and_the_eval_table(job):
    root, first, _, _, report, _ = job
    assert first.report.name == "report.md" and (root / "report.md").read_text() != ""
    assert "| stage | run | status | seconds | detail |" in report
    for r in first.stages:
        assert f"| {r.name} | {r.run} | ran | {r.seconds:.1f} | {r.detail} |" in report
    assert "## Evaluation" in report
    assert "| model | " + " | ".join(METRICS[k] for k in ("kl_to_teacher", "teacher_logp_per_token")) + " |" in report
    for name in MAIN_MODELS:
        assert f"| {name} | " in report
    assert f"peak host memory (max RSS of this process): {first.peak_rss_mb:.0f} MB" in report


def test_second_run_skips_every_stage(job):
    root, first, second, _, _, _ = job
    assert [(r.name, r.status) for r in second.stages] == [(r.name, "skipped") for r in first.stages]
    assert second.eval_results == first.eval_results
    assert "| daDPO | train | skipped |" in (root / "report.md").read_text()


def test_a_changed_setting_reruns_only_the_stages_that_depend_on_it(job):
    root, first, _, _, _, third = job
    assert [(r.name, r.status) for r in third.stages] == [(r.name, "skipped") for r in first.stages[:-1]] + [("eval", "ran")]
    assert third.stages[-1].detail.startswith("rerun because eval.temperature: 0.7 -> 0.5; previous output moved to eval.json.replaced-1")
    assert (root / "eval.json.replaced-1").is_file() and json.loads((root / "eval.json").read_text())["temperature"] == 0.5


def _train_only_recipe(tmp_path):
    from tests.train.conftest import synthetic_preferences, write_jsonl
    from tests.conftest import _byte_tokenizer

    _byte_tokenizer().save_pretrained(tmp_path / "tok")
    data = write_jsonl(tmp_path / "prefs.jsonl", synthetic_preferences(16, 0))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""
model: {{preset: tiny, tokenizer: {tmp_path / 'tok'}}}
data: {{path: {data}, batch_size: 4, max_length: 64, max_prompt_length: 32, buckets: [64]}}
optimizer: {{lr: 1.0e-3, schedule: constant}}
train: {{steps: 2, log_every: 1, output_dir: {tmp_path / 'run'}}}
mesh: {{data: 1}}
checkpoint: {{async_save: false}}
logging: {{tensorboard: false, progress_bar: false, plot: false}}
pipeline: {{stages: [{{name: dpo, run: train}}], report: {tmp_path / 'report.md'}}}
""")
    return str(recipe)


def test_train_stage_skips_only_a_matching_export_resumes_more_steps_and_reruns_a_change(tmp_path):
    recipe = _train_only_recipe(tmp_path)
    stage = lambda *o: run_pipeline(recipe, list(o)).stages[0]  # noqa: E731
    assert stage().status == "ran"
    assert stage().status == "skipped"
    longer = stage("train.steps=3")
    assert longer.status == "ran" and longer.detail.startswith("resumed: train.steps 2 -> 3; 3 steps")
    changed = stage("train.steps=3", "loss.beta=0.3")
    assert changed.status == "ran" and changed.detail.startswith("rerun because loss.beta: 0.1 -> 0.3; previous run moved to")
    assert (tmp_path / "run" / "checkpoints.replaced-1").is_dir() and (tmp_path / "run" / "hf.replaced-1").is_dir()
    assert stage("train.steps=3", "loss.beta=0.3").status == "skipped"
    # an export written before jaxalign had a setting (here loss.average_logps) matches at that setting's default
    record = tmp_path / "run" / "hf" / EXPORT_PROVENANCE
    old = json.loads(record.read_text())
    del old["config"]["loss.average_logps"]
    record.write_text(json.dumps(old))
    assert stage("train.steps=3", "loss.beta=0.3").status == "skipped"
    assert stage("train.steps=3", "loss.beta=0.3", "loss.average_logps=true").status == "ran"


def test_bad_key_is_refused_before_the_first_stage(tiny_models, prompts_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="loss.betta"):
        run_pipeline(RECIPE, [*_tiny(tiny_models[0], prompts_file), "loss.betta=0.2"])
    assert not (tmp_path / "runs").exists()  # not even the prune stage ran


def test_a_later_stage_s_bad_value_is_refused_before_the_first_stage(tiny_models, prompts_file, tmp_path, monkeypatch):
    # the dSFT stage sets its own lr; the daDPO stage inherits this one
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="optimizer.lr"):
        run_pipeline(RECIPE, [*_tiny(tiny_models[0], prompts_file), "optimizer.lr=-1"])
    assert not (tmp_path / "runs").exists()


def test_stages_are_dispatched_from_the_registry(monkeypatch):
    from jaxalign.config.schema import STAGES as KINDS
    from jaxalign.pipeline import runner

    assert tuple(runner.STAGE_RUNNERS) == tuple(KINDS)  # every kind the config accepts has a runner, in the same order
    seen = []
    monkeypatch.setitem(runner.STAGE_RUNNERS, "eval", lambda config: seen.append(config) or ("skipped", "recorded"))
    assert runner._stage("cfg", "eval") == ("skipped", "recorded") and seen == ["cfg"]
    with pytest.raises(ConfigError, match=r"run='distil' is not one of prune, train, generate, score, eval"):
        runner._stage("cfg", "distil")
