"""Multi-process start-up and global batches.

`initialize(mode)` calls `jax.distributed.initialize` when the run spans several
processes: explicitly (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID`, as `launch/local_multiprocess.sh` sets them) or detected by
JAX itself on SLURM and TPU pods.
"""

from __future__ import annotations

import itertools
import logging
import os
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxalign.parallel.mesh import BATCH_AXES

log = logging.getLogger(__name__)


def _detected_multiprocess() -> bool:
    env = os.environ
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
        return True
    return "," in env.get("TPU_WORKER_HOSTNAMES", "")


def initialize(mode: str = "auto") -> None:
    """Join the distributed runtime (mode on|off|auto); a no-op for a single process."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"mesh.multihost={mode!r} is not one of auto, on, off")
    if mode == "off" or (mode == "auto" and not _detected_multiprocess()):
        return
    if jax.distributed.is_initialized():
        return
    env = os.environ
    # CPU devices of different processes talk through gloo (GPU/TPU use their own fabric).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if env.get("JAX_NUM_PROCESSES"):
        kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"], num_processes=int(env["JAX_NUM_PROCESSES"]),
                      process_id=int(env["JAX_PROCESS_ID"]))
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis over data x fsdp, everything else replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, rows: int | None = None) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded over the batch axes.

    ``rows`` is the global batch size; without it every process is taken to hold an equal share
    (``local`` are then the rows ``row_span`` names; with ``rows`` they must be)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v, None if rows is None else (rows, *v.shape[1:]))
            for k, v in local.items()}


def _process_spans(mesh: Mesh, rows: int) -> dict[int, tuple[int, int]]:
    """Process index -> [lo, hi): the rows of a ``rows``-row batch its devices hold under ``batch_sharding``."""
    blocks: dict[int, set] = {}
    for device, index in batch_sharding(mesh).devices_indices_map((rows,)).items():
        lo, hi, _ = index[0].indices(rows)
        blocks.setdefault(device.process_index, set()).update(range(lo, hi))
    spans = {}
    for p, held in blocks.items():
        lo, hi = min(held), max(held) + 1
        if len(held) != hi - lo:
            raise ValueError(f"process {p}'s devices hold rows that are not one block of the batch of {rows} "
                             f"(mesh {dict(mesh.shape)}); order the mesh's devices by process")
        spans[p] = (lo, hi)
    return spans


def row_span(mesh: Mesh, rows: int) -> tuple[int, int]:
    """[lo, hi): the rows of a ``rows``-row batch (a multiple of the batch shards) that this process's
    devices hold under ``batch_sharding``, i.e. the rows it passes to ``global_batch``. (0, rows) on one process."""
    return _process_spans(mesh, rows)[jax.process_index()]


def owned_rows(mesh: Mesh, rows: int) -> range:
    """The rows of a ``rows``-row batch that this process writes out: those it holds that no lower-numbered
    process holds, so every row is written exactly once, also when processes hold the same rows (a
    batch replicated over a ``tensor`` axis that spans processes)."""
    spans = _process_spans(mesh, rows)
    me = jax.process_index()
    lo, hi = spans[me]
    for p, (l, h) in spans.items():
        if p < me and l <= lo < h:
            lo = min(h, hi)
    return range(lo, hi)


def local_rows(array: jax.Array, mesh: Mesh, rows: range) -> np.ndarray:
    """``array[rows]`` (leading axis = batch) as numpy, read from this process's own shards: no
    cross-process gather. An array not laid out over the batch axes is resharded first (a collective
    that every process runs, as they all call this alike)."""
    if array.is_fully_addressable:
        return np.asarray(array)[rows.start:rows.stop]
    sharding = batch_sharding(mesh)
    if not array.sharding.is_equivalent_to(sharding, array.ndim):
        array = jax.device_put(array, sharding)
    out = np.empty((len(rows), *array.shape[1:]), array.dtype)
    filled = np.zeros(len(rows), bool)
    for shard in array.addressable_shards:
        lo, hi, _ = shard.index[0].indices(array.shape[0])
        a, b = max(lo, rows.start), min(hi, rows.stop)
        if a < b:
            out[a - rows.start:b - rows.start] = np.asarray(shard.data)[a - lo:b - lo]
            filled[a - rows.start:b - rows.start] = True
    if not filled.all():
        raise ValueError(f"rows {rows.start}..{rows.stop - 1} are not all on process {jax.process_index()}'s devices")
    return out


def on_main(fn: Callable[[], Any], what: str) -> Any:
    """Run ``fn`` on process 0 alone and wait for it on every process; returns its result there (None elsewhere).

    When ``fn`` raises, process 0 re-raises its error and every other process raises a one-line error
    naming ``what``, instead of waiting for ever at the next collective. One process: just ``fn()``."""
    if jax.process_count() == 1:
        return fn()
    from jax.experimental import multihost_utils

    result, error = None, None
    if jax.process_index() == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, after the other processes learn of it
            error = e
    failed = bool(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"{what} failed on process 0 (its log has the error)")
    return result


_sync_steps = itertools.count()


def agreed_stop(guard) -> bool:
    """Whether every process stops now: ``guard.should_stop`` (a ``PreemptionGuard``) at the next number
    of a counter that only grows over this process's life. JAX's preemption sync point is the fastest
    process's last step number + 1, so a stage that numbered its batches from 0 after an earlier stage
    in the same process (generate then score) could miss it. Every process must call this alike."""
    return guard.should_stop(next(_sync_steps))


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (nothing to wait for with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
