"""Epoch iteration: deterministic shuffling, process slicing, resumable position.

``Batcher`` walks the units (rows) of a ``PreparedData`` in a per-epoch
permutation drawn from ``(seed, epoch)``, cuts global batches of
``batch_size`` units and returns, for this process, rows
``[process_index * b, (process_index + 1) * b)`` with
``b = batch_size / process_count`` (an error if not divisible). The padded
length comes from the whole global batch, so all processes build arrays of
the same shape (ready for ``jax.make_array_from_process_local_data``).

The position is explicit: ``state_dict() == {"epoch", "step", ...}`` names the
*next* batch; ``load_state_dict`` resumes exactly there. With
``drop_remainder=False`` the last batch of an epoch is padded with empty rows
(``example_mask`` 0, ``row_id`` -1) so shapes stay fixed.
"""

from __future__ import annotations

import math
from typing import Any, Iterator

import numpy as np

from jaxalign.data.errors import DataError

__all__ = ["Batcher", "epoch_order"]


def epoch_order(num_units: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The order units are visited in ``epoch``: a permutation from ``(seed, epoch)``, or identity."""
    if not shuffle:
        return np.arange(num_units)
    return np.random.default_rng([int(seed), int(epoch)]).permutation(num_units)


class Batcher:
    """Fixed-shape numpy batches over epochs for one process.

    Args:
      data: a ``PreparedData`` (anything with ``units`` and ``collate(units, rows)``).
      batch_size: global batch size (rows per step over all processes).
      process_index, process_count: this process's slice of each global batch.
      shuffle, seed: per-epoch permutation from ``(seed, epoch)``.
      drop_remainder: drop (True) or pad (False) the last incomplete batch.
      num_epochs: stop after this many epochs (None: iterate forever).
    """

    def __init__(
        self,
        data: Any,
        batch_size: int,
        *,
        process_index: int = 0,
        process_count: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_remainder: bool = True,
        num_epochs: int | None = None,
    ):
        if batch_size < 1:
            raise DataError(f"data.batch_size must be >= 1, got {batch_size}")
        if process_count < 1 or not 0 <= process_index < process_count:
            raise DataError(f"process_index {process_index} out of range for process_count {process_count}")
        if batch_size % process_count:
            raise DataError(
                f"data.batch_size ({batch_size}) must be divisible by the number of processes ({process_count})"
            )
        self.data = data
        self.batch_size = batch_size
        self.process_index = process_index
        self.process_count = process_count
        self.shuffle = shuffle
        self.seed = seed
        self.drop_remainder = drop_remainder
        self.num_epochs = num_epochs
        self.num_units = len(data.units)
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the dataset has {self.num_units} rows after preparation, fewer than one batch "
                f"(data.batch_size={batch_size}, drop_remainder=True)"
            )
        self.epoch = 0
        self.step = 0
        self._order_cache: tuple[int, np.ndarray] | None = None

    @classmethod
    def from_config(cls, data: Any, config: Any, *, process_index: int = 0, process_count: int = 1, **kw) -> "Batcher":
        """A batcher with ``batch_size``, ``shuffle``, ``seed`` and ``drop_remainder`` from a ``DataConfig``."""
        return cls(
            data,
            config.batch_size,
            process_index=process_index,
            process_count=process_count,
            shuffle=config.shuffle,
            seed=config.seed,
            drop_remainder=config.drop_remainder,
            **kw,
        )

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.process_count

    @property
    def steps_per_epoch(self) -> int:
        if self.drop_remainder:
            return self.num_units // self.batch_size
        return math.ceil(self.num_units / self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        if self._order_cache is None or self._order_cache[0] != epoch:
            self._order_cache = (epoch, epoch_order(self.num_units, self.seed, epoch, self.shuffle))
        return self._order_cache[1]

    def global_units(self, epoch: int, step: int) -> list:
        """The units of global batch ``step`` of ``epoch`` (``None`` for padding rows)."""
        if not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step} out of range (steps_per_epoch={self.steps_per_epoch})")
        idx = self.order(epoch)[step * self.batch_size : (step + 1) * self.batch_size]
        units = [self.data.units[i] for i in idx.tolist()]
        return units + [None] * (self.batch_size - len(units))

    def batch(self, epoch: int, step: int, *, local: bool = True) -> dict[str, np.ndarray]:
        """Batch ``step`` of ``epoch``: this process's rows (``local``) or the whole global batch."""
        units = self.global_units(epoch, step)
        if not local:
            return self.data.collate(units)
        b = self.local_batch_size
        return self.data.collate(units, slice(self.process_index * b, (self.process_index + 1) * b))

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.num_epochs is not None and self.epoch >= self.num_epochs:
            raise StopIteration
        out = self.batch(self.epoch, self.step)
        self.step += 1
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, int]:
        """Position of the next batch, plus what must match on resume. Plain ints (JSON/Orbax friendly)."""
        return {
            "epoch": int(self.epoch),
            "step": int(self.step),
            "seed": int(self.seed),
            "num_units": int(self.num_units),
            "batch_size": int(self.batch_size),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s position; refuses a state saved over different data or batch size."""
        for key in ("seed", "num_units", "batch_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise DataError(
                    f"cannot resume the data position: {key} was {int(state[key])} when saved, "
                    f"now {getattr(self, key)} (different data or config)"
                )
        epoch, step = int(state["epoch"]), int(state["step"])
        if not 0 <= step < self.steps_per_epoch:
            raise DataError(f"saved data step {step} out of range (steps_per_epoch={self.steps_per_epoch})")
        self.epoch, self.step = epoch, step
