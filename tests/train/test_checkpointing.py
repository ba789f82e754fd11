"""Checkpointer: exact round trips, shardings, keep-last-N, async, atomicity, structure checks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxalign.train import checkpointing
from jaxalign.train.checkpointing import Checkpointer, CheckpointStructureError


def _train_state(out_features=8, seed=0):
    """Params of a small NNX model, an AdamW state after one update, a typed and a raw PRNG key.

    Params are filled with numpy values and the optimizer step is jitted: eager
    threefry initialisers and op-by-op optax cost seconds of compilation here.
    """
    abstract_model = nnx.eval_shape(lambda: nnx.Linear(4, out_features, rngs=nnx.Rngs(seed)))
    _, abstract_params = nnx.split(abstract_model, nnx.Param)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), s.dtype), abstract_params)
    tx = optax.adamw(1e-2)

    @jax.jit
    def one_update(params):
        opt = tx.init(params)
        grads = jax.tree.map(lambda p: 0.5 * jnp.ones_like(p), params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), opt

    params, opt = one_update(params)
    return {"params": params, "opt": opt, "step": jnp.asarray(1, jnp.int32),
            "key": jax.random.key(7), "raw_key": jax.random.PRNGKey(3)}


def _assert_tree_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            assert y.dtype == x.dtype
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _committed_dirs(path):
    return sorted(p.name for p in path.iterdir() if p.name.isdigit())


def test_round_trip_nnx_adamw_typed_key_meta_config(tmp_path):
    state = _train_state()
    meta = {"epoch": np.int64(1), "step": 40, "run": {"name": "t", "lr": np.float32(0.5)}}
    with Checkpointer(tmp_path / "ck", keep=3) as ck:
        assert ck.latest_step() is None
        assert ck.save(40, state, meta, config_yaml="loss:\n  beta: 0.1\n")
        ck.wait()
        assert ck.latest_step() == 40
        restored, meta_back = ck.restore(abstract_state=jax.eval_shape(lambda: state))
    _assert_tree_equal(state, restored)
    assert meta_back == {"epoch": 1, "step": 40, "run": {"name": "t", "lr": 0.5}}
    # A fresh Checkpointer (a restarted job) sees the same; the YAML is a readable file.
    with Checkpointer(tmp_path / "ck") as ck2:
        assert ck2.all_steps() == [40]
        assert ck2.config_yaml() == "loss:\n  beta: 0.1\n"
        assert ck2.restore_meta(40)["step"] == 40
    assert (tmp_path / "ck" / "40" / "config" / "config.yaml").read_text() == "loss:\n  beta: 0.1\n"
    assert json.loads((tmp_path / "ck" / "40" / "meta" / "metadata").read_text())["epoch"] == 1


def test_restore_into_mesh_shardings(tmp_path):
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "model"))
    rng = np.random.default_rng(0)
    state = {"w": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32),
             "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32),
             "step": jnp.asarray(3, jnp.int32), "key": jax.random.key(1)}
    specs = {"w": P("data", "model"), "b": P("model"), "step": P(), "key": P()}
    shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(1, state, {})  # saved from single-device arrays
        sharded = jax.tree.map(jax.device_put, state, shardings)
        ck.save(2, sharded, {})  # saved from mesh-sharded arrays
        abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                                jax.eval_shape(lambda: state), shardings)
        for step in (1, 2):
            restored, _ = ck.restore(step, abstract)
            _assert_tree_equal(state, restored)
            for k in state:
                assert restored[k].sharding == shardings[k], k
        assert restored["w"].addressable_shards[0].data.shape == (2, 2)


def test_keep_last_n(tmp_path):
    state = {"x": jnp.arange(4.0)}
    with Checkpointer(tmp_path, keep=2) as ck:
        for step in range(1, 5):
            assert ck.save(step, jax.tree.map(lambda a: a + step, state), {"step": step})
    assert _committed_dirs(tmp_path) == ["3", "4"]
    with Checkpointer(tmp_path, keep=2) as ck:
        assert ck.all_steps() == [3, 4]
        assert ck.config_yaml(3) is None  # none was given
        restored, meta = ck.restore(3, jax.eval_shape(lambda: state))
    np.testing.assert_array_equal(restored["x"], np.arange(4.0) + 3)
    assert meta == {"step": 3}


def test_relative_directory_is_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # recipes write to relative runs/...; Orbax itself wants absolute paths
    with Checkpointer("runs/x/checkpoints", async_save=False) as ck:
        assert ck.save(1, {"x": jnp.ones(2)}, {"step": 1}, force=True)
    assert _committed_dirs(tmp_path / "runs/x/checkpoints") == ["1"]


def test_save_every_force_and_repeated_step(tmp_path):
    state = {"x": jnp.zeros(2)}
    with Checkpointer(tmp_path, save_every=5) as ck:
        assert not ck.save(3, state, {})
        assert ck.save(5, state, {})
        assert not ck.save(5, state, {}, force=True)  # preemption save right after a periodic one: no-op
        assert ck.save(7, state, {}, force=True)
        ck.wait()
        assert ck.all_steps() == [5, 7]


def test_async_save_survives_donation_then_wait(tmp_path):
    x = jnp.arange(64.0 * 64).reshape(64, 64)
    expected = np.asarray(x)
    with Checkpointer(tmp_path, async_save=True) as ck:
        assert ck.save(1, {"x": x}, {"n": 1})
        x.delete()  # what a donating train step does to the old state
        ck.wait()
        restored, _ = ck.restore(1, {"x": jax.ShapeDtypeStruct((64, 64), jnp.float32)})
    np.testing.assert_array_equal(restored["x"], expected)


def test_crash_leftovers_are_ignored_and_cleaned(tmp_path):
    state = {"x": jnp.arange(3.0)}
    with Checkpointer(tmp_path) as ck:
        ck.save(5, state, {"step": 5})
    # A process killed mid-save leaves Orbax's tmp dir; a copy interrupted elsewhere leaves an uncommitted step dir.
    tmp = tmp_path / "10.orbax-checkpoint-tmp"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "junk").write_text("partial")
    (tmp_path / "12" / "state").mkdir(parents=True)
    (tmp_path / "12" / "state" / "junk").write_text("partial")
    with Checkpointer(tmp_path) as ck:
        assert ck.latest_step() == 5
        assert ck.all_steps() == [5]
        _, meta = ck.restore(abstract_state=jax.eval_shape(lambda: state))
        assert meta == {"step": 5}
        with pytest.raises(FileNotFoundError):
            ck.restore(12, jax.eval_shape(lambda: state))
        assert ck.save(12, state, {"step": 12})  # replaces the uncommitted dir
        ck.wait()
        assert ck.latest_step() == 12
    assert not tmp.exists()  # removed by the restarted Checkpointer

    # A read-only reader (eval while training) sees committed steps but never touches an in-flight tmp dir.
    (tmp_path / "20.orbax-checkpoint-tmp").mkdir()
    reader = Checkpointer(tmp_path, read_only=True)
    assert reader.latest_step() == 12 and reader.restore_meta() == {"step": 12}
    with pytest.raises(RuntimeError, match="read-only"):
        reader.save(13, state, {})
    reader.close()
    assert (tmp_path / "20.orbax-checkpoint-tmp").exists()
    assert (tmp_path / "12" / "commit_success.txt").exists()
    assert not (tmp_path / "12" / "state" / "junk").exists()


def test_failed_saves_leave_nothing(tmp_path, monkeypatch):
    state = {"x": jnp.arange(3.0)}
    with Checkpointer(tmp_path, keep=2) as ck:
        ck.save(1, state, {"step": 1})
        with pytest.raises(TypeError, match="JSON"):
            ck.save(2, state, {"bad": object()})
        with pytest.raises(TypeError, match="'y'"):
            ck.save(2, {"x": state["x"], "y": "not an array"}, {})
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("2")) == []

        async def disk_full(self, text, directory):
            raise OSError("disk full")

        # An I/O error in the async background write surfaces at wait(); its partial dir is removed.
        monkeypatch.setattr(checkpointing._TextCheckpointHandler, "_write", disk_full)
        ck.save(3, state, {"step": 3}, config_yaml="a: 1\n")
        with pytest.raises(OSError, match="disk full"):
            ck.wait()
        assert ck.all_steps() == [1]
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("3")) == []
        monkeypatch.undo()
        assert ck.save(4, state, {"step": 4}, config_yaml="a: 1\n")
        ck.wait()
        assert ck.all_steps() == [1, 4]


def test_structure_mismatch_names_the_key(tmp_path):
    state = _train_state(out_features=8)
    with Checkpointer(tmp_path) as ck:
        ck.save(1, state, {})
        bigger = jax.eval_shape(lambda: _train_state(out_features=16))
        with pytest.raises(CheckpointStructureError, match=r"bias.*\(8,\).*\(16,\)") as err:
            ck.restore(1, bigger)
        assert isinstance(err.value, ValueError)
        extra = dict(jax.eval_shape(lambda: state), extra=jax.ShapeDtypeStruct((2,), jnp.float32))
        with pytest.raises(ValueError, match="'extra'"):
            ck.restore(1, extra)
        fewer = {k: v for k, v in jax.eval_shape(lambda: state).items() if k != "raw_key"}
        with pytest.raises(ValueError, match="'raw_key'"):
            ck.restore(1, fewer)


def test_no_checkpoint_and_bad_args(tmp_path):
    with Checkpointer(tmp_path) as ck:
        with pytest.raises(FileNotFoundError):
            ck.restore(abstract_state={"x": jax.ShapeDtypeStruct((1,), jnp.float32)})
        assert ck.latest_step() is None
        with pytest.raises(FileNotFoundError):
            ck.config_yaml()
    with pytest.raises(ValueError):
        Checkpointer(tmp_path, keep=0)


def _damage(step_dir, how):
    """Damage a committed step as a crash or a disk error would: truncate or delete its largest array
    data file, or delete the state tree's ``_METADATA``."""
    state = step_dir / "state"
    if how == "no_metadata":
        (state / "_METADATA").unlink()
        return
    data = max((p for p in state.rglob("*") if p.is_file() and p.name not in ("_METADATA", "_sharding", "manifest.ocdbt")),
               key=lambda p: p.stat().st_size)
    if how == "truncated":
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 3])
    else:
        data.unlink()


@pytest.mark.parametrize("how", ["truncated", "deleted", "no_metadata"])
def test_damaged_newest_step_falls_back_to_the_previous_one(tmp_path, how, caplog):
    states = {s: {"x": jnp.arange(4096.0) * s, "step": jnp.asarray(s, jnp.int32)} for s in (1, 2, 3)}
    with Checkpointer(tmp_path, async_save=False) as ck:
        for s, st in states.items():
            ck.save(s, st, {"step": s})
    _damage(tmp_path / "3", how)
    with Checkpointer(tmp_path, async_save=False) as ck:
        with caplog.at_level("WARNING", logger="jaxalign.train.checkpointing"):
            restored, meta = ck.restore(abstract_state=jax.eval_shape(lambda: states[1]))
        assert meta == {"step": 2}
        _assert_tree_equal(restored, states[2])
        assert "step 3" in caplog.text and "damaged" in caplog.text
        assert ck.all_steps() == [1, 2] and (tmp_path / "3.damaged").is_dir()
        assert ck.save(3, states[3], {"step": 3})  # the step number is free again, not "already exists"
        assert ck.restore(abstract_state=jax.eval_shape(lambda: states[1]))[1] == {"step": 3}


def test_every_step_damaged_is_one_error(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(1, {"x": jnp.arange(4096.0)}, {"step": 1})
    _damage(tmp_path / "1", "deleted")
    with Checkpointer(tmp_path) as ck, pytest.raises(checkpointing.CheckpointDamagedError, match=r"restores \(damaged: \[1\]\)"):
        ck.restore(abstract_state={"x": jax.ShapeDtypeStruct((4096,), jnp.float32)})


def test_uncommitted_step_folders_are_removed_at_start(tmp_path):
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(1, {"x": jnp.arange(3.0)}, {"step": 1})
    (tmp_path / "7" / "state").mkdir(parents=True)  # a kill between mkdir and commit
    Checkpointer(tmp_path, read_only=True).close()
    assert (tmp_path / "7").exists()  # readers never delete
    Checkpointer(tmp_path).close()
    assert not (tmp_path / "7").exists() and (tmp_path / "1").exists()


def test_committed_step_files_reads_config_and_meta_without_orbax(tmp_path):
    assert checkpointing.committed_step_files(tmp_path / "none") is None
    with Checkpointer(tmp_path, async_save=False) as ck:
        ck.save(4, {"x": jnp.arange(3.0)}, {"step": 4, "provenance": {"data.source": "abc"}}, config_yaml="a: 1\n")
    assert checkpointing.committed_step_files(tmp_path) == (4, "a: 1\n", {"step": 4, "provenance": {"data.source": "abc"}})
