"""The device mesh: axes `data`, `fsdp`, `tensor` (GSPMD auto sharding)."""

from __future__ import annotations

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all); one axis may be -1 (= the rest)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
    free = [k for k, v in sizes.items() if v == -1]
    if len(free) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {free}")
    known = 1
    for k, v in sizes.items():
        if v != -1 and v < 1:
            raise ValueError(f"mesh.{k}={v} must be a positive integer or -1")
        known *= v if v != -1 else 1
    if free:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices are not divisible by the fixed mesh axes (product {known})")
        sizes[free[0]] = len(devices) // known
    total = sizes["data"] * sizes["fsdp"] * sizes["tensor"]
    if not free and total < len(devices) and jax.process_count() == 1:
        devices = devices[:total]  # an explicit smaller mesh (e.g. 1 device) runs on the first devices
    if total != len(devices):
        raise ValueError(
            f"mesh data={sizes['data']} x fsdp={sizes['fsdp']} x tensor={sizes['tensor']} = {total} "
            f"does not match the {len(devices)} available devices"
        )
    return jax.make_mesh(
        tuple(sizes[a] for a in MESH_AXES), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices
    )
