"""Parameter shardings from the `out_sharding` annotations on NNX parameters."""

from __future__ import annotations

import logging

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

log = logging.getLogger(__name__)


def partition_spec(names: tuple, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    """PartitionSpec for a parameter; an axis that is absent from the mesh, or that
    does not divide the dimension, is dropped (that dimension is replicated)."""
    spec = []
    for name, dim in zip(names, shape):
        if name is None or name not in mesh.shape or mesh.shape[name] == 1:
            spec.append(None)
        elif dim % mesh.shape[name]:
            log.warning("dimension %d is not divisible by mesh axis %s=%d: replicated", dim, name, mesh.shape[name])
            spec.append(None)
        else:
            spec.append(name)
    return PartitionSpec(*spec)


def param_sharding(variable, mesh: Mesh | None) -> jax.sharding.Sharding:
    """Where a parameter lives: by its annotation on `mesh`, or on the default device."""
    if mesh is None:
        return SingleDeviceSharding(jax.devices()[0])
    names = variable.get_metadata().get("out_sharding") or (None,) * len(variable.shape)
    return NamedSharding(mesh, partition_spec(tuple(names), tuple(variable.shape), mesh))
