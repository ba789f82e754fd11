"""Atomic, resumable training checkpoints on top of Orbax.

A :class:`Checkpointer` wraps one ``orbax.checkpoint.CheckpointManager`` and
saves, per step, everything a run needs to continue *exactly* where it stopped:

* ``state`` – a pytree of jax arrays (params, optimizer state, step counter,
  RNG keys; typed ``jax.random.key`` arrays and raw ``uint32`` keys both work),
  possibly sharded over a mesh.  Saved with ``StandardSave``.
* ``meta`` – a JSON dict: data-loader position (``{"epoch": 1, "step": 40}``),
  run info.  Saved with ``JsonSave``.  numpy/jax scalars are converted to
  Python numbers; anything else that JSON cannot hold is refused *before*
  anything is written.
* ``config`` – optional resolved config YAML, saved as a plain text file by a
  tiny Orbax handler so it is committed atomically with the rest and can be
  read with ``cat``.

On-disk layout (Orbax 0.12, local/POSIX filesystem)::

    {directory}/
      {step}/                      # committed step (only these are ever read)
        _CHECKPOINT_METADATA       # orbax step metadata (timestamps, handlers)
        commit_success.txt         # written just before the commit rename
        state/                     # OCDBT/zarr tensorstore of the pytree
        meta/metadata              # the JSON dict
        config/config.yaml         # the YAML text (only if one was given)
      {step}.orbax-checkpoint-tmp/ # a save in progress (or a crashed one)

Atomicity: Orbax writes a step into ``{step}.orbax-checkpoint-tmp``, writes
``commit_success.txt`` into it when every item is on disk, then renames it to
``{step}`` (a single atomic ``rename`` on POSIX; on GCS Orbax instead writes in
place and treats ``commit_success.txt`` as the commit marker).  This class only
ever sees directories named ``{step}`` that also contain
``commit_success.txt`` (see :class:`_CommittedStepFormat`), so neither a tmp
directory left by a crash nor a half-copied/un-committed ``{step}`` directory
is picked up by :meth:`latest_step` or :meth:`restore`.  Left-over tmp
directories are deleted when a ``Checkpointer`` is created (Orbax's
``cleanup_tmp_directories``) and when the same step is saved again.  A save
that raises (synchronously, or later in the async background thread, surfaced
by :meth:`wait`) has its tmp directory removed before the error propagates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

logger = logging.getLogger(__name__)

__all__ = ["Checkpointer", "CheckpointDamagedError", "CheckpointStructureError", "committed_step_files"]

_COMMIT_FILE = "commit_success.txt"
_TMP_SUFFIX = ".orbax-checkpoint-tmp"
_CONFIG_FILE = "config.yaml"


class CheckpointStructureError(ValueError):
    """A checkpoint's state tree does not match the restore target (keys or shapes)."""


class CheckpointDamagedError(RuntimeError):
    """A committed step cannot be read back (a data file truncated or deleted, metadata missing)."""


_DAMAGED_SUFFIX = ".damaged"


def committed_step_files(directory: str | Path) -> tuple[int, str | None, dict | None] | None:
    """``(step, config YAML, meta)`` of the newest committed step whose small files read, without Orbax
    (so a caller can compare configs before building anything); ``None`` when there is no committed step."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit() and (p / _COMMIT_FILE).exists()),
                   reverse=True)
    for step in steps:
        config, meta = directory / str(step) / "config" / _CONFIG_FILE, directory / str(step) / "meta" / "metadata"
        try:
            text = config.read_text() if config.exists() else None
            data = json.loads(meta.read_text()) if meta.exists() else None
        except (OSError, ValueError):
            continue
        return step, text, data if isinstance(data, dict) else None
    return None


# --------------------------------------------------------------------------- #
# A text item for the resolved config YAML.
# --------------------------------------------------------------------------- #


class _TextCheckpointHandler(ocp.handlers.AsyncCheckpointHandler):
    """Writes one string to ``<item>/config.yaml`` (primary process only)."""

    def __init__(self, filename: str = _CONFIG_FILE):
        self._filename = filename

    async def _write(self, text: str, directory: epath.Path) -> None:
        if jax.process_index() == 0:
            (directory / self._filename).write_text(text)

    async def async_save(self, directory: epath.Path, args: "TextSave") -> list:
        # Like Orbax's JsonCheckpointHandler: the write runs as a commit future that
        # waits until the (possibly asynchronously created) tmp directory exists.
        return [ocp.future.CommitFutureAwaitingContractedSignals(
            self._write(args.text, directory), name="text_ch_save")]

    def save(self, directory: epath.Path, args: "TextSave") -> None:
        (directory / self._filename).write_text(args.text)

    def restore(self, directory: epath.Path, args: "TextRestore | None" = None) -> str:
        return (directory / self._filename).read_text()


@ocp.args.register_with_handler(_TextCheckpointHandler, for_save=True)
@dataclasses.dataclass
class TextSave(ocp.args.CheckpointArgs):
    """Save args for a text item."""

    text: str


@ocp.args.register_with_handler(_TextCheckpointHandler, for_restore=True)
@dataclasses.dataclass
class TextRestore(ocp.args.CheckpointArgs):
    """Restore args for a text item."""


# --------------------------------------------------------------------------- #
# Only committed steps exist.
# --------------------------------------------------------------------------- #


class _CommittedStepFormat:
    """Orbax ``NameFormat``: plain ``{step}`` names, and a step counts only once committed.

    Orbax's default rename-based protocol treats *any* directory named ``{step}``
    as finalised.  We additionally require ``commit_success.txt`` (Orbax writes it
    as the last thing before the rename), so a partially copied or otherwise
    uncommitted ``{step}`` directory is invisible to step listing, keep-last-N and
    restore alike.
    """

    def __init__(self):
        self._base = ocp.path.step.standard_name_format()

    def build_name(self, step: int) -> str:
        return self._base.build_name(step)

    def find_all(self, base_path) -> Iterator[Any]:
        return iter([m for m in self._base.find_all(base_path) if (epath.Path(m.path) / _COMMIT_FILE).exists()])

    def find_step(self, base_path, step: int):
        meta = self._base.find_step(base_path, step)
        if not (epath.Path(meta.path) / _COMMIT_FILE).exists():
            raise ValueError(f"Checkpoint step {step} under {base_path} is not committed (no {_COMMIT_FILE}).")
        return meta

    def __str__(self) -> str:
        return f"CommittedStepFormat({self._base})"


# --------------------------------------------------------------------------- #
# Helpers.
# --------------------------------------------------------------------------- #


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.generic,)) or (isinstance(obj, (np.ndarray, jax.Array)) and np.ndim(obj) == 0):
        return np.asarray(obj).item()
    raise TypeError(f"checkpoint meta: value {obj!r} of type {type(obj).__name__} is not JSON serialisable")


def _normalise_meta(meta: dict) -> dict:
    """JSON round trip: converts numpy/jax scalars, rejects anything JSON can't hold (before any I/O)."""
    if not isinstance(meta, dict):
        raise TypeError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
    try:
        text = json.dumps(meta, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as e:
        raise TypeError(f"checkpoint meta is not JSON serialisable: {e}") from e
    return json.loads(text)


_SCALARS = (int, float, bool, np.generic)


def _validate_state(state: Any) -> None:
    """Refuse leaves Orbax cannot save (strings, objects) before any I/O, naming the key."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    if not leaves:
        raise ValueError("checkpoint state has no array leaves")
    for path, leaf in leaves:
        if isinstance(leaf, (jax.Array, np.ndarray) + _SCALARS):
            continue
        name = _path_str(tuple(_key_name(k) for k in path))
        raise TypeError(f"checkpoint state leaf '{name}' has unsupported type {type(leaf).__name__}; "
                        "state must hold only jax/numpy arrays and scalars")


def _key_name(k: Any) -> str:
    """Orbax's naming of a pytree key (as stored in checkpoint metadata)."""
    if isinstance(k, jax.tree_util.SequenceKey):
        return str(k.idx)
    if isinstance(k, jax.tree_util.DictKey):
        return str(k.key)
    if isinstance(k, jax.tree_util.GetAttrKey):
        return k.name
    if isinstance(k, jax.tree_util.FlattenedIndexKey):
        return str(k.key)
    return str(k)


def _path_str(path: tuple[str, ...]) -> str:
    return "/".join(path) if path else "<root>"


def _is_array_like(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _stored_shape(leaf: Any) -> tuple[int, ...]:
    """Shape a leaf has on disk (typed PRNG keys are stored as their uint32 key data)."""
    shape = tuple(leaf.shape)
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        shape = tuple(jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, leaf.dtype)).shape)
    return shape


def _flat_shapes(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(_key_name(k) for k in path): _stored_shape(leaf) for path, leaf in leaves if _is_array_like(leaf)}


def _to_abstract(x: Any) -> Any:
    """Restore target leaf: keeps ShapeDtypeStructs, turns concrete arrays into abstract ones."""
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    if isinstance(x, (np.ndarray, np.generic)):
        return jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
    return x


# --------------------------------------------------------------------------- #
# Checkpointer.
# --------------------------------------------------------------------------- #


class Checkpointer:
    """Keep-last-N, atomic, optionally asynchronous checkpoints of (state, meta, config).

    Args:
      directory: root directory (created if missing).  Any ``etils.epath``
        path; only local paths are tested.
      keep: number of newest committed steps to keep; ``None`` keeps all.
      async_save: write in a background thread; :meth:`save` returns once the
        arrays are copied to host memory (so the caller may donate/overwrite
        them).  Call :meth:`wait` before exiting.
      save_every: ``save(step)`` without ``force`` writes only when
        ``step % save_every == 0``; ``0`` means every call writes.
      read_only: for readers (eval, convert) of a directory a training job may
        still be writing: never saves, deletes or cleans up tmp directories
        (a writable ``Checkpointer`` deletes ``*.orbax-checkpoint-tmp`` on
        creation, which would break another job's in-flight save).

    All processes of a multi-host job must call every method (Orbax syncs them).
    """

    def __init__(self, directory: str | Path, *, keep: int | None = 3, async_save: bool = True, save_every: int = 0,
                 read_only: bool = False):
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1 or None (keep all), got {keep}")
        if save_every < 0:
            raise ValueError(f"save_every must be >= 0, got {save_every}")
        # Orbax needs an absolute path; relative local paths (the recipes' runs/...) are resolved here.
        self.directory = epath.Path(directory if "://" in str(directory) else Path(directory).absolute())
        self.keep = keep
        self.async_save = async_save
        self.save_every = save_every
        self.read_only = read_only
        self._pending_step: int | None = None
        registry = ocp.handlers.create_default_handler_registry(
            state=ocp.handlers.StandardCheckpointHandler(),
            meta=ocp.handlers.JsonCheckpointHandler(),
            config=_TextCheckpointHandler(),
        )
        if read_only:
            options = ocp.CheckpointManagerOptions(read_only=True, step_name_format=_CommittedStepFormat())
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep,
                create=True,
                cleanup_tmp_directories=True,  # drop {step}.orbax-checkpoint-tmp left by a crash
                enable_async_checkpointing=async_save,
                step_name_format=_CommittedStepFormat(),
            )
        self._mngr = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)
        self._remove_uncommitted()

    # -- queries --------------------------------------------------------- #

    def all_steps(self) -> list[int]:
        """Committed steps, ascending.  A save still in flight is not counted until it commits."""
        steps = sorted(self._mngr.all_steps())
        if self._pending_step is not None and not self._is_committed_on_disk(self._pending_step):
            steps = [s for s in steps if s != self._pending_step]
        return steps

    def latest_step(self) -> int | None:
        """Newest committed step, or ``None`` when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        """Whether ``save(step)`` (without ``force``) would write, by the ``save_every`` rule."""
        return self.save_every == 0 or step % self.save_every == 0

    # -- save ------------------------------------------------------------ #

    def save(self, step: int, state: Any, meta: dict, config_yaml: str | None = None, force: bool = False) -> bool:
        """Save ``state`` (pytree of arrays), ``meta`` (JSON dict) and ``config_yaml`` as ``step``.

        Returns ``True`` when a save was started; ``False`` when ``step`` is not
        due by ``save_every`` (and ``force`` is false) or is already committed
        (so a preemption save right after a periodic save of the same step is a
        harmless no-op).  Waits for the previous async save first, so an error
        of an async save surfaces from :meth:`wait` or from the next ``save``.
        Invalid ``state``/``meta`` raise ``TypeError`` before any I/O; after an
        I/O error the step's partial directory is removed (best effort; it is
        never read either way).
        """
        if self.read_only:
            raise RuntimeError(f"Checkpointer on {self.directory} is read-only")
        step = int(step)
        if not force and not self.should_save(step):
            return False
        _validate_state(state)
        meta = _normalise_meta(meta)
        if config_yaml is not None and not isinstance(config_yaml, str):
            raise TypeError(f"config_yaml must be a str or None, got {type(config_yaml).__name__}")
        self.wait()  # surface (and clean up after) a failed previous async save before starting this one
        if step in self._mngr.all_steps():
            logger.info("checkpoint step %d already exists in %s; not saving again", step, self.directory)
            return False
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if config_yaml is not None:
            items["config"] = TextSave(config_yaml)
        self._pending_step = step
        try:
            saved = self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
        except BaseException:
            self._abort(step)
            raise
        if not self.async_save:
            self._pending_step = None
        return bool(saved)

    def wait(self) -> None:
        """Block until an in-flight async save has committed; re-raise its error (after cleaning up)."""
        try:
            self._mngr.wait_until_finished()
        except BaseException:
            if self._pending_step is not None:
                self._abort(self._pending_step)
            raise
        self._pending_step = None

    def close(self) -> None:
        """Wait for pending saves and old-step deletion, then release Orbax resources."""
        try:
            self.wait()
        finally:
            self._mngr.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- restore --------------------------------------------------------- #

    def restore(self, step: int | None = None, abstract_state: Any = None) -> tuple[Any, dict]:
        """Restore ``(state, meta)`` from ``step`` (default: the newest committed step that restores completely).

        ``abstract_state`` is the restore target: a pytree of
        ``jax.ShapeDtypeStruct`` (``jax.eval_shape`` output with ``.sharding``
        set) or of concrete arrays; restored arrays get exactly those shardings
        and dtypes (dtype differences are cast).  A target whose keys or shapes
        differ from the checkpoint raises :class:`CheckpointStructureError`
        (a ``ValueError``) naming the first differing key.  Leaves without a
        ``.sharding`` (and a missing target) get the sharding recorded at save
        time, which only works on the same device topology.

        With ``step=None``, a damaged newest step (a data file truncated or
        deleted, its metadata gone) is not fatal: restore walks back to the
        newest step that restores completely, warns naming each damaged step
        and (writable checkpointers) renames it ``{step}.damaged``, so later
        saves of that step number are not skipped.  Raises
        :class:`CheckpointDamagedError` when no step restores.
        """
        self.wait()
        if step is not None:
            return self._restore_step(self._resolve_step(step), abstract_state)
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"no committed checkpoint in {self.directory}")
        damaged = []
        for candidate in reversed(steps):
            try:
                out = self._restore_step(candidate, abstract_state)
            except CheckpointStructureError:
                raise
            except Exception as e:  # noqa: BLE001 - any read failure of one step is damage to that step
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                damaged.append(candidate)
                logger.warning("checkpoint step %d in %s is damaged (%s: %s); trying the previous step",
                               candidate, self.directory, type(e).__name__, reason)
                continue
            if damaged:
                logger.warning("resumed from step %d: newer step(s) %s in %s are damaged%s", candidate, damaged,
                               self.directory, "" if self.read_only else f" and were renamed *{_DAMAGED_SUFFIX}")
                self._set_aside(damaged)
            return out
        self._set_aside(damaged)
        raise CheckpointDamagedError(f"no checkpoint step in {self.directory} restores (damaged: {damaged}); "
                                     f"delete the folder to start over")

    def _restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        if abstract_state is None:
            state_args = ocp.args.StandardRestore()
        else:
            target = jax.tree.map(_to_abstract, abstract_state)
            self._check_structure(step, target)
            state_args = ocp.args.StandardRestore(target)
        out = self._mngr.restore(step, args=ocp.args.Composite(state=state_args, meta=ocp.args.JsonRestore()))
        return out["state"], dict(out["meta"])

    def _set_aside(self, steps: list[int]) -> None:
        """Rename damaged committed steps to ``{step}.damaged`` (kept for inspection, never read)."""
        if self.read_only or not steps:
            return
        if jax.process_index() == 0:
            for step in steps:
                src = Path(str(self.step_dir(step)))
                dst = src.with_name(src.name + _DAMAGED_SUFFIX)
                n = 1
                while dst.exists():
                    dst, n = src.with_name(f"{src.name}{_DAMAGED_SUFFIX}{n}"), n + 1
                src.rename(dst)
        self._mngr.reload()

    def restore_meta(self, step: int | None = None) -> dict:
        """Only the JSON meta of ``step`` (default latest), without touching the arrays."""
        self.wait()
        step = self._resolve_step(step)
        return dict(self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def config_yaml(self, step: int | None = None) -> str | None:
        """The resolved config YAML saved with ``step`` (default latest), or ``None`` if none was saved."""
        self.wait()
        step = self._resolve_step(step)
        if not (self.step_dir(step) / "config" / _CONFIG_FILE).exists():
            return None
        return self._mngr.restore(step, args=ocp.args.Composite(config=TextRestore()))["config"]

    def step_dir(self, step: int) -> epath.Path:
        """Directory of a committed step."""
        return self.directory / _CommittedStepFormat().build_name(step)

    # -- internals ------------------------------------------------------- #

    def _resolve_step(self, step: int | None) -> int:
        steps = self.all_steps()
        if step is None:
            if not steps:
                raise FileNotFoundError(f"no committed checkpoint in {self.directory}")
            return steps[-1]
        if int(step) not in steps:
            raise FileNotFoundError(f"no committed checkpoint for step {step} in {self.directory} (have {steps})")
        return int(step)

    def _check_structure(self, step: int, target: Any) -> None:
        """Compare the saved tree (keys, shapes) with ``target``; raise naming the first difference."""
        md = self._mngr.item_metadata(step)["state"]
        saved_tree = getattr(md, "tree", md)
        saved = _flat_shapes(saved_tree)
        wanted = _flat_shapes(target)
        where = f"checkpoint step {step} in {self.directory}"
        if not saved:
            raise CheckpointDamagedError(f"{where}: its state metadata lists no arrays (_METADATA missing or empty)")
        for path, shape in wanted.items():
            if path not in saved:
                raise CheckpointStructureError(
                    f"{where}: restore target has key '{_path_str(path)}' (shape {shape}) that the checkpoint lacks; "
                    f"checkpoint keys: {sorted(_path_str(p) for p in saved)[:20]}"
                )
            if tuple(saved[path]) != tuple(shape):
                raise CheckpointStructureError(
                    f"{where}: key '{_path_str(path)}' has shape {tuple(saved[path])} in the checkpoint but "
                    f"{tuple(shape)} in the restore target (different model/optimizer config?)"
                )
        extra = [p for p in saved if p not in wanted]
        if extra:
            raise CheckpointStructureError(
                f"{where}: checkpoint has key '{_path_str(extra[0])}' (shape {saved[extra[0]]}) that the restore "
                f"target lacks ({len(extra)} such keys)"
            )

    def _is_committed_on_disk(self, step: int) -> bool:
        return (self.step_dir(step) / _COMMIT_FILE).exists()

    @staticmethod
    def _drain_background_writes(timeout_s: float = 120.0) -> None:
        """Wait for the failed save's other item writers to stop before deleting their directory.

        Orbax stops waiting at the first failing commit future while the other
        items' writers (Orbax ``_SignalingThread``s) keep running and would
        re-create files in the tmp dir we delete.  Best effort: a tmp dir that
        survives is still never read, and the next ``Checkpointer`` on this
        directory (or the next save of the same step) removes it.
        """
        deadline = time.monotonic() + timeout_s
        me = threading.current_thread()
        for t in threading.enumerate():
            if t is not me and type(t).__module__.startswith("orbax.") and t.is_alive():
                t.join(max(0.0, deadline - time.monotonic()))

    def _abort(self, step: int) -> None:
        """After a failed save of ``step``: remove its tmp dir and resync Orbax's step list with the disk."""
        self._pending_step = None
        self._drain_background_writes()
        if jax.process_index() == 0:
            tmp = self.directory / (_CommittedStepFormat().build_name(step) + _TMP_SUFFIX)
            final = self.step_dir(step)
            for path in (tmp, final):
                if path.exists() and not (path / _COMMIT_FILE).exists():
                    logger.warning("removing partial checkpoint %s after a failed save", path)
                    try:
                        path.rmtree()
                    except OSError as e:  # never mask the original error
                        logger.warning("could not remove %s (%s); it is ignored and cleaned up later", path, e)
        self._mngr.reload()

    def _remove_uncommitted(self) -> None:
        """Delete ``{step}`` folders without a commit marker (left by a kill during a save; never read).

        Only a writable checkpointer does this, and training holds the output lock, so no other
        writer can have a save in flight here."""
        if self.read_only or jax.process_index() != 0 or not self.directory.exists():
            return
        committed = set(self._mngr.all_steps())
        for p in self.directory.iterdir():
            if p.name.isdigit() and int(p.name) not in committed and p.is_dir():
                logger.warning("removing uncommitted checkpoint directory %s (no %s)", p, _COMMIT_FILE)
                p.rmtree()
        self._mngr.reload()

