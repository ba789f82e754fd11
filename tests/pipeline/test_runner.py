"""``jaxalign pipeline``: the shipped configs/pipeline_dadpo.yaml (prune -> teacher data -> dSFT -> pairs -> score ->
daDPO -> eval) on tiny models end to end, then rerun with every stage skipped."""

import json
from pathlib import Path

import pytest

from jaxalign.config.schema import ConfigError
from jaxalign.pipeline.evaluate import METRICS
from jaxalign.pipeline.runner import run_pipeline

RECIPE = str(Path(__file__).parents[2] / "configs" / "pipeline_dadpo.yaml")
STAGES = [("prune", "prune"), ("teacher data", "generate"), ("dSFT", "train"), ("pairs", "generate"),
          ("score", "score"), ("daDPO", "train"), ("eval", "eval")]


def _tiny(teacher, prompts) -> list[str]:
    """Overrides that shrink the shipped recipe to tiny float32 models, 2 steps and 8 new tokens."""
    return [
        f"teacher.path={teacher}", "teacher.dtype=float32", "teacher.param_dtype=float32", "model.dtype=float32",
        "model.remat=none", "data.batch_size=4", "data.max_length=64", "data.max_prompt_length=40", "data.buckets=[64]",
        "optimizer.lr=1e-3", "optimizer.warmup_steps=0", "train.epochs=0", "train.steps=2", "train.log_every=1",
        "mesh.data=1", "checkpoint.async_save=false", "logging.progress_bar=false", "logging.tensorboard=false",
        "logging.plot=false", "prune.fraction=0.34", f"generate.prompts={prompts}", "generate.max_new_tokens=8",
        "generate.batch_size=4", "generate.top_p=1.0", f"eval.prompts={prompts}", "eval.limit=4", "eval.max_new_tokens=8",
    ]


@pytest.fixture(scope="module")
def job(tiny_models, prompts_file, tmp_path_factory):
    """configs/pipeline_dadpo.yaml on tiny models, run twice from a scratch directory (its outputs are
    relative): (root, first result, second result, stage records reported on the way, first report text)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    overrides = _tiny(tiny_models[0], prompts_file)
    seen = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        first = run_pipeline(RECIPE, overrides, on_stage=seen.append)
        report = first.report.read_text()  # the second run writes its own report to the same path
        second = run_pipeline(RECIPE, overrides)
        third = run_pipeline(RECIPE, [*overrides, "eval.temperature=0.5"])  # only what eval depends on changed
    return tmp / "runs" / "pipeline_dadpo", first, second, seen, report, third


def test_every_stage_runs_and_writes_its_output(job):
    root, first, _, seen, _, _ = job
    assert not first.interrupted
    assert [(r.name, r.run, r.status) for r in first.stages] == [(name, run, "ran") for name, run in STAGES]
    assert seen == first.stages  # on_stage saw each record as it finished
    assert json.loads((root / "student" / "config.json").read_text())["num_hidden_layers"] == 2  # 1 of 3 dropped
    sft = [json.loads(line) for line in (root / "teacher_responses.jsonl").read_text().splitlines()]
    assert len(sft) == 10 and all({"prompt", "response"} <= set(r) for r in sft)
    assert (root / "dsft" / "hf" / "config.json").is_file()
    pairs = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 10
    scored = [json.loads(line) for line in (root / "pairs_scored.jsonl").read_text().splitlines()]
    assert len(scored) == 10 and all("teacher_chosen_logps" in r and "ref_chosen_logps" in r for r in scored)
    assert (root / "dadpo" / "hf" / "config.json").is_file()
    assert first.stages[5].detail.startswith("2 steps, final loss ")
    assert set(first.eval_results["models"]) == {"teacher", "pruned", "dSFT", "daDPO"}
    # the third run (another eval.temperature) moved the first run's eval.json aside
    assert json.loads((root / "eval.json.replaced-1").read_text()) == first.eval_results


def test_report_has_the_stage_table_and_the_eval_table(job):
    root, first, _, _, report, _ = job
    assert first.report.name == "report.md" and (root / "report.md").read_text() != ""
    assert "| stage | run | status | seconds | detail |" in report
    for r in first.stages:
        assert f"| {r.name} | {r.run} | ran | {r.seconds:.1f} | {r.detail} |" in report
    assert "## Evaluation" in report
    assert "| model | " + " | ".join(METRICS[k] for k in ("kl_to_teacher", "teacher_logp_per_token")) + " |" in report
    for name in ("teacher", "pruned", "dSFT", "daDPO"):
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
    monkeypatch.setitem(runner.STAGE_RUNNERS, "eval", lambda config: seen.append(config) or ("skipped", "stub"))
    assert runner._stage("cfg", "eval") == ("skipped", "stub") and seen == ["cfg"]
    with pytest.raises(ConfigError, match=r"run='distil' is not one of prune, train, generate, score, eval"):
        runner._stage("cfg", "distil")
