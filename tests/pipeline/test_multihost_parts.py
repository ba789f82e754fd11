"""The part files of multi-process ``generate``/``score`` runs and how one process folds them into the output."""

import json

import jax
import numpy as np
import pytest

from jaxalign.data import DataError
from jaxalign.parallel import distributed
from jaxalign.parallel.mesh import make_mesh
from jaxalign.pipeline.rows import RowWriter, fold_parts, part_files, part_path


def _lines(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_part_files_are_those_of_the_output_in_any_process_count(tmp_path):
    out = tmp_path / "gen.jsonl"
    names = ["gen.jsonl.part-1-of-2.jsonl", "gen.jsonl.part-0-of-2.jsonl", "gen.jsonl.part-0-of-1.jsonl",
             "gen.jsonl.part-x-of-2.jsonl", "gen.jsonl.part-0-of-2.jsonl.tmp", "other.jsonl.part-0-of-2.jsonl"]
    for name in names:
        (tmp_path / name).write_text("")
    assert part_path(out, 1, 2) == tmp_path / "gen.jsonl.part-1-of-2.jsonl"
    assert [p.name for p in part_files(out)] == ["gen.jsonl.part-0-of-1.jsonl", "gen.jsonl.part-0-of-2.jsonl",
                                                 "gen.jsonl.part-1-of-2.jsonl"]


def test_fold_keeps_each_key_once_in_order_and_cuts_a_torn_line(tmp_path):
    out = tmp_path / "gen.jsonl"
    out.write_text(_lines([{"k": "c", "i": 2, "v": "stream"}]))
    # Parts of an interrupted 2-process run and of an older 3-process one; process 1's last line is torn.
    part_path(out, 0, 2).write_text(_lines([{"k": "a", "i": 0}, {"k": "c", "i": 2, "v": "part"}]))
    part_path(out, 1, 2).write_text(_lines([{"k": "d", "i": 3}]) + '{"k": "e", "i"')
    part_path(out, 2, 3).write_text(_lines([{"k": "b", "i": 1}]))
    writer = RowWriter(out, key="k")
    moved = fold_parts(writer, lambda r: r["i"])
    assert moved == 3  # a, d, b: c was already in the stream, e never completed
    assert _rows(out) == [{"k": "a", "i": 0}, {"k": "b", "i": 1}, {"k": "c", "i": 2, "v": "stream"}, {"k": "d", "i": 3}]
    assert part_files(out) == []
    assert writer.done_ids == {"a", "b", "c", "d"} and writer.rows_done == 4
    writer.write([{"k": "e", "i": 4}])  # the writer goes on appending to the folded stream
    assert [r["k"] for r in _rows(out)] == ["a", "b", "c", "d", "e"]


def test_fold_into_a_staged_stream_and_without_parts(tmp_path):
    out = tmp_path / "scored.parquet"
    writer = RowWriter(out, key="row", staged=True)
    assert fold_parts(writer, lambda r: r["row"]) == 0 and not writer.stream.exists()  # nothing to fold: nothing written
    part_path(out, 1, 2).write_text(_lines([{"row": 5}, {"row": 4}]))
    part_path(out, 0, 2).write_text(_lines([{"row": 1}]))
    assert fold_parts(writer, lambda r: r["row"]) == 3
    assert _rows(writer.stream) == [{"row": 1}, {"row": 4}, {"row": 5}] and not out.exists()
    writer.finish()
    assert out.is_file() and not writer.stream.exists()


def test_a_bad_line_in_a_part_is_named_and_nothing_changes(tmp_path):
    out = tmp_path / "gen.jsonl"
    out.write_text(_lines([{"k": "a"}]))
    good, bad = part_path(out, 0, 2), part_path(out, 1, 2)
    good.write_text(_lines([{"k": "b"}]))
    bad.write_text(_lines([{"k": "c"}]) + "not json\n" + _lines([{"k": "d"}]))
    with pytest.raises(DataError, match=r"gen\.jsonl\.part-1-of-2\.jsonl:2: not valid JSON"):
        fold_parts(RowWriter(out, key="k"), lambda r: r["k"])
    assert _rows(out) == [{"k": "a"}] and good.exists() and bad.exists()


def test_retain_without_rewrite_agrees_with_the_rewrite(tmp_path):
    rows = [{"k": "a"}, {"k": "x"}, {"k": "a"}, {"k": "b"}]
    first, second = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    first.write_text(_lines(rows))
    second.write_text(_lines(rows))
    reader, rewriter = RowWriter(first, key="k"), RowWriter(second, key="k")
    assert reader.retain({"a", "b"}, rewrite=False) == rewriter.retain({"a", "b"}) == (1, 1)
    assert (reader.done_ids, reader.rows_done) == (rewriter.done_ids, rewriter.rows_done) == ({"a", "b"}, 2)
    assert _rows(first) == rows and _rows(second) == [{"k": "a"}, {"k": "b"}]  # only the rewriting process writes


def test_one_process_holds_and_owns_every_row():
    mesh = make_mesh(1, 4, 2)
    assert distributed.row_span(mesh, 8) == (0, 8) and distributed.owned_rows(mesh, 8) == range(0, 8)
    local = {"x": np.arange(16, dtype=np.int32).reshape(8, 2)}
    batch = distributed.global_batch(local, mesh, rows=8)
    assert batch["x"].sharding.is_equivalent_to(distributed.batch_sharding(mesh), 2)
    np.testing.assert_array_equal(distributed.local_rows(batch["x"], mesh, range(2, 5)), local["x"][2:5])
    replicated = jax.device_put(local["x"], jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
    np.testing.assert_array_equal(distributed.local_rows(replicated, mesh, range(0, 8)), local["x"])


class _FakeSharding:
    """``devices_indices_map`` of a batch laid out as ``blocks``: (process, start, stop) per device."""

    def __init__(self, blocks):
        self.blocks = blocks

    def devices_indices_map(self, shape):
        return {type("Device", (), {"process_index": p, "id": i})(): (slice(lo, hi),)
                for i, (p, lo, hi) in enumerate(self.blocks)}


@pytest.mark.parametrize("blocks, spans, owned", [
    # batch split over processes (data/fsdp across hosts): each owns its block
    ([(0, 0, 2), (0, 2, 4), (1, 4, 6), (1, 6, 8)], [(0, 4), (4, 8)], [range(0, 4), range(4, 8)]),
    # batch replicated over processes (a tensor axis across hosts): the lowest process owns the rows
    ([(0, 0, 4), (1, 0, 4), (0, 4, 8), (1, 4, 8)], [(0, 8), (0, 8)], [range(0, 8), range(8, 8)]),
])
def test_spans_and_owned_rows_per_process(monkeypatch, blocks, spans, owned):
    monkeypatch.setattr(distributed, "batch_sharding", lambda mesh: _FakeSharding(blocks))
    for p in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        assert distributed.row_span(None, 8) == spans[p]
        assert distributed.owned_rows(None, 8) == owned[p]


def test_a_process_holding_rows_apart_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "batch_sharding", lambda mesh: _FakeSharding([(0, 0, 2), (1, 2, 4), (0, 4, 6), (1, 6, 8)]))
    monkeypatch.setattr(distributed.jax, "process_index", lambda: 0)
    with pytest.raises(ValueError, match="process 0's devices hold rows that are not one block"):
        distributed.row_span(type("Mesh", (), {"shape": {"data": 4}})(), 8)


def test_agreed_stop_asks_at_ever_growing_steps():
    """JAX's preemption sync point is the last step asked + 1: a second stage's batches must not reuse numbers."""
    asked = []
    guard = type("Guard", (), {"should_stop": lambda self, step: asked.append(step) or step == asked[0] + 4})()
    stops = [distributed.agreed_stop(guard) for _ in range(3)] + [distributed.agreed_stop(guard) for _ in range(3)]
    assert asked == list(range(asked[0], asked[0] + 6))
    assert stops == [False, False, False, False, True, False]
