"""jaxalign.data.sources: loading local files with datasets; errors naming file and line."""

import json

import pytest

from jaxalign.data import DataError, load_rows, load_source


def test_load_jsonl_rows(write_jsonl, pairs):
    path = write_jsonl(pairs(3))
    ds = load_rows(path)
    assert len(ds) == 3
    assert ds[1]["chosen"] == "fine 1 thank you"


def test_load_json_array_and_parquet(tmp_path, pairs):
    rows = pairs(4)
    jpath = tmp_path / "rows.json"
    jpath.write_text(json.dumps(rows))
    assert load_rows(str(jpath))[3]["prompt"] == rows[3]["prompt"]

    import pyarrow as pa
    import pyarrow.parquet as pq

    ppath = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), ppath)
    assert load_rows(str(ppath))[2]["rejected"] == rows[2]["rejected"]


def test_directory_picks_split_files(write_jsonl, pairs):
    write_jsonl(pairs(3), "d/train.jsonl")
    path = write_jsonl(pairs(2, prompt="held out"), "d/test.jsonl")
    directory = path.rsplit("/", 1)[0]
    assert len(load_rows(directory)) == 3
    test = load_rows(directory, split="test")
    assert len(test) == 2 and test[0]["prompt"].startswith("held out")


def test_malformed_jsonl_line_names_file_and_line(write_jsonl, pairs):
    rows = pairs(2) + ['{"prompt": "x", "chosen": "y", "rejected": ']
    path = write_jsonl(rows, "broken.jsonl")
    with pytest.raises(DataError, match=r"broken\.jsonl:line 3: invalid JSON"):
        load_rows(path)


def test_non_object_line_is_an_error(write_jsonl, pairs):
    path = write_jsonl(pairs(1) + ["[1, 2]"], "list.jsonl")
    with pytest.raises(DataError, match=r"list\.jsonl:line 2: expected a JSON object, got list"):
        load_rows(path)


def test_locate_names_file_row_and_line_across_blank_lines(write_jsonl, pairs):
    rows = pairs(3)
    # A blank line and a column of mixed types (datasets' own loader fails on this combination).
    rows[2]["chosen"] = 5
    path = write_jsonl([rows[0], "", rows[1], rows[2]], "gaps.jsonl")
    src = load_source(path)
    assert len(src.dataset) == 3 and src.dataset[2]["chosen"] == 5
    location, suffix = src.locate(2)
    assert location.endswith("gaps.jsonl:row 2") and suffix == " (line 4)"


def test_locate_across_files(write_jsonl, pairs):
    a = write_jsonl(pairs(2), "m/a_train.jsonl")
    write_jsonl(pairs(3), "m/b_train.jsonl")
    src = load_source(a.rsplit("/", 1)[0])
    assert len(src.dataset) == 5
    assert src.describe(3).endswith("b_train.jsonl:row 1 (line 2)")


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_rows(str(tmp_path / "nope.jsonl"))


def test_hub_dataset_revision_is_passed_to_datasets(monkeypatch):
    import datasets

    from jaxalign.data.sources import load_source

    calls = []

    def fake_load(name, split=None, data_files=None, revision=None):
        calls.append((name, split, revision))
        return datasets.Dataset.from_list([{"prompt": "p", "chosen": "a", "rejected": "b"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    source = load_source("org/prefs@3f2a1b", split="train")
    assert calls == [("org/prefs", "train", "3f2a1b")] and source.name == "org/prefs@3f2a1b[train]"
    load_source("org/prefs", split="test")
    assert calls[-1] == ("org/prefs", "test", None)
