"""Tokenised examples -> fixed-shape numpy batches (the contract with the engine).

A *unit* is one row of a batch: a tuple of example indices (one example
unpacked, up to K packed), or ``None`` for an empty padding row. ``Collator``
builds the arrays of a whole global batch's rows or of one process's slice of
them; the padded length ``T`` is always chosen from the *global* batch (the
smallest bucket that fits its longest row), so every process agrees on shapes.

Sequence arrays, ``[B, T]`` int32, per prefix (``chosen_``/``rejected_`` for
``preference``, none for ``sft``, none and ``kl_`` for ``kto``, ``fwd_``/``bwd_``
for ``pairwise``):

- ``input_ids``: tokens, padded with the pad id;
- ``loss_mask``: 1 on response tokens to score (never on a segment's first
  token, which nothing predicts); the engine scores ``input_ids[:, 1:]`` with
  ``loss_mask[:, 1:]``; not built for ``pairwise``;
- ``positions``: 0.. restarting in each segment; 0 on padding;
- ``segment_ids``: 1..K per example in the row, 0 on padding.

Per-example arrays, ``[B, K]`` (K = segments per row; column k-1 belongs to
segment id k): ``example_mask`` int32, ``row_id`` int64 (-1 when empty), the
optional float columns as float32 (0 when empty), and for ``kto`` ``label``
int32 (1 desirable, 0 undesirable). ``pairwise`` adds ``fwd_last_index`` /
``bwd_last_index`` int32 ``[B]`` (last real token; 0 for empty rows) and,
when both scores are present, ``label`` float32 ``[B]`` = score_chosen - score_rejected.

With a cached teacher attached (``use_topk``, ``jaxalign.data.kd_cache``), preference batches also carry
``{side}_topk_ids`` / ``{side}_topk_logps`` ``[B, T, k]`` and ``{side}_topk_residual`` ``[B, T]`` for the
attached sides, aligned like ``loss_mask``.

KTO's ``kl_*`` rows pair global row g's prompt with the completion of the
next row of the global batch ((g+1) mod n), skipping rows from the same
source row; if every row shares one source row the pair stays matched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from jaxalign.data.errors import DataError

__all__ = ["Examples", "Collator", "select_bucket"]



@dataclass
class Examples:
    """Tokenised examples (int32 arrays), one entry per example.

    ``chosen`` is the response (SFT) or completion (KTO); ``rejected`` is set for
    pairs (``preference``, ``pairwise``); ``label`` (bool) for ``kto``.
    ``row_id`` is the source dataset row of each example.
    """

    prompt: list[np.ndarray]
    chosen: list[np.ndarray]
    rejected: list[np.ndarray] | None
    row_id: np.ndarray
    label: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompt)


def select_bucket(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= ``length`` (buckets sorted ascending)."""
    for b in buckets:
        if b >= length:
            return int(b)
    raise DataError(f"a row of {length} tokens does not fit the largest bucket {buckets[-1]}")


class Collator:
    """Builds batches of one task from ``Examples``.

    ``pairwise_ids``: token ids of the difference-model template pieces
    ``(a_prefix, b_prefix, suffix)``; an EOS ends every pairwise sequence.
    """

    def __init__(
        self,
        examples: Examples,
        task: str,
        *,
        segments_per_row: int,
        buckets: Sequence[int],
        pad_id: int,
        max_length: int,
        eos_id: int | None = None,
        pairwise_ids: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    ):
        self.ex = examples
        self.task = task
        self.K = segments_per_row
        self.buckets = sorted(buckets)
        self.pad_id = int(pad_id)
        self.max_length = max_length
        self.eos_id = eos_id
        self.pairwise_ids = pairwise_ids
        if task == "pairwise" and (pairwise_ids is None or eos_id is None):
            raise ValueError("pairwise collation needs pairwise_ids and eos_id")
        self.topk = None  # a matched jaxalign.data.kd_cache.TopKCache, or None
        self.topk_sides: tuple[str, ...] = ()

    def use_topk(self, cache, sides: Sequence[str]) -> None:
        """Add ``cache``'s arrays (``TopKCache``, already matched to these examples) for ``sides`` to every batch."""
        if self.task != "preference":
            raise DataError(f"cached teacher distributions need data.task='preference', not {self.task!r}")
        self.topk, self.topk_sides = cache, tuple(sides)

    # ------------------------------------------------------------------ lengths

    def example_length(self, i: int) -> int:
        """Tokens of example i in its longest sequence."""
        p = len(self.ex.prompt[i])
        if self.task == "pairwise":
            a, b, s = (len(x) for x in self.pairwise_ids)
            return p + a + b + s + 1 + len(self.ex.chosen[i]) + len(self.ex.rejected[i])
        n = p + len(self.ex.chosen[i])
        if self.ex.rejected is not None and self.task == "preference":
            n = max(n, p + len(self.ex.rejected[i]))
        return n

    def side_lengths(self) -> np.ndarray:
        """``[N, S]`` tokens per side (for packing): S=2 for preference, else 1."""
        p = np.array([len(x) for x in self.ex.prompt], dtype=np.int64)
        c = p + np.array([len(x) for x in self.ex.chosen], dtype=np.int64)
        if self.task == "preference":
            return np.stack([c, p + np.array([len(x) for x in self.ex.rejected], dtype=np.int64)], axis=1)
        return c[:, None]

    def unit_length(self, unit: tuple[int, ...] | None) -> int:
        """Longest sequence of a unit (packed: the sum over its examples, per side)."""
        if unit is None:
            return 0
        if len(unit) == 1:
            return self.example_length(unit[0])
        sides = self.side_lengths_of(unit)
        return int(sides.sum(axis=0).max())

    def side_lengths_of(self, unit: tuple[int, ...]) -> np.ndarray:
        rows = []
        for i in unit:
            p = len(self.ex.prompt[i])
            row = [p + len(self.ex.chosen[i])]
            if self.task == "preference":
                row.append(p + len(self.ex.rejected[i]))
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)

    # ------------------------------------------------------------------ batches

    def __call__(self, units: Sequence[tuple[int, ...] | None], rows: slice | None = None) -> dict[str, np.ndarray]:
        """Arrays for ``units[rows]`` (default: all), padded to the bucket of the whole ``units`` batch."""
        units = list(units)
        rows = rows if rows is not None else slice(0, len(units))
        kl_partner = self._kl_partners(units) if self.task == "kto" else None
        longest = max((self.unit_length(u) for u in units), default=0)
        if kl_partner is not None:
            longest = max([longest] + [self._kl_length(u, kl_partner[g]) for g, u in enumerate(units) if u is not None])
        T = select_bucket(max(longest, 1), self.buckets)
        local = units[rows]
        batch = self._per_example(local)
        if self.task == "preference":
            for side in ("chosen", "rejected"):
                batch.update(self._sequences(local, T, side, prefix=f"{side}_"))
                if side in self.topk_sides:
                    batch.update(self.topk.arrays(self.ex, local, T, side, prefix=f"{side}_"))
        elif self.task == "sft":
            batch.update(self._sequences(local, T, "chosen", prefix=""))
        elif self.task == "kto":
            batch.update(self._sequences(local, T, "chosen", prefix=""))
            batch.update(self._kl_sequences(local, kl_partner[rows], T))
        elif self.task == "pairwise":
            batch.update(self._pairwise(local, T))
        else:
            raise DataError(f"data.task: unknown task {self.task!r}")
        return batch

    def _per_example(self, units) -> dict[str, np.ndarray]:
        B, K = len(units), self.K
        out = {
            "example_mask": np.zeros((B, K), np.int32),
            "row_id": np.full((B, K), -1, np.int64),
        }
        for name in self.ex.extras:
            out[name] = np.zeros((B, K), np.float32)
        if self.task == "kto":
            out["label"] = np.zeros((B, K), np.int32)
        for r, unit in enumerate(units):
            for k, i in enumerate(unit or ()):
                out["example_mask"][r, k] = 1
                out["row_id"][r, k] = self.ex.row_id[i]
                for name, values in self.ex.extras.items():
                    out[name][r, k] = values[i]
                if self.task == "kto":
                    out["label"][r, k] = int(self.ex.label[i])
        return out

    def _empty(self, B: int, T: int, prefix: str, loss_mask: bool = True) -> dict[str, np.ndarray]:
        out = {
            f"{prefix}input_ids": np.full((B, T), self.pad_id, np.int32),
            f"{prefix}positions": np.zeros((B, T), np.int32),
            f"{prefix}segment_ids": np.zeros((B, T), np.int32),
        }
        if loss_mask:
            out[f"{prefix}loss_mask"] = np.zeros((B, T), np.int32)
        return out

    def _write(self, out, prefix: str, r: int, off: int, seg: int, pieces, scored) -> int:
        """Write one segment (pieces of ids; ``scored[j]`` marks response pieces) at ``off``; return the new offset."""
        start = off
        for ids, is_response in zip(pieces, scored):
            n = len(ids)
            out[f"{prefix}input_ids"][r, off : off + n] = ids
            if is_response and f"{prefix}loss_mask" in out:
                out[f"{prefix}loss_mask"][r, off : off + n] = 1
            off += n
        out[f"{prefix}positions"][r, start:off] = np.arange(off - start, dtype=np.int32)
        out[f"{prefix}segment_ids"][r, start:off] = seg
        if f"{prefix}loss_mask" in out and off > start:
            out[f"{prefix}loss_mask"][r, start] = 0  # nothing predicts a segment's first token
        return off

    def _sequences(self, units, T: int, side: str, prefix: str) -> dict[str, np.ndarray]:
        out = self._empty(len(units), T, prefix)
        responses = self.ex.chosen if side == "chosen" else self.ex.rejected
        for r, unit in enumerate(units):
            off = 0
            for seg, i in enumerate(unit or (), 1):
                off = self._write(out, prefix, r, off, seg, (self.ex.prompt[i], responses[i]), (False, True))
        return out

    # ------------------------------------------------------------------ KTO

    def _kl_partners(self, units) -> np.ndarray:
        """Example whose completion global row g pairs with in the KL rows; -1 for empty rows.

        The next real row ((g+1) mod n_real), skipping rows from the same source
        row (the other half of the same pair would not be a mismatched prompt).
        """
        real = [u[0] for u in units if u is not None]
        rows = [int(self.ex.row_id[i]) for i in real]
        n = len(real)
        partner = np.full(len(units), -1, np.int64)
        j = 0
        for g, u in enumerate(units):
            if u is None:
                continue
            pick = (j + 1) % n
            for step in range(1, n):
                if rows[(j + step) % n] != rows[j]:
                    pick = (j + step) % n
                    break
            partner[g] = real[pick]
            j += 1
        return partner

    def _kl_completion(self, i: int, j: int) -> np.ndarray:
        return self.ex.chosen[j][: self.max_length - len(self.ex.prompt[i])]

    def _kl_length(self, unit, j: int) -> int:
        i = unit[0]
        return len(self.ex.prompt[i]) + len(self._kl_completion(i, j))

    def _kl_sequences(self, units, partners, T: int) -> dict[str, np.ndarray]:
        out = self._empty(len(units), T, "kl_")
        for r, (unit, j) in enumerate(zip(units, partners)):
            if unit is None:
                continue
            i = unit[0]
            self._write(out, "kl_", r, 0, 1, (self.ex.prompt[i], self._kl_completion(i, int(j))), (False, True))
        return out

    # ------------------------------------------------------------------ difference model

    def _pairwise(self, units, T: int) -> dict[str, np.ndarray]:
        a_pre, b_pre, suffix = self.pairwise_ids
        eos = np.asarray([self.eos_id], np.int32)
        B = len(units)
        out = {}
        orders = (("fwd", self.ex.chosen, self.ex.rejected), ("bwd", self.ex.rejected, self.ex.chosen))
        for name, first, second in orders:
            arrs = self._empty(B, T, f"{name}_", loss_mask=False)
            last = np.zeros((B,), np.int32)
            for r, unit in enumerate(units):
                if unit is None:
                    continue
                i = unit[0]
                pieces = (self.ex.prompt[i], a_pre, first[i], b_pre, second[i], suffix, eos)
                end = self._write(arrs, f"{name}_", r, 0, 1, pieces, (False,) * len(pieces))
                last[r] = end - 1
            arrs[f"{name}_last_index"] = last
            out.update(arrs)
        if "score_chosen" in self.ex.extras and "score_rejected" in self.ex.extras:
            out["label"] = self._score_diff(units)
        return out

    def _score_diff(self, units) -> np.ndarray:
        label = np.zeros((len(units),), np.float32)
        for r, unit in enumerate(units):
            if unit is not None:
                i = unit[0]
                label[r] = self.ex.extras["score_chosen"][i] - self.ex.extras["score_rejected"][i]
        return label
