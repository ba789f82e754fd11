"""The pure pieces of ``benchmarks/reproduce_distillation.py`` (the dDPO vs daDPO study), against NumPy /
SciPy oracles, and its reliance on the main recipe: every output of main.yaml's data stages moves under the
study's folder and the stages it runs exist, in order. The script is imported from its file by path."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce_distillation.py"


@pytest.fixture(scope="module")
def study():
    name = "reproduce_distillation_benchmark"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve the module's annotations through sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]


def _strings(tree):
    if isinstance(tree, dict):
        for v in tree.values():
            yield from _strings(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _strings(v)
    elif isinstance(tree, str):
        yield tree


def test_main_recipe_relocates_under_the_study_folder(study):
    from jaxalign.pipeline.rows import asset_path

    recipe = yaml.safe_load(asset_path("main.yaml").read_text())
    names = [st["name"] for st in recipe["pipeline"]["stages"]]
    assert names[: len(study.DATA_STAGES)] == list(study.DATA_STAGES)
    moved = study.relocate(recipe, "/w/data")
    paths = [s for s in _strings(moved) if "runs/" in s or "/w/data" in s]
    assert paths and not any("runs/main" in s for s in paths)
    assert any("model.path=/w/data/student" in s for s in paths)  # dSFT starts from the pruned student
    assert moved["model"]["path"] == "/w/data/dsft/hf" and moved["score"]["output"] == "/w/data/pairs_scored.jsonl"


def test_beta_teacher_grid_puts_median_abs_z_at_the_targets(study):
    rng = np.random.default_rng(0)
    gap = rng.normal(110.0, 20.0, size=257)  # Δte − Δref, nats
    grid, why = study.choose_beta_teacher(gap, fixed=[0.1], z_targets=[1.0, 2.0])
    assert 0.1 in grid and len(grid) == 3 and grid == sorted(grid)
    med = np.median(np.abs(gap))
    for target in (1.0, 2.0):
        beta = min(grid, key=lambda b: abs(b - target / med))
        assert np.median(np.abs(beta * gap)) == pytest.approx(target, rel=0.03)  # 2 significant digits
        assert f"median |z| target {target:g}" in why
    assert f"median |.| {med:.1f}" in why
    with pytest.raises(ValueError, match="no scored pairs"):
        study.choose_beta_teacher(np.array([]), [0.1], [1.0])


def test_checkpoint_steps(study):
    size = study.Size(epochs=3, evals_per_epoch=2, batch_size=8)
    assert study.checkpoint_steps(256, size) == [16, 32, 48, 64, 80, 96]
    assert study.checkpoint_steps(250, size) == [15, 31, 46, 62, 77, 93]  # 31 steps per epoch (drop remainder)
    with pytest.raises(ValueError, match="fewer than one batch"):
        study.checkpoint_steps(7, size)


def test_distinct2(study):
    assert study.distinct_n([[1, 2, 3], [1, 2, 4]], 2) == pytest.approx(3 / 4)  # (1,2) twice, (2,3), (2,4)
    assert study.distinct_n([[5], []], 2) == 0.0
    assert study.distinct_n([[7, 7, 7, 7]], 2) == pytest.approx(1 / 3)


def test_probe_measures_against_numpy(study):
    rng = np.random.default_rng(1)
    pc, pr, rc, rr, tc, tr = (rng.normal(-40, 8, size=16) for _ in range(6))
    b1, b2 = 0.1, 0.02
    got = study.probe_measures(pc, pr, rc, rr, tc, tr, b1, b2)
    z = b1 * ((pc - pr) - (rc - rr)) + b2 * ((pc - pr) - (tc - tr))
    assert got["sigma_neg_z"] == pytest.approx(np.mean(1 / (1 + np.exp(z))), rel=1e-12)
    assert got["margin_minus_teacher"] == pytest.approx(np.mean((pc - pr) - (tc - tr)))
    assert got["logp_chosen"] == pytest.approx(pc.mean()) and got["logp_rejected"] == pytest.approx(pr.mean())
    assert got["corr_margin_teacher"] == pytest.approx(np.corrcoef(pc - pr, tc - tr)[0, 1])
    # at step 0 (policy = reference) dDPO weighs every pair 1/2; daDPO σ(−β₂(Δref − Δte))
    assert study.probe_measures(rc, rr, rc, rr, tc, tr, b1, 0.0)["sigma_neg_z"] == pytest.approx(0.5)
    start = study.probe_measures(rc, rr, rc, rr, tc, tr, b1, b2)["sigma_neg_z"]
    assert start == pytest.approx(np.mean(1 / (1 + np.exp(b2 * ((rc - rr) - (tc - tr))))))


def test_probe_measures_per_token(study):
    """`lengths` (the averaged-log-prob method): every log-prob divided by its response length first."""
    rng = np.random.default_rng(2)
    logps = [rng.normal(-40, 8, size=16) for _ in range(6)]
    lc, lr = rng.integers(1, 17, 16), rng.integers(1, 17, 16)
    got = study.probe_measures(*logps, 1.6, 0.0, (lc, lr))
    pc, pr, rc, rr, tc, tr = logps
    want = study.probe_measures(pc / lc, pr / lr, rc / lc, rr / lr, tc / lc, tr / lr, 1.6, 0.0)
    assert got == pytest.approx(want, rel=1e-12)
    z = 1.6 * ((pc / lc - pr / lr) - (rc / lc - rr / lr))
    assert got["sigma_neg_z"] == pytest.approx(np.mean(1 / (1 + np.exp(z))), rel=1e-12)


def test_average_logps_method_runs_its_own_seeds(study, tmp_path):
    size = study.Size(train_prompts=16, seeds=3, max_new_tokens=16, average_logps_seeds=1)
    s = study.Study(size, tmp_path, None, [])
    methods = s.methods({"beta": 0.1, "beta_teacher": [0.1]})
    assert methods["ddpo-avg"]["overrides"] == ["loss.name=dpo", "loss.beta=1.6", "loss.average_logps=true"]
    assert list(s.seeds_of(methods["ddpo-avg"])) == [0] and list(s.seeds_of(methods["ddpo"])) == [0, 1, 2]


def test_paired_interval_matches_scipy(study):
    from scipy import stats

    a, b = np.array([1.95, 2.01, 1.90]), np.array([1.99, 2.02, 1.97])
    got = study.paired_interval(a, b)
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert got["mean"] == pytest.approx(np.mean(a - b))
    assert (got["low"], got["high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert got["n"] == 3


def _record(model, seed, step, kl, probe):
    return {"model": model, "seed": seed, "step": step, "kl_to_teacher": kl, "teacher_logp_per_token": -2.0 - kl,
            "length": 20.0, "distinct2": 0.8, "probe": probe}


def test_summarise_pairs_methods_by_seed(study):
    probe = {"policy_chosen": [-10.0, -12.0], "policy_rejected": [-20.0, -18.0], "ref_chosen_logps": [-11.0, -12.0],
             "ref_rejected_logps": [-19.0, -19.0], "teacher_chosen_logps": [-5.0, -6.0], "teacher_rejected_logps": [-30.0, -25.0]}
    methods = {"ddpo": {"beta_ref": 0.1, "beta_teacher": 0.0}, "dadpo-0.01": {"beta_ref": 0.1, "beta_teacher": 0.01}}
    kl = {("ddpo", 0): 1.9, ("ddpo", 1): 2.0, ("ddpo", 2): 1.95, ("dadpo-0.01", 0): 1.8, ("dadpo-0.01", 1): 1.95,
          ("dadpo-0.01", 2): 1.85}
    records = [_record("dsft", s, 0, 2.1, probe) for s in range(3)] + [_record("pruned", s, 0, 2.3, probe) for s in range(3)]
    records += [_record(m, s, 4, v, probe) for (m, s), v in kl.items()]
    out = study.summarise(records, methods, {"steps_per_epoch": 4})
    rows = {(r["method"], r["step"]): r for r in out["table"]}
    assert set(rows) == {("pruned", 0), ("ddpo", 0), ("ddpo", 4), ("dadpo-0.01", 0), ("dadpo-0.01", 4)}
    assert "sigma_neg_z" not in rows["pruned", 0]  # training-pair measures only for methods
    assert rows["ddpo", 0]["kl_to_teacher"]["mean"] == pytest.approx(2.1)  # step 0 = the dSFT student
    assert rows["ddpo", 4]["kl_to_teacher"]["sd"] == pytest.approx(np.std([1.9, 2.0, 1.95], ddof=1))
    assert rows["ddpo", 4]["epoch"] == 1.0
    (paired,) = out["paired_vs_ddpo"]
    d = np.array([1.8, 1.95, 1.85]) - np.array([1.9, 2.0, 1.95])
    assert paired["kl_to_teacher"]["mean"] == pytest.approx(d.mean())
    assert paired["kl_to_teacher"]["high"] - paired["kl_to_teacher"]["mean"] == pytest.approx(
        4.302652729911275 * d.std(ddof=1) / np.sqrt(3), rel=1e-6)
    md = study.markdown(out, {"beta": 0.1, "beta_teacher": [0.01], "why": "x", "usable_pairs": 8, "steps_per_epoch": 4},
                        study.Size(), None)
    assert "| dadpo-0.01 − ddpo | 4 | 1.00 |" in md


def test_a_one_seed_difference_is_shown_without_an_interval(study):
    one = study.paired_interval([1.8], [1.9])
    assert study._ci(one) == "-0.1000 (1 seed)"
    assert study._ci(study.paired_interval([1.8, 1.95], [1.9, 2.0])).startswith("-0.0750 [")


def test_report_writes_the_results_of_the_finished_units(study, tmp_path):
    size = ["--train-prompts", "16", "--seeds", "2", "--epochs", "1", "--evals-per-epoch", "1",
            "--average-logps-seeds", "0"]
    with pytest.raises(SystemExit, match="nothing to report"):
        study.main(["--report", "--work", str(tmp_path), *size])
    s = study.Study(study.Size(train_prompts=16, seeds=2, epochs=1, evals_per_epoch=1, average_logps_seeds=0),
                    tmp_path, None, [])
    (s.data / "dsft" / "hf").mkdir(parents=True)
    (s.data / "dsft" / "hf" / "config.json").write_text("{}")
    s.scored.write_text("{}\n")
    plan = {"beta": 0.1, "beta_teacher": [0.01], "why": "x", "pairs": 16, "usable_pairs": 16, "steps_per_epoch": 2,
            "data": s._data_fingerprints()}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    probe = {"rows": [0], "policy_chosen": [-10.0], "policy_rejected": [-20.0], "ref_chosen_logps": [-11.0],
             "ref_rejected_logps": [-19.0], "teacher_chosen_logps": [-5.0], "teacher_rejected_logps": [-30.0]}
    # seed 0 finished its one checkpoint (step 2) for both methods; seed 1 only its dSFT evaluation
    done = [("dsft", 0, 0), ("dsft", 1, 0), ("ddpo", 0, 2), ("dadpo-0.01", 0, 2)]
    for i, (model, seed, step) in enumerate(done):
        s.eval_path(model, seed, step).parent.mkdir(parents=True, exist_ok=True)
        s.eval_path(model, seed, step).write_text(json.dumps(_record(model, seed, step, 2.0 - 0.1 * i, probe)))
    study.main(["--report", "--work", str(tmp_path), *size])
    results = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["method"], r["step"]): r["kl_to_teacher"] for r in results["table"]}
    assert rows["ddpo", 0]["seeds"] == 2 and rows["ddpo", 2] == {"mean": pytest.approx(1.8), "sd": 0.0, "seeds": 1}
    md = (tmp_path / "results.md").read_text()
    assert "| dadpo-0.01 − ddpo | 2 | 1.00 | -0.1000 (1 seed) |" in md
    assert "(results_paired_vs_ddpo.png)" in md and (tmp_path / "results_paired_vs_ddpo.png").is_file()
    assert not (tmp_path / "train").exists()  # nothing trained


def test_rerun_refuses_other_settings_but_may_extend(study, tmp_path):
    size = study.Size(train_prompts=16, seeds=2, epochs=1)
    first = study.Study(size, tmp_path, None, ["prune.fraction=0.3"])
    recipe = yaml.safe_load(first.recipe.read_text())
    assert recipe["prune"]["output"] == f"{tmp_path / 'data'}/student"
    study.Study(study.Size(train_prompts=16, seeds=3, epochs=4), tmp_path, None, ["prune.fraction=0.3"])  # more units
    with pytest.raises(SystemExit, match="other settings"):
        study.Study(study.Size(train_prompts=16, seeds=2, epochs=1, lr=1e-5), tmp_path, None, ["prune.fraction=0.3"])
    with pytest.raises(SystemExit, match="other settings"):
        study.Study(size, tmp_path, None, [])


def test_units_left_skips_finished_units(study, tmp_path):
    size = study.Size(train_prompts=16, heldout_prompts=8, probe_pairs=8, seeds=1, epochs=2, evals_per_epoch=1,
                      average_logps_seeds=0)
    s = study.Study(size, tmp_path, None, [])
    plan = {"beta": 0.1, "beta_teacher": [0.1], "usable_pairs": 16, "steps_per_epoch": 2,
            "checkpoints": study.checkpoint_steps(16, size)}
    assert plan["checkpoints"] == [2, 4]
    assert s.units_left(plan) == {"heldout teacher": 1, "eval": 2 + 2 * 2, "train step": 2 * 4, "segment": 2 * 2}
    for model, step in [("pruned", 0), ("dsft", 0), ("ddpo", 2), ("ddpo", 4), ("dadpo-0.1", 2)]:
        s.eval_path(model, 0, step).parent.mkdir(parents=True, exist_ok=True)
        s.eval_path(model, 0, step).write_text("{}")
    (tmp_path / "heldout").mkdir()
    s._teacher_file(0).write_text("{}")
    export = s.run_dir("dadpo-0.1", 0) / "hf"
    export.mkdir(parents=True)
    (export / "jaxalign_provenance.json").write_text(json.dumps({"steps": 2}))
    # dDPO is done; daDPO has its step-2 export evaluated: 2 more steps, one segment, one evaluation
    assert s.units_left(plan) == {"heldout teacher": 0, "eval": 1, "train step": 2, "segment": 1}
