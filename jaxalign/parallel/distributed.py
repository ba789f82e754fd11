"""Multi-process start-up and global batches.

`initialize(mode)` calls `jax.distributed.initialize` when the run spans several
processes: explicitly (`JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
`JAX_PROCESS_ID`, as `launch/local_multiprocess.sh` sets them) or detected by
JAX itself on SLURM and TPU pods.
"""

from __future__ import annotations

import logging
import os

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


def global_batch(local: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows -> global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}
