"""Parameter shardings from the `out_sharding` annotations on NNX parameters.

A dimension is replicated only where its annotation says so (`None`), or where the
annotated mesh axis is absent or of size 1. An annotated dimension that the mesh axis
does not divide is an error naming the parameter, the dimension and the axis, never a
silent fallback to replication (which would multiply that parameter's memory by the
axis size on every device).
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

__all__ = ["ShardingError", "param_name", "param_sharding", "partition_spec", "state_shardings"]


class ShardingError(ValueError):
    """A parameter's annotated dimension does not divide over its mesh axis."""


def partition_spec(names: tuple, shape: tuple[int, ...], mesh: Mesh, *, name: str | None = None) -> PartitionSpec:
    """PartitionSpec for a parameter of `shape` annotated with mesh axis `names` (None per
    replicated dimension). An axis absent from the mesh or of size 1 leaves its dimension
    whole; an axis that does not divide its dimension raises `ShardingError`."""
    if len(names) != len(shape):
        raise ShardingError(f"{name or 'parameter'}: sharding annotation {tuple(names)} has {len(names)} entries "
                            f"for a parameter of shape {tuple(shape)}")
    spec = []
    for i, (axis, dim) in enumerate(zip(names, shape)):
        if axis is None or axis not in mesh.shape or mesh.shape[axis] == 1:
            spec.append(None)
        elif dim % mesh.shape[axis]:
            raise ShardingError(
                f"{name or 'parameter'} of shape {tuple(shape)}: dimension {i} (size {dim}) is not divisible by "
                f"mesh axis {axis}={mesh.shape[axis]}; set mesh.{axis} to a divisor of {dim}")
        else:
            spec.append(axis)
    return PartitionSpec(*spec)


def param_sharding(variable, mesh: Mesh | None, *, name: str | None = None) -> jax.sharding.Sharding:
    """Where a parameter lives: by its annotation on `mesh`, or on the default device.
    `name` (e.g. ``decoder.layers.q_proj``) is only used in error messages."""
    if mesh is None:
        return SingleDeviceSharding(jax.devices()[0])
    names = variable.get_metadata().get("out_sharding") or (None,) * len(variable.shape)
    return NamedSharding(mesh, partition_spec(tuple(names), tuple(variable.shape), mesh, name=name))


def param_name(path) -> str:
    """Dotted parameter name of a tree path, e.g. ``decoder.layers.q_proj`` or ``score``."""
    names = [str(getattr(p, "key", getattr(p, "name", p))) for p in path]
    return ".".join(n for n in names if n not in ("", "value"))


def state_shardings(state, mesh: Mesh | None):
    """`param_sharding` of every variable of an NNX state, errors naming each parameter by its path."""
    return jax.tree_util.tree_map_with_path(
        lambda path, v: param_sharding(v, mesh, name=param_name(path)), state,
        is_leaf=lambda x: isinstance(x, nnx.Variable))
