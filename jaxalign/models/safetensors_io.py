"""Reading a (possibly sharded) safetensors checkpoint lazily, with clear errors.

Tensors are read slice by slice through `safe_open(...).get_slice`, so a device
callback reads only the part of a tensor it places; the file itself is mapped,
never loaded whole.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from safetensors import safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or does not match the model."""


def _check_file(path: Path) -> list[str]:
    """Validate the header and that every tensor's bytes lie inside the file; return names."""
    size = path.stat().st_size
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise CheckpointError(
                f"{path}: truncated or corrupt safetensors file (header says {header_len} bytes, file has {size})"
            )
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    data_size = size - 8 - header_len
    names = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) and o >= 0 for o in offsets)):
            raise CheckpointError(f"{path}: corrupt safetensors header (tensor {name!r} has no valid data_offsets)")
        end = offsets[1]
        if end > data_size:
            raise CheckpointError(
                f"{path}: truncated safetensors file: tensor {name!r} ends at byte {end} of the data "
                f"section but the file holds only {data_size} data bytes"
            )
        names.append(name)
    return names


def _check_inside(folder: Path, name: str, index: Path) -> None:
    """Refuse a shard name that leaves the model folder (absolute, ``..``, or a link pointing out of it)."""
    root = folder.resolve()
    target = (folder / name).resolve()
    if Path(name).is_absolute() or ".." in Path(name).parts or root not in target.parents:
        raise CheckpointError(f"{index}: shard {name!r} is outside the model folder {folder}; "
                              "a checkpoint may only name files inside its folder")


class SafetensorsReader:
    """Name -> lazily readable tensor over `model.safetensors` or an indexed set of shards."""

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.folder = folder
        index = folder / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({type(e).__name__}: {e})") from None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names")
            files = sorted(set(weight_map.values()))
            for name in files:
                _check_inside(folder, name, index)
        elif (folder / SINGLE_FILE).is_file():
            files = [SINGLE_FILE]
            weight_map = None
        else:
            found = sorted(p.name for p in folder.glob("*.safetensors"))
            if len(found) == 1:
                files, weight_map = found, None
            else:
                others = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
                raise CheckpointError(
                    f"{folder}: no {SINGLE_FILE} or {INDEX_FILE} found (folder holds: {', '.join(others) or 'nothing'}); "
                    "jaxalign reads safetensors checkpoints only"
                )
        self.location: dict[str, Path] = {}
        for name in files:
            path = folder / name
            if not path.is_file():
                raise CheckpointError(f"{path}: shard listed in {INDEX_FILE} is missing")
            for tensor in _check_file(path):
                self.location[tensor] = path
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(self.location))
            if missing:
                raise CheckpointError(f"{index}: tensor {missing[0]!r} is listed but not in {weight_map[missing[0]]}")
        self._handles: dict[Path, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.location

    def names(self) -> list[str]:
        return sorted(self.location)

    def _slice(self, name: str):
        if name not in self.location:
            raise CheckpointError(f"{self.folder}: tensor {name!r} is missing from the checkpoint")
        path = self.location[name]
        if path not in self._handles:
            self._handles[path] = safe_open(str(path), framework="numpy")
        return self._handles[path].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def read(self, name: str, index: tuple[slice, ...] | None = None) -> np.ndarray:
        """The tensor, or the part of it selected by `index` (a tuple of slices)."""
        sl = self._slice(name)
        return sl[index] if index is not None else sl[:]

    def close(self):
        self._handles.clear()
