"""Cached teacher distributions: ``score.teacher_top_k`` writes them, ``loss.kd_cache`` trains from them."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest

from jaxalign.config import load_config
from jaxalign.data import DataError
from jaxalign.data.kd_cache import METADATA_KEY
from jaxalign.errors import ConfigError
from jaxalign.models import load_model
from jaxalign.objectives import ObjectiveContext
from jaxalign.pipeline.score import kd_cache_path, run_score
from jaxalign.train import build as build_mod
from jaxalign.train import trainer as trainer_mod
from jaxalign.train.provenance import ProvenanceError
from jaxalign.train.step import make_loss_fn
from jaxalign.train.trainer import Trainer
from tests.pipeline.conftest import StopAfterFirstBatch, assert_same_topk_cache, write_jsonl
from tests.pipeline.test_generate import base_overrides  # noqa: F401 (fixture)
from tests.train.conftest import synthetic_preferences

V = 320  # the tiny models' vocab: k = V makes the cache exact


@pytest.fixture(scope="module")
def cached(base_overrides, tmp_path_factory):
    """8 pairs scored with the reference, the teacher's log-probs and its full-vocabulary top-k cache."""
    root = tmp_path_factory.mktemp("topk")
    prefs = write_jsonl(root / "prefs.jsonl", synthetic_preferences(8, 5))
    out = root / "scored.jsonl"
    config = load_config(None, [*base_overrides, f"score.input={prefs}", f"score.output={out}",
                                "score.teacher_logps=true", f"score.teacher_top_k={V}"], stage="score")
    return config, run_score(config)


def _train_config(base_overrides, data, run, *extra):
    return load_config(None, [*base_overrides, f"data.path={data}", "loss.name=dadpo", "loss.kd_weight=1.0",
                              "loss.kd_on=both", "train.steps=2", f"train.output_dir={run}", "train.export_hf=false",
                              "optimizer.lr=1e-3", "loss.beta_teacher=0.5", *extra], stage="train")


def test_score_writes_the_teacher_top_k_beside_the_output(cached, tiny_models):
    config, result = cached
    assert result.kd_cache == kd_cache_path(result.output) == result.output.with_name("scored.teacher_topk.parquet")
    table = pq.read_table(result.kd_cache)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    assert (meta["k"], meta["vocab_size"], meta["rows"], table.num_rows) == (V, V, 8, 8)
    assert meta["teacher"] and meta["tokenizer"] and meta["responses"] and meta["data.max_length"] == 64
    assert not result.kd_cache.with_name(result.kd_cache.name + ".partial").exists()
    # Row 0's chosen side against the teacher's full logits: targets, ids by descending log-prob, values.
    from jaxalign.data import prepare
    from jaxalign.models import load_tokenizer

    teacher = load_model(str(tiny_models[0]))
    data = prepare(str(result.output), load_tokenizer(str(tiny_models[1])), config.data)
    batch = data.collate([data.units[0]])
    logits = teacher(jnp.asarray(batch["chosen_input_ids"]), jnp.asarray(batch["chosen_positions"]),
                     jnp.asarray(batch["chosen_segment_ids"]))
    logp = np.asarray(jax.nn.log_softmax(logits[0, :-1].astype(jnp.float32)))
    pos = np.flatnonzero(batch["chosen_loss_mask"][0, 1:])
    row = table.slice(0, 1).to_pylist()[0]
    np.testing.assert_array_equal(row["chosen_targets"], batch["chosen_input_ids"][0, 1:][pos])
    ids = np.asarray(row["chosen_topk_ids"]).reshape(len(pos), V)
    values = np.asarray(row["chosen_topk_logps"]).reshape(len(pos), V)
    np.testing.assert_array_equal(np.sort(ids, -1), np.broadcast_to(np.arange(V), ids.shape))
    np.testing.assert_allclose(values, np.take_along_axis(logp[pos], ids, -1), atol=2e-5)
    assert np.all(np.diff(values, axis=-1) <= 0) and np.all(np.asarray(row["chosen_topk_residual"]) == -np.inf)


def test_kd_from_a_full_vocab_cache_equals_the_teacher_in_the_step_and_loads_no_teacher(
        cached, base_overrides, tmp_path, monkeypatch):
    """daDPO + KD on both sides, cached log-prob columns, batch over 4 shards: with loss.kd_cache only the policy
    is built, the cache arrays shard like the token arrays, the loss and gradient equal the teacher-in-step
    run's within 1e-5, and two steps compile once."""
    _, result = cached
    built = []
    real_build = trainer_mod.build_model

    def recording_build(spec, *, key, **kwargs):
        built.append(key)
        return real_build(spec, key=key, **kwargs)

    for module in (trainer_mod, build_mod):
        monkeypatch.setattr(module, "build_model", recording_build)
    sharded = ["mesh.data=2", "mesh.fsdp=2"]  # 4 batch shards of one row each
    from_cache = Trainer(_train_config(base_overrides, result.output, tmp_path / "a", f"loss.kd_cache={result.kd_cache}",
                                       *sharded))
    assert built == ["model"] and "teacher" not in from_cache.frozen and from_cache.graphdefs.teacher is None
    in_step = Trainer(_train_config(base_overrides, result.output, tmp_path / "b", *sharded))
    assert built[1:] == ["model", "teacher"]

    def value_and_grad(trainer):
        batch = trainer._global(next(iter(trainer.data.batcher())))
        loss_fn = make_loss_fn(trainer.spec, ObjectiveContext(trainer.config.loss), trainer.graphdefs)
        return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(trainer.state["params"], trainer.frozen, batch), batch

    ((loss, metrics), grads), batch = value_and_grad(from_cache)
    ((ref_loss, ref_metrics), ref_grads), _ = value_and_grad(in_step)
    assert batch["chosen_topk_ids"].shape[-1] == V and float(metrics["loss/kd"]) > 1e-3
    for name in ("topk_ids", "topk_logps", "topk_residual"):  # sharded over the batch axes like the token arrays
        arr = batch[f"rejected_{name}"]
        assert arr.sharding.is_equivalent_to(batch["rejected_input_ids"].sharding, arr.ndim)
        assert {s.data.shape[0] for s in arr.addressable_shards} == {1} and len(arr.sharding.device_set) == 4
    np.testing.assert_allclose(metrics["loss/kd"], ref_metrics["loss/kd"], rtol=1e-5)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
    run = from_cache.run()
    assert run.compiles == 1 and len(run.losses) == 2 and all(np.isfinite(run.losses))


def _rewrite_metadata(src, dst, **changes):
    table = pq.read_table(src)
    meta = {**json.loads(table.schema.metadata[METADATA_KEY]), **changes}
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(meta).encode()}), dst)
    return dst


@pytest.mark.parametrize("changes, extra, error, match", [
    (dict(vocab_size=999), [], DataError, r"kd_cache=.*made for vocab size 999 but the policy \(model\) has 320"),
    (dict(tokenizer="another-tokenizer"), [], ProvenanceError, r"kd_cache=.*other settings than this run \(tokenizer"),
    (dict(), ["loss.kd_top_k=321"], ConfigError, r"loss.kd_top_k=321 exceeds the k=320 of loss.kd_cache="),
    (dict(), ["loss.kd_temperature=2.0"], ConfigError, r"kd_cache=.*temperature-1 log-probs; loss.kd_temperature=2.0"),
])
def test_a_cache_of_another_tokenizer_or_vocab_is_refused(cached, base_overrides, tmp_path, monkeypatch, changes,
                                                          extra, error, match):
    _, result = cached
    for module in (trainer_mod, build_mod):
        monkeypatch.setattr(module, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model built")))
    bad = _rewrite_metadata(result.kd_cache, tmp_path / "bad.parquet", **changes)
    with pytest.raises(error, match=match):
        Trainer(_train_config(base_overrides, result.output, tmp_path / "run", f"loss.kd_cache={bad}", *extra))


def test_a_cache_of_other_responses_is_refused(cached, base_overrides, tmp_path, monkeypatch):
    """The same pairs with one chosen response edited: the row is named; so is a row the cache lacks."""
    _, result = cached
    for module in (trainer_mod, build_mod):
        monkeypatch.setattr(module, "build_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model built")))
    original = [json.loads(line) for line in result.output.read_text().splitlines()]
    rows = [dict(r) for r in original]
    rows[3]["chosen"] = rows[3]["chosen"] + " edited"
    edited = write_jsonl(tmp_path / "edited.jsonl", rows)
    shutil.copy(result.output.with_name(result.output.name + ".provenance.json"),
                tmp_path / "edited.jsonl.provenance.json")
    cfg = _train_config(base_overrides, edited, tmp_path / "run", f"loss.kd_cache={result.kd_cache}",
                        "data.ignore_provenance=true")
    with pytest.raises(DataError, match=r"kd_cache=.*edited.jsonl:row 3.*the chosen response's tokens differ"):
        Trainer(cfg)
    more = write_jsonl(tmp_path / "more.jsonl", original + [original[1]])
    cfg = _train_config(base_overrides, more, tmp_path / "run", f"loss.kd_cache={result.kd_cache}",
                        "data.ignore_provenance=true")
    with pytest.raises(DataError, match=r"kd_cache=.*no entry for .*more.jsonl:row 8"):
        Trainer(cfg)


def test_score_refuses_a_top_k_cache_without_teacher_or_beyond_the_vocab(base_overrides, tmp_path):
    prefs = write_jsonl(tmp_path / "p.jsonl", synthetic_preferences(2, 0))
    over = [o for o in base_overrides if not o.startswith("teacher.path=")]
    with pytest.raises(Exception, match=r"score.teacher_top_k=4 needs a teacher"):
        run_score(load_config(None, [*over, f"score.input={prefs}", f"score.output={tmp_path / 'o.jsonl'}",
                                     "score.teacher_top_k=4"], stage="score"))
    with pytest.raises(Exception, match=r"score.teacher_top_k=321 exceeds the teacher's vocab size 320"):
        run_score(load_config(None, [*base_overrides, f"score.input={prefs}", f"score.output={tmp_path / 'o.jsonl'}",
                                     "score.teacher_top_k=321"], stage="score"))
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "o.teacher_topk.parquet").exists()


def test_an_interrupted_score_resumes_its_cache(cached, base_overrides, tmp_path, monkeypatch):
    """Stopped after its first batch: no output, no final cache, the batch's part staged; the rerun scores the
    rest and writes the same cache as an uninterrupted run; a complete output whose cache is gone is refused."""
    from jaxalign.pipeline import score as score_mod

    config0, result0 = cached

    prefs = write_jsonl(tmp_path / "prefs.jsonl", synthetic_preferences(8, 5))  # the fixture's rows
    out = tmp_path / "scored.jsonl"
    config = load_config(None, [*base_overrides, f"score.input={prefs}", f"score.output={out}",
                                "score.teacher_logps=true", f"score.teacher_top_k={V}"], stage="score")
    monkeypatch.setattr(score_mod, "PreemptionGuard", StopAfterFirstBatch)
    first = run_score(config)
    assert first.interrupted and first.kd_cache is None and not out.exists()
    cache = kd_cache_path(out)
    assert not cache.exists() and len(list(cache.with_name(cache.name + ".partial").glob("*.parquet"))) == 1
    monkeypatch.undo()
    second = run_score(config)
    assert (second.rows, second.new_rows, second.kd_cache) == (8, 4, cache)
    got, want = pq.read_table(cache), pq.read_table(result0.kd_cache)
    assert json.loads(got.schema.metadata[METADATA_KEY]) == json.loads(want.schema.metadata[METADATA_KEY])
    assert_same_topk_cache(cache, result0.kd_cache, tol=1e-6)
    assert run_score(config).new_rows == 0
    cache.unlink()
    with pytest.raises(DataError, match=r"is complete but its top-k cache .*teacher_topk.parquet is missing"):
        run_score(config)
