"""The ``score`` stage: cached reference/teacher log-probs, RDO weights, resumption and errors."""

import dataclasses
import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxalign.config import load_config
from jaxalign.data import DataError, prepare
from jaxalign.losses import rdo_weights
from jaxalign.models import load_model, load_tokenizer
from jaxalign.pipeline import score as score_mod
from jaxalign.pipeline.score import run_score
from jaxalign.train import build as build_mod
from jaxalign.train import trainer as trainer_mod
from jaxalign.train.provenance import sidecar_path
from jaxalign.train.trainer import Trainer
from tests.pipeline.conftest import StopAfterFirstBatch, write_jsonl
from tests.pipeline.test_generate import base_overrides, sigterm_then_resume  # noqa: F401 (fixtures)
from tests.train.conftest import synthetic_preferences


def _config(overrides, data, output, *extra, stage="score"):
    return load_config(None, [*overrides, f"score.input={data}", f"score.output={output}", *extra], stage=stage)


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8").read().splitlines() if line.strip()]


def _no_weights(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("model weights were loaded")

    monkeypatch.setattr(score_mod, "build_model", refuse)


@nnx.jit
def _full_logit_logps(model, input_ids, positions, segment_ids, loss_mask):
    """Summed response log-probs from the full [B, T, V] logits: independent of the chunked engine path."""
    logits = model(input_ids, positions, segment_ids)
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, input_ids[:, 1:, None], axis=-1)[..., 0]
    return (tok * loss_mask[:, 1:]).sum(-1)


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("score_data") / "prefs.jsonl", synthetic_preferences(12, 3))


@pytest.fixture(scope="module")
def scored(base_overrides, prefs, tmp_path_factory):
    """prefs scored with the student (= the reference: `reference` unset) and the teacher."""
    out = tmp_path_factory.mktemp("scored") / "scored.jsonl"
    config = _config(base_overrides, prefs, out, "score.teacher_logps=true")
    result = run_score(config)
    return config, result, _rows(out)


def test_scored_file_keeps_the_rows_and_adds_the_columns(scored, prefs):
    _, result, rows = scored
    assert (result.rows, result.new_rows, result.interrupted) == (12, 12, False)
    assert result.columns == ["ref_chosen_logps", "ref_rejected_logps", "teacher_chosen_logps", "teacher_rejected_logps"]
    source = _rows(prefs)
    assert len(rows) == 12
    for row, src in zip(rows, source):
        assert {k: row[k] for k in src} == src
        assert set(row) == set(src) | set(result.columns)
        assert all(math.isfinite(row[c]) and row[c] < 0 for c in result.columns)
    assert not (result.output.parent / (result.output.name + ".partial.jsonl")).exists()


@pytest.mark.parametrize("which, folder", [("ref", 1), ("teacher", 0)])
def test_logp_columns_equal_the_training_log_probs(scored, base_overrides, prefs, tiny_models, which, folder):
    """The columns are the summed response log-probs of the rows tokenised as training tokenises them."""
    _, _, rows = scored
    train_cfg = load_config(None, [*base_overrides, f"data.path={prefs}", "loss.name=dadpo"], stage="train")
    tokenizer = load_tokenizer(tiny_models[1])
    data = prepare(str(prefs), tokenizer, dataclasses.replace(train_cfg.data, shuffle=False))
    batch = data.collate(data.units)
    model = load_model(tiny_models[folder])
    keys = ("input_ids", "positions", "segment_ids", "loss_mask")
    got = {side: np.asarray(_full_logit_logps(model, *(jnp.asarray(batch[f"{side}_{k}"]) for k in keys)))
           for side in ("chosen", "rejected")}
    for j, row_id in enumerate(batch["row_id"][:, 0]):
        for side in ("chosen", "rejected"):
            assert rows[row_id][f"{which}_{side}_logps"] == pytest.approx(float(got[side][j]), abs=2e-4)


def test_training_on_the_scored_file_loads_neither_reference_nor_teacher(scored, base_overrides, tmp_path, monkeypatch):
    """daDPO on the scored rows: only the policy is built, and the first loss is the one the cached
    columns give (policy = student = reference at step 0, so only the teacher term is non-zero)."""
    _, result, rows = scored
    built = []
    real_build = trainer_mod.build_model

    def recording_build(spec, *, key, **kwargs):
        built.append(key)
        return real_build(spec, key=key, **kwargs)

    for module in (trainer_mod, build_mod):  # the policy is built by train.build, frozen models by the trainer
        monkeypatch.setattr(module, "build_model", recording_build)
    train_cfg = load_config(None, [*base_overrides, f"data.path={result.output}", "loss.name=dadpo",
                                   "train.steps=1", f"train.output_dir={tmp_path / 'run'}", "train.export_hf=false",
                                   "optimizer.lr=1e-3", "loss.beta_ref=0.1", "loss.beta_teacher=0.5"], stage="train")
    trainer = Trainer(train_cfg)
    assert built == ["model"]
    assert set(trainer.frozen) == set()
    first = next(iter(trainer.data.batcher()))["row_id"].reshape(-1)
    first = [int(r) for r in first if r >= 0]
    z = [0.5 * ((rows[r]["ref_chosen_logps"] - rows[r]["ref_rejected_logps"])
                - (rows[r]["teacher_chosen_logps"] - rows[r]["teacher_rejected_logps"])) for r in first]
    expected = float(np.mean([-math.log(1 / (1 + math.exp(-x))) for x in z]))
    train_result = trainer.run()
    assert train_result.losses[0] == pytest.approx(expected, abs=1e-4)
    assert abs(expected - math.log(2)) > 1e-3  # the teacher columns matter


def test_stale_cached_log_probs_are_refused(scored, base_overrides, tiny_models, tmp_path, monkeypatch):
    """Cached columns made with other data settings or models than the training run are refused before any
    model loads, naming the setting and how to regenerate; the override (and a matching run) go through."""
    _, result, _ = scored
    for module in (trainer_mod, build_mod):
        monkeypatch.setattr(module, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model built")))

    def cfg(*extra):
        return load_config(None, [*base_overrides, f"data.path={result.output}", "loss.name=dadpo", "train.steps=1",
                                  f"train.output_dir={tmp_path / 'run'}", *extra], stage="train")

    with pytest.raises(DataError, match=r"columns ref_chosen_logps.*made with other settings than this run "
                                        r"\(data.max_length: 64 -> 128\); rerun `jaxalign score`.*data.ignore_provenance=true"):
        Trainer(cfg("data.max_length=128", "data.buckets=[128]"))
    with pytest.raises(DataError, match=r"data.truncation: \"keep_end\" -> \"keep_start\""):
        Trainer(cfg("data.truncation=keep_start"))
    with pytest.raises(DataError, match=r"\(teacher: "):
        Trainer(cfg(f"teacher.path={tiny_models[1]}"))
    with pytest.raises(DataError, match=r"\(reference: "):
        Trainer(cfg(f"model.path={tiny_models[0]}", f"teacher.path={tiny_models[0]}"))
    edited = tmp_path / "edited.jsonl"
    edited.write_text(result.output.read_text().replace('"ref_chosen_logps": -', '"ref_chosen_logps": -1'))
    shutil.copy(sidecar_path(result.output), sidecar_path(edited))
    with pytest.raises(DataError, match=r"edited.jsonl changed after `jaxalign score` wrote it"):
        Trainer(cfg(f"data.path={edited}"))
    with pytest.raises(AssertionError, match="model built"):  # past every check: the override is honoured
        Trainer(cfg("data.max_length=128", "data.buckets=[128]", "data.ignore_provenance=true"))
    with pytest.raises(AssertionError, match="model built"):
        Trainer(cfg())


def test_rescoring_into_an_output_made_otherwise_is_refused(scored, base_overrides, prefs, tmp_path, monkeypatch):
    _, result, _ = scored
    out = tmp_path / "scored.jsonl"
    shutil.copy(result.output, out)
    shutil.copy(sidecar_path(result.output), sidecar_path(out))
    _no_weights(monkeypatch)
    assert run_score(_config(base_overrides, prefs, out, "score.teacher_logps=true")).new_rows == 0  # complete, matching
    with pytest.raises(DataError, match=r"score.output=.*scored.jsonl was made with other settings .*data.max_prompt_length: 40 -> 30"):
        run_score(_config(base_overrides, prefs, out, "score.teacher_logps=true", "data.max_prompt_length=30"))
    other = write_jsonl(tmp_path / "other.jsonl", synthetic_preferences(12, 4))
    with pytest.raises(DataError, match=r"\(source: "):
        run_score(_config(base_overrides, other, out, "score.teacher_logps=true"))


# ----------------------------------------------------------------------------- RDO


def test_rdo_weights_from_dataset_scores(base_overrides, tmp_path, monkeypatch):
    scores = [(1.0, 0.5), (0.25, 2.0), (3.0, 3.0), (-1.0, 0.75), (2.5, -0.5), (0.0, 1.25)]
    rows = [{**r, "score_chosen": c, "score_rejected": s} for r, (c, s) in zip(synthetic_preferences(6, 4), scores)]
    data = write_jsonl(tmp_path / "graded.jsonl", rows)
    out = tmp_path / "rdo.jsonl"
    _no_weights(monkeypatch)  # the data's scores need no model
    result = run_score(_config(base_overrides, data, out, "score.reference_logps=false", "score.rdo_weights=true",
                               "loss.rdo.source=dataset", "loss.rdo.temperature=0.5"))
    assert result.columns == ["rdo_difference", "rdo_weight"]
    got = _rows(out)
    gaps = np.asarray([c - s for c, s in scores], np.float32)
    assert [r["rdo_difference"] for r in got] == gaps.tolist()
    expected = np.asarray(rdo_weights(gaps, "sigmoid", 0.5, None, True))
    weights = np.asarray([r["rdo_weight"] for r in got])
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert weights.mean() == pytest.approx(1.0, abs=1e-6)
    assert weights[1] < weights[2] < weights[0]  # ordered by the gap: -1.75 < 0 < 0.5


def _short_pairs(n):
    """Pairs short enough for the pairwise layout (prompt + both responses) within data.max_length=64."""
    return [{"prompt": f"q{i}?", "chosen": f" yes {i}", "rejected": f" no {3 * i}"} for i in range(n)]


def test_difference_model_source_writes_antisymmetric_differences(base_overrides, tiny_models, tmp_path):
    """A causal-LM folder as loss.rdo.model gets a fresh scalar head; swapping chosen and rejected
    negates every difference, and the values are (D(x,a,b) − D(x,b,a)) / 2 of that model."""
    rows = _short_pairs(6)
    swapped = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]
    extra = ["score.reference_logps=false", "score.rdo_weights=true", "loss.rdo.source=difference_model",
             f"loss.rdo.model.path={tiny_models[0]}"]
    outs = {}
    for name, data in (("straight", rows), ("swapped", swapped)):
        outs[name] = tmp_path / f"{name}_scored.jsonl"
        run_score(_config(base_overrides, write_jsonl(tmp_path / f"{name}.jsonl", data), outs[name], *extra))
    d = np.asarray([r["rdo_difference"] for r in _rows(outs["straight"])])
    d_swapped = np.asarray([r["rdo_difference"] for r in _rows(outs["swapped"])])
    assert np.all(np.abs(d) > 1e-7), d
    np.testing.assert_allclose(d_swapped, -d, rtol=1e-5, atol=1e-7)
    weights = np.asarray([r["rdo_weight"] for r in _rows(outs["straight"])])
    np.testing.assert_allclose(weights, np.asarray(rdo_weights(d.astype(np.float32))), rtol=1e-5)

    # the differences are those of the loaded scalar-head model on the pairwise layout
    config = load_config(None, [*base_overrides, "loss.name=difference_model", "data.path=x"], stage="train")
    data = prepare(rows, load_tokenizer(tiny_models[0]), dataclasses.replace(config.data, shuffle=False))
    batch = {k: jnp.asarray(v) for k, v in data.collate(data.units).items()}
    judge = load_model(tiny_models[0], head="score")
    fwd, bwd = (np.asarray(judge(batch[f"{o}_input_ids"], batch[f"{o}_positions"], batch[f"{o}_segment_ids"],
                                 batch[f"{o}_last_index"])) for o in ("fwd", "bwd"))
    np.testing.assert_allclose(d[np.asarray(batch["row_id"])[:, 0]], (fwd - bwd) / 2, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- resumption


def test_sigterm_stops_cleanly_and_the_rerun_completes_identically(base_overrides, subprocess_env, tmp_path):
    data = write_jsonl(tmp_path / "prefs16.jsonl", synthetic_preferences(16, 5))
    extra = ["score.teacher_logps=true", "score.batch_size=2"]
    straight = tmp_path / "straight.jsonl"  # first, so the subprocesses find its compilations in the cache
    run_score(_config(base_overrides, data, straight, *extra))
    out = tmp_path / "scored.jsonl"
    overrides = [*base_overrides, f"score.input={data}", f"score.output={out}", *extra]

    first, stopped_at, resumed = sigterm_then_resume(tmp_path, subprocess_env, "score", overrides)
    assert 2 <= stopped_at < 16 and stopped_at % 2 == 0, first
    assert f"{out}: 16 rows scored" in resumed, resumed
    assert not (tmp_path / "scored.jsonl.partial.jsonl").exists()
    rows = _rows(out)
    assert len(rows) == 16
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in _rows(data)]  # each row once, in order
    assert rows == _rows(straight)


def test_interrupted_score_leaves_only_the_partial_file(base_overrides, prefs, tmp_path, monkeypatch):
    out = tmp_path / "scored.jsonl"
    config = _config(base_overrides, prefs, out)
    monkeypatch.setattr(score_mod, "PreemptionGuard", StopAfterFirstBatch)
    first = run_score(config)
    assert first.interrupted and first.rows == 4
    assert not out.exists()
    staged = _rows(tmp_path / "scored.jsonl.partial.jsonl")
    assert [r["row"] for r in staged] == [0, 1, 2, 3]
    monkeypatch.undo()
    second = run_score(config)
    assert (second.rows, second.new_rows, second.interrupted) == (12, 8, False)
    assert [r["prompt"] for r in _rows(out)] == [r["prompt"] for r in _rows(prefs)]
    third = run_score(config)  # complete: nothing to do
    assert (third.rows, third.new_rows) == (12, 0)


# ----------------------------------------------------------------------------- errors, before any weights load


@pytest.mark.parametrize("fmt, message", [
    ("auto", "cannot detect the row format from columns ['chosen', 'prompt']; expected prompt/chosen/rejected"),
    ("preference", "half.jsonl:row 0: field 'rejected': missing (line 1)"),
])
def test_rows_without_rejected_are_refused_before_loading(base_overrides, tmp_path, monkeypatch, fmt, message):
    data = write_jsonl(tmp_path / "half.jsonl", [{"prompt": "a?", "chosen": " yes"}, {"prompt": "b?", "chosen": " no"}])
    _no_weights(monkeypatch)
    with pytest.raises(DataError) as e:
        run_score(_config(base_overrides, data, tmp_path / "out.jsonl", f"data.format={fmt}"))
    assert message in str(e.value)
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "out.jsonl.partial.jsonl").exists()


def test_dataset_rdo_source_without_score_columns_is_refused(base_overrides, prefs, tmp_path, monkeypatch):
    _no_weights(monkeypatch)
    with pytest.raises(DataError) as e:
        run_score(_config(base_overrides, prefs, tmp_path / "out.jsonl", "score.rdo_weights=true",
                          "loss.rdo.source=dataset"))
    assert str(prefs) in str(e.value) and "'score_chosen' and 'score_rejected'" in str(e.value)
    assert not (tmp_path / "out.jsonl.partial.jsonl").exists()
