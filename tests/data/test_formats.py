"""jaxalign.data.formats: format detection, normalisation, per-field row errors."""

import pytest

from jaxalign.data import DataError, detect_format, parse_row
from jaxalign.data.errors import RowError

U = {"role": "user", "content": "Hello world"}
A1 = {"role": "assistant", "content": "fine thank you"}
A2 = {"role": "assistant", "content": "fox"}


def _detect(rows):
    return detect_format(rows[0].keys(), rows)


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"prompt": "q", "chosen": "a", "rejected": "b"}, "preference"),
        ({"prompt": [U], "chosen": [A1], "rejected": [A2]}, "chat_preference"),
        ({"chosen": [U, A1], "rejected": [U, A2]}, "chat_preference"),
        ({"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}, "hh"),
        ({"prompt": "q", "response": "a"}, "sft"),
        ({"prompt": "q", "completion": "a"}, "sft"),
        ({"prompt": [U], "completion": [A1]}, "chat_sft"),
        ({"messages": [U, A1]}, "chat_sft"),
        ({"prompt": "q", "completion": "a", "label": True}, "unpaired"),
    ],
)
def test_detect_format(row, expected):
    assert _detect([row]) == expected


def test_detect_unknown_columns_is_an_error():
    with pytest.raises(DataError, match="cannot detect the row format"):
        _detect([{"question": "q", "answer": "a"}])


def test_hh_split_at_last_common_assistant_marker():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: Why did the chicken"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: No."
    rec = parse_row({"chosen": chosen, "rejected": rejected}, "hh", 0)
    assert rec.prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant:"
    assert rec.chosen == " Why did the chicken" and rec.rejected == " No."
    assert rec.prompt + rec.chosen == chosen and rec.prompt + rec.rejected == rejected


def test_hh_responses_sharing_a_prefix_split_at_the_marker():
    row = {"chosen": "\n\nHuman: q\n\nAssistant: Paris is", "rejected": "\n\nHuman: q\n\nAssistant: Paris"}
    rec = parse_row(row, "hh", 0)
    assert rec.prompt.endswith("Assistant:") and rec.chosen == " Paris is" and rec.rejected == " Paris"


def test_hh_without_marker_is_a_row_error():
    with pytest.raises(RowError, match="Assistant") as e:
        parse_row({"chosen": "abc", "rejected": "abd"}, "hh", 0)
    assert e.value.field == "chosen"


def test_chat_preference_implicit_prompt_is_the_common_prefix():
    rec = parse_row({"prompt": "Hello world", "chosen": [U, A1], "rejected": [U, A2]}, "chat_preference", 0)
    assert rec.prompt == [U] and rec.chosen == [A1] and rec.rejected == [A2] and rec.conversational


def test_chat_sft_messages_split_off_final_assistant_turn():
    rec = parse_row({"messages": [{"role": "system", "content": "s"}, U, A1]}, "chat_sft", 0)
    assert rec.prompt[-1] == U and rec.chosen == [A1]


def test_optional_columns_carried_as_floats():
    row = {"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": 7, "rdo_weight": 0.5}
    rec = parse_row(row, "preference", 0, ("score_chosen", "rdo_weight"))
    assert rec.extras == {"score_chosen": 7.0, "rdo_weight": 0.5}


@pytest.mark.parametrize(
    "row, field, problem",
    [
        ({"prompt": "q", "rejected": "b"}, "chosen", "missing"),
        ({"prompt": "q", "chosen": "  ", "rejected": "b"}, "chosen", "empty response"),
        ({"prompt": "q", "chosen": "a", "rejected": 3}, "rejected", "expected text"),
        ({"prompt": "q", "chosen": "a", "rejected": "b", "score_chosen": "high"}, "score_chosen", "expected a number"),
    ],
)
def test_bad_rows_name_the_field(row, field, problem):
    with pytest.raises(RowError, match=problem) as e:
        parse_row(row, "preference", 0, ("score_chosen",))
    assert e.value.field == field


def test_unpaired_label_must_be_bool():
    with pytest.raises(RowError, match="expected a bool") as e:
        parse_row({"prompt": "q", "completion": "a", "label": "yes"}, "unpaired", 0)
    assert e.value.field == "label"
