"""Greedy first-fit packing of examples into rows of fixed capacity.

Each example has one length per *side* (1 side for SFT, 2 for preference
pairs: chosen and rejected). A row takes an example only if every side still
fits, so pairs pack in **lockstep**: row i of the chosen tensor and row i of
the rejected tensor hold the same pairs, in the same segment order. At most
``max_segments`` examples go in a row; at most ``max_open`` rows are open at
once (the oldest is closed when more are needed), which keeps packing
``O(N * max_open)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["pack_first_fit"]


def pack_first_fit(
    lengths: np.ndarray, capacity: int, max_segments: int, *, order: np.ndarray | None = None, max_open: int = 64
) -> list[tuple[int, ...]]:
    """Group example indices into rows.

    Args:
      lengths: ``[N, S]`` int, tokens of example n on side s (each <= capacity).
      capacity: tokens per row (per side).
      max_segments: maximum examples per row (K).
      order: visiting order of the examples (default ``0..N-1``).
      max_open: rows kept open for first-fit.

    Returns:
      Rows as tuples of example indices, in the order the rows were opened;
      within a row, examples keep the visiting order (segment 1, 2, ...).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim == 1:
        lengths = lengths[:, None]
    if len(lengths) and lengths.max() > capacity:
        raise ValueError(f"an example of {int(lengths.max())} tokens exceeds the row capacity {capacity}")
    order = np.arange(len(lengths)) if order is None else np.asarray(order)
    # Room left per side; plain Python ints (this loop is the hot path).
    sizes = [tuple(row) for row in lengths.tolist()]
    rows: list[list[int]] = []
    room: list[list[int]] = []
    open_rows: list[int] = []  # indices into rows, oldest first
    for n in order.tolist():
        need = sizes[n]
        for slot, r in enumerate(open_rows):
            left = room[r]
            if all(x <= y for x, y in zip(need, left)):
                rows[r].append(n)
                room[r] = left = [y - x for x, y in zip(need, left)]
                if len(rows[r]) >= max_segments or min(left) == 0:
                    open_rows.pop(slot)
                break
        else:
            rows.append([n])
            left = [capacity - x for x in need]
            room.append(left)
            if max_segments > 1 and min(left) > 0:
                open_rows.append(len(rows) - 1)
                if len(open_rows) > max_open:
                    open_rows.pop(0)
    return [tuple(r) for r in rows]
