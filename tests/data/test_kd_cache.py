"""jaxalign.data.kd_cache: the top-k cache file round trip and its arrays in (packed) batches."""

import numpy as np
import pytest

from jaxalign.data import Collator, DataError, Examples
from jaxalign.data.kd_cache import SIDES, TopKCache, TopKCacheWriter, read_record, response_targets

K = 3


def _examples():
    rng = np.random.default_rng(0)
    tok = lambda n: rng.integers(1, 50, n).astype(np.int32)  # noqa: E731
    # example 1 has an empty prompt: its responses' first tokens are not scored
    return Examples(prompt=[tok(3), tok(0), tok(2)], chosen=[tok(4), tok(3), tok(5)],
                    rejected=[tok(2), tok(4), tok(3)], row_id=np.arange(3))


def _entry(i, t):
    """Distinct, recognisable cached values of example i's t-th scored token."""
    return np.arange(K) + 10 * t + 1000 * i, -(t + 0.1 * i) - np.arange(K), -float(t) - 0.5


def _write_cache(path, ex, order=(0, 1, 2)):
    writer = TopKCacheWriter(path, K)
    rows = []
    for i in range(len(ex)):
        row = {"row": 10 + i}  # source ids: the scored file's rows are their rank in `order`
        for side in SIDES:
            targets = response_targets(ex, i, side)
            entries = [_entry(i, t) for t in range(len(targets))]
            row[f"{side}_targets"] = targets
            row[f"{side}_topk_ids"] = np.array([e[0] for e in entries], np.int32).reshape(-1, K)
            row[f"{side}_topk_logps"] = np.array([e[1] for e in entries], np.float32).reshape(-1, K)
            row[f"{side}_topk_residual"] = np.array([e[2] for e in entries], np.float32)
        rows.append(row)
    writer.write(rows[:2], process=0)
    writer.write(rows[1:], process=1)  # a recomputed row (1) is kept once
    assert not writer.complete
    return writer.finish([10 + i for i in order], {"vocab_size": 64})


def test_packed_batches_carry_each_scored_token_s_cache_entry(tmp_path):
    ex = _examples()
    cache = TopKCache(_write_cache(tmp_path / "c.parquet", ex))
    assert (cache.k, cache.record["rows"], cache.record["vocab_size"]) == (K, 3, 64) and cache.record["responses"]
    assert not (tmp_path / "c.parquet.partial").exists()
    cache.match(ex)
    collator = Collator(ex, "preference", segments_per_row=2, buckets=[32], pad_id=0, max_length=32)
    collator.use_topk(cache, SIDES)
    units = [(0, 1), (2,), None]
    batch = collator(units)
    for side in SIDES:
        ids, logps, res = (batch[f"{side}_topk_{n}"] for n in ("ids", "logps", "residual"))
        assert ids.shape == (3, 32, K) and logps.shape == (3, 32, K) and res.shape == (3, 32)
        for r, unit in enumerate(units):
            pos = np.flatnonzero(batch[f"{side}_loss_mask"][r])
            want = [(i, t) for i in unit or () for t in range(len(response_targets(ex, i, side)))]
            assert len(pos) == len(want)
            np.testing.assert_array_equal(batch[f"{side}_input_ids"][r, pos],
                                          np.concatenate([response_targets(ex, i, side) for i in unit or ()] or [[]]))
            for p, (i, t) in zip(pos, want):
                e = _entry(i, t)
                np.testing.assert_array_equal(ids[r, p], e[0])
                np.testing.assert_allclose(logps[r, p], e[1], rtol=1e-6)
                assert res[r, p] == np.float32(e[2])
            off = np.ones(32, bool)
            off[pos] = False
            assert not ids[r, off].any() and not logps[r, off].any() and not res[r, off].any()


def test_only_the_attached_sides_are_carried(tmp_path):
    ex = _examples()
    cache = TopKCache(_write_cache(tmp_path / "c.parquet", ex))
    cache.match(ex)
    collator = Collator(ex, "preference", segments_per_row=1, buckets=[16], pad_id=0, max_length=16)
    collator.use_topk(cache, ("rejected",))
    batch = collator([(0,), (1,)])
    assert "rejected_topk_ids" in batch and not any(k.startswith("chosen_topk") for k in batch)


def test_rows_are_matched_by_their_place_in_the_scored_file(tmp_path):
    """`finish` numbers the rows in the given order: example 0 (source id 12) is the scored file's row 2."""
    ex = _examples()
    cache = TopKCache(_write_cache(tmp_path / "c.parquet", ex, order=(2, 0, 1)))
    with pytest.raises(DataError, match=r"row 0: the chosen response's tokens differ"):
        cache.match(ex)


def test_mismatches_and_bad_files_are_named(tmp_path):
    ex = _examples()
    path = _write_cache(tmp_path / "c.parquet", ex)
    edited = _examples()
    edited.rejected[2] = edited.rejected[2][:-1]
    with pytest.raises(DataError, match=r"loss.kd_cache=.*c.parquet: row 2: the rejected response's tokens differ .*"
                                        r"\(2 vs 3 tokens"):
        TopKCache(path).match(edited)
    more = Examples(prompt=ex.prompt + [ex.prompt[0]], chosen=ex.chosen + [ex.chosen[0]],
                    rejected=ex.rejected + [ex.rejected[0]], row_id=np.arange(4))
    with pytest.raises(DataError, match=r"c.parquet: no entry for row 3"):
        TopKCache(path).match(more)
    with pytest.raises(DataError, match=r"loss.kd_cache=.*nope.parquet: no such file"):
        TopKCache(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"junk.parquet: not a readable Parquet file"):
        TopKCache(tmp_path / "junk.parquet")
    with pytest.raises(DataError, match=r"cached teacher distributions need data.task='preference'"):
        Collator(ex, "sft", segments_per_row=1, buckets=[16], pad_id=0, max_length=16).use_topk(TopKCache(path), SIDES)


def test_finish_refuses_a_cache_missing_scored_rows(tmp_path):
    writer = TopKCacheWriter(tmp_path / "c.parquet", K)
    with pytest.raises(DataError, match=r"no entry for scored row\(s\) \[10\]"):
        writer.finish([10], {})
    assert not (tmp_path / "c.parquet").exists()


def test_read_record_reads_the_metadata_alone_with_the_same_errors(tmp_path):
    path = _write_cache(tmp_path / "c.parquet", _examples())
    record = read_record(path)
    assert record == TopKCache(path).record and record["k"] == K and record["vocab_size"] == 64
    with pytest.raises(DataError, match=r"loss.kd_cache=.*nope.parquet: no such file"):
        read_record(tmp_path / "nope.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"junk.parquet: not a readable Parquet file"):
        read_record(tmp_path / "junk.parquet")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"row": [0]}), str(tmp_path / "plain.parquet"))
    with pytest.raises(DataError, match=r"plain.parquet: not a jaxalign top-k cache"):
        read_record(tmp_path / "plain.parquet")
