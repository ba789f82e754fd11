"""jaxalign.data.batching: deterministic shuffle, resume from state, process slices, remainders."""

import json

import numpy as np
import pytest

from jaxalign.data import Batcher, DataConfig, DataError, prepare


@pytest.fixture(scope="module")
def data(tok, pairs):
    rows = pairs(10)
    rows[3]["chosen"] = "The quick brown fox jumps over the lazy dog. " * 2  # one long row: buckets differ
    return prepare(rows, tok, DataConfig(max_length=64, min_bucket=16, batch_size=4))


def _row_ids(batcher, n):
    return [next(batcher)["row_id"][:, 0].tolist() for _ in range(n)]


def test_same_seed_same_order_different_seed_different_order(data):
    a = _row_ids(Batcher(data, 2, seed=1), 5)
    assert a == _row_ids(Batcher(data, 2, seed=1), 5)
    assert a != _row_ids(Batcher(data, 2, seed=2), 5)
    assert sorted(sum(a, [])) == list(range(10))  # one epoch visits every row once


def test_epochs_reshuffle(data):
    b = Batcher(data, 5, seed=0)
    first, second = sum(_row_ids(b, 2), []), sum(_row_ids(b, 2), [])
    assert sorted(first) == sorted(second) == list(range(10)) and first != second


def test_resume_from_state_dict_gives_the_same_next_batches(data):
    b = Batcher(data, 3, seed=7)
    _row_ids(b, 4)  # crosses the epoch boundary (3 steps per epoch)
    state = json.loads(json.dumps(b.state_dict()))
    assert state["epoch"] == 1 and state["step"] == 1
    expected = [next(b) for _ in range(4)]
    resumed = Batcher(data, 3, seed=7)
    resumed.load_state_dict(state)
    for want in expected:
        got = next(resumed)
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_resume_refuses_a_different_batch_size(data):
    state = Batcher(data, 3).state_dict()
    with pytest.raises(DataError, match="batch_size"):
        Batcher(data, 2).load_state_dict(state)


def test_union_of_process_slices_is_the_single_process_batch(data):
    full = Batcher(data, 4, seed=3)
    procs = [Batcher(data, 4, seed=3, process_index=p, process_count=2) for p in range(2)]
    for _ in range(2):
        want = next(full)
        parts = [next(p) for p in procs]
        assert parts[0]["row_id"].shape == (2, 1)
        for key in want:
            assert np.array_equal(np.concatenate([p[key] for p in parts]), want[key]), key


def test_batch_size_must_divide_by_process_count(data):
    with pytest.raises(DataError, match="divisible"):
        Batcher(data, 3, process_index=0, process_count=2)


def test_drop_remainder(data):
    assert Batcher(data, 4, drop_remainder=True).steps_per_epoch == 2
    b = Batcher(data, 4, drop_remainder=False, shuffle=False)
    assert b.steps_per_epoch == 3
    last = b.batch(0, 2)
    assert last["row_id"][:, 0].tolist() == [8, 9, -1, -1]
    assert last["example_mask"][:, 0].tolist() == [1, 1, 0, 0]
    assert (last["chosen_segment_ids"][2:] == 0).all() and (last["chosen_loss_mask"][2:] == 0).all()


def test_num_epochs_stops_iteration(data):
    assert len(list(Batcher(data, 5, num_epochs=2))) == 4
