"""``jaxalign pipeline``: a tiny prune -> generate -> score -> train -> eval recipe end to end, then skipped."""

import json
import textwrap

import pytest

from jaxalign.config.schema import ConfigError
from jaxalign.pipeline.evaluate import METRICS
from jaxalign.pipeline.runner import run_pipeline
from tests.pipeline.test_generate import subprocess_env  # noqa: F401 (fixture: cheaper compiles)

STAGES = ["prune", "generate", "score", "train", "eval"]


def _recipe(tmp_path, teacher, prompts, *, train_overrides='["data.path=${score.output}"]'):
    root = tmp_path / "job"
    text = textwrap.dedent(f"""\
        model:
          path: ${{prune.output}}            # the pruned student: policy and reference
        teacher:
          path: {teacher}
        loss:
          name: dadpo
          beta_ref: 0.1
          beta_teacher: 0.1
        data:
          batch_size: 4
          max_length: 64
          max_prompt_length: 40
          buckets: [64]
        optimizer:
          lr: 1.0e-3
          schedule: constant
        train:
          steps: 2
          log_every: 1
          output_dir: {root}/run
        mesh:
          data: 1
        checkpoint:
          async_save: false
        logging:
          progress_bar: false
          tensorboard: false
          plot: false
        prune:
          output: {root}/student
          fraction: 0.34
        generate:
          prompts: {prompts}
          output: {root}/pairs.jsonl
          mode: pairs
          max_new_tokens: 8
          batch_size: 4
        score:
          input: ${{generate.output}}
          output: {root}/scored.jsonl
          reference_logps: true
          teacher_logps: true
        eval:
          prompts: {prompts}
          limit: 4
          max_new_tokens: 8
          models:
            - {{name: pruned, path: "${{prune.output}}"}}
            - {{name: dadpo, path: "${{train.output_dir}}/hf"}}
        pipeline:
          stages:
            - {{run: prune}}
            - {{name: pairs, run: generate}}
            - {{run: score}}
            - {{run: train, overrides: {train_overrides}}}
            - {{run: eval}}
        """)
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path, root


@pytest.fixture(scope="module")
def job(tiny_models, prompts_file, tmp_path_factory):
    """The recipe run twice: (root, first result, second result, stage records reported on the way,
    the first run's report text)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    recipe, root = _recipe(tmp, tiny_models[0], prompts_file)
    seen = []
    first = run_pipeline(str(recipe), on_stage=seen.append)
    report = first.report.read_text()  # the second run writes its own report to the same path
    second = run_pipeline(str(recipe))
    return root, first, second, seen, report


def test_every_stage_runs_and_writes_its_output(job):
    root, first, _, seen, _ = job
    assert not first.interrupted
    assert [(r.name, r.run, r.status) for r in first.stages] == [
        ("prune", "prune", "ran"), ("pairs", "generate", "ran"), ("score", "score", "ran"), ("train", "train", "ran"),
        ("eval", "eval", "ran")]
    assert seen == first.stages  # on_stage saw each record as it finished
    assert json.loads((root / "student" / "config.json").read_text())["num_hidden_layers"] == 2  # 1 of 3 dropped
    pairs = [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 10
    scored = [json.loads(line) for line in (root / "scored.jsonl").read_text().splitlines()]
    assert len(scored) == 10 and all("teacher_chosen_logps" in r and "ref_chosen_logps" in r for r in scored)
    assert (root / "run" / "hf" / "config.json").is_file()
    assert first.stages[3].detail.startswith("2 steps, final loss ")
    assert set(first.eval_results["models"]) == {"teacher", "pruned", "dadpo"}
    assert json.loads((root / "run" / "eval.json").read_text()) == first.eval_results


def test_report_has_the_stage_table_and_the_eval_table(job):
    root, first, _, _, report = job
    assert first.report == root / "run" / "report.md"
    assert "| stage | run | status | seconds | detail |" in report
    for r in first.stages:
        assert f"| {r.name} | {r.run} | ran | {r.seconds:.1f} | {r.detail} |" in report
    assert "## Evaluation" in report
    assert "| model | " + " | ".join(METRICS[k] for k in ("kl_to_teacher", "teacher_logp_per_token")) + " |" in report
    for name in ("teacher", "pruned", "dadpo"):
        assert f"| {name} | " in report
    assert f"peak host memory (max RSS of this process): {first.peak_rss_mb:.0f} MB" in report


def test_second_run_skips_every_stage(job):
    root, first, second, _, _ = job
    assert [(r.name, r.status) for r in second.stages] == [(r.name, "skipped") for r in first.stages]
    assert second.eval_results == first.eval_results
    assert "| train | train | skipped |" in second.report.read_text()


def test_bad_stage_override_is_refused_before_the_first_stage(tiny_models, prompts_file, tmp_path):
    recipe, root = _recipe(tmp_path, tiny_models[0], prompts_file,
                           train_overrides='["data.path=${score.output}", "loss.betta=0.2"]')
    with pytest.raises(ConfigError, match="loss.betta"):
        run_pipeline(str(recipe))
    assert not root.exists()  # not even the prune stage ran


def test_bad_stage_value_is_refused_before_the_first_stage(tiny_models, prompts_file, tmp_path):
    recipe, root = _recipe(tmp_path, tiny_models[0], prompts_file,
                           train_overrides='["data.path=${score.output}", "optimizer.lr=-1"]')
    with pytest.raises(ConfigError, match="optimizer.lr"):
        run_pipeline(str(recipe))
    assert not root.exists()
