"""jaxalign.data.pipeline: up-front validation, bad-row policy, truncation counts, task views."""

import numpy as np
import pytest

from jaxalign.data import DataConfig, DataError, prepare


def _cfg(**kw):
    kw.setdefault("max_length", 64)
    kw.setdefault("batch_size", 2)
    kw.setdefault("min_bucket", 16)
    return DataConfig(**kw)


@pytest.mark.parametrize(
    "bad, field, problem",
    [
        ({"prompt": "q", "rejected": "b"}, "chosen", "missing"),
        ({"prompt": "q", "chosen": "", "rejected": "b"}, "chosen", "empty response"),
        ({"prompt": "q", "chosen": 42, "rejected": "b"}, "chosen", r"expected text \(str\), got int"),
    ],
)
def test_bad_row_error_names_file_row_and_field(write_jsonl, pairs, tok, bad, field, problem):
    rows = pairs(3)
    rows.insert(2, bad)
    path = write_jsonl(rows, "prefs.jsonl")
    with pytest.raises(DataError, match=rf"prefs\.jsonl:row 2: field '{field}': {problem}") as e:
        prepare(path, tok, _cfg())
    assert "(line 3)" in str(e.value).splitlines()[0]
    assert [p.row_id for p in e.value.problems] == [2]


def test_skip_mode_drops_and_counts_bad_rows(write_jsonl, pairs, tok):
    rows = pairs(5)
    rows[1]["chosen"] = ""
    rows[3]["rejected"] = 7
    data = prepare(write_jsonl(rows), tok, _cfg(on_bad_row="skip"))
    assert data.report.num_skipped == 2 and data.report.num_rows == 5
    assert sorted(data.examples.row_id.tolist()) == [0, 2, 4]
    assert {p.field for p in data.report.skipped} == {"chosen", "rejected"}


def test_error_mode_reports_every_bad_row_up_front(pairs, tok):
    rows = pairs(6)
    rows[1]["chosen"] = None
    rows[4]["prompt"] = ["not", "text"]
    with pytest.raises(DataError) as e:
        prepare(rows, tok, _cfg())
    assert [p.row_id for p in e.value.problems] == [1, 4]
    assert "2 rows: bad rows" in str(e.value)


def test_truncation_keep_end_counts_rows(pairs, tok):
    rows = pairs(4)
    rows[0]["prompt"] = "The quick brown fox jumps over the lazy dog. " * 6 + "END"
    rows[1]["chosen"] = "Hello world, how are you today? " * 8
    cfg = _cfg(max_length=32, max_prompt_length=12)
    data = prepare(rows, tok, cfg)
    assert data.report.num_truncated == 2
    p0 = data.examples.prompt[0]
    assert len(p0) == 12 and tok.decode(p0).endswith("END")  # the beginning was dropped
    assert len(data.examples.prompt[1]) + len(data.examples.chosen[1]) == 32
    assert data.examples.chosen[1][-1] != tok.eos_token_id  # cut responses lose their EOS


def test_truncation_error_policy_reports_the_row(pairs, tok):
    rows = pairs(3)
    rows[2]["chosen"] = "Hello world, how are you today? " * 8
    with pytest.raises(DataError, match=r"row 2: field 'chosen': too long"):
        prepare(rows, tok, _cfg(max_length=32, truncation="error"))


def test_optional_columns_become_per_example_floats(pairs, tok):
    rows = pairs(4, extra={"ref_chosen_logps": lambda i: -float(i), "ref_rejected_logps": -9.0, "rdo_weight": 2})
    data = prepare(rows, tok, _cfg(batch_size=4, shuffle=False))
    batch = next(data.batcher())
    assert batch["ref_chosen_logps"].dtype == np.float32 and batch["ref_chosen_logps"].shape == (4, 1)
    assert batch["ref_chosen_logps"][:, 0].tolist() == [0.0, -1.0, -2.0, -3.0]
    assert batch["rdo_weight"].tolist() == [[2.0]] * 4


def test_sft_from_messages_scores_only_the_assistant_turn(chat_tok):
    rows = [{"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "fine"}]}] * 2
    data = prepare(rows, chat_tok, _cfg(task="sft"))
    batch = data.collate(data.units)
    ids, mask = batch["input_ids"][0], batch["loss_mask"][0]
    assert chat_tok.decode(ids[mask == 1]) == "fine<|im_end|>\n"
    assert set(batch) >= {"input_ids", "loss_mask", "positions", "segment_ids", "example_mask", "row_id"}


def test_kto_from_pairs_makes_desirable_and_undesirable_examples(pairs, tok):
    rows = pairs(3, extra={"score_chosen": 1.0, "score_rejected": -1.0, "ref_chosen_logps": -2.0})
    data = prepare(rows, tok, _cfg(task="kto"))
    assert set(data.examples.extras) == {"score"}  # ref_logps needs both ref_*_logps columns
    assert len(data.examples) == 6
    assert data.examples.label.tolist() == [True, False] * 3
    assert data.examples.row_id.tolist() == [0, 0, 1, 1, 2, 2]
    assert data.examples.extras["score"].tolist() == [1.0, -1.0] * 3


def test_task_needing_pairs_refuses_sft_rows(tok):
    with pytest.raises(DataError, match="needs preference pairs"):
        prepare([{"prompt": "q", "response": "a"}], tok, _cfg())


def test_conversational_rows_without_template_are_refused(tok):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    with pytest.raises(DataError, match="chat template"):
        prepare(rows, tok, _cfg(task="sft"))


def test_conversational_jsonl_end_to_end(write_jsonl, chat_tok):
    user = {"role": "user", "content": "Hello world"}
    rows = [
        {"prompt": [user], "chosen": [{"role": "assistant", "content": f"fine {i}"}],
         "rejected": [{"role": "assistant", "content": "fox"}]}
        for i in range(2)
    ]
    data = prepare(write_jsonl(rows), chat_tok, _cfg(shuffle=False))
    assert data.report.format == "chat_preference" and data.report.chat_template
    b = data.collate(data.units)
    ids = b["chosen_input_ids"][1][b["chosen_segment_ids"][1] > 0].tolist()
    full = chat_tok.apply_chat_template([user, rows[1]["chosen"][0]], tokenize=False)
    assert ids == chat_tok(full, add_special_tokens=False)["input_ids"]


def test_hh_end_to_end_scores_only_the_final_reply(tok):
    rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: Hello world", "rejected": "\n\nHuman: hi\n\nAssistant: fox"}] * 2
    data = prepare(rows, tok, _cfg())
    assert data.report.format == "hh"
    b = data.collate(data.units)
    for side, reply in (("chosen", " Hello world</s>"), ("rejected", " fox</s>")):
        ids, mask = b[f"{side}_input_ids"][0], b[f"{side}_loss_mask"][0]
        assert tok.decode(ids[mask == 1]) == reply
        assert tok.decode(ids[(mask == 0) & (b[f"{side}_segment_ids"][0] > 0)]) == "<s>\n\nHuman: hi\n\nAssistant:"


def test_build_batcher_from_config_path(write_jsonl, pairs, tok):
    from jaxalign.data import build_batcher

    cfg = _cfg(path=write_jsonl(pairs(8)), batch_size=4)
    batcher = build_batcher(cfg, tok, process_index=1, process_count=2)
    batch = next(batcher)
    assert batch["chosen_input_ids"].shape[0] == 2 and batcher.steps_per_epoch == 2
