"""jaxalign.data.packing: greedy first-fit, per-side capacity (lockstep), segment cap."""

import numpy as np
import pytest

from jaxalign.data import pack_first_fit


def test_first_fit_fills_earlier_rows_first():
    rows = pack_first_fit(np.array([6, 5, 3, 4, 2]), capacity=10, max_segments=8)
    assert rows == [(0, 2), (1, 3), (4,)]


def test_lockstep_checks_every_side():
    # Side 0 would fit all in one row; side 1 does not.
    lengths = np.array([[2, 6], [2, 6], [2, 3]])
    rows = pack_first_fit(lengths, capacity=10, max_segments=8)
    for r in rows:
        assert lengths[list(r)].sum(axis=0).max() <= 10
    assert rows == [(0, 2), (1,)]


def test_segment_cap_and_order():
    rows = pack_first_fit(np.ones(7, int), capacity=100, max_segments=3, order=np.array([6, 5, 4, 3, 2, 1, 0]))
    assert rows == [(6, 5, 4), (3, 2, 1), (0,)]


def test_example_longer_than_capacity_is_refused():
    with pytest.raises(ValueError, match="exceeds"):
        pack_first_fit(np.array([3, 11]), capacity=10, max_segments=2)
