"""Row formats: detect them and normalise each row into a ``Record``.

Formats (config ``format``; ``"auto"`` picks one from the column names and the
first non-empty row):

- ``preference``: text ``prompt``, ``chosen``, ``rejected``.
- ``chat_preference``: ``chosen``/``rejected`` are message lists
  (``{"role", "content"}``); ``prompt`` is a message list or text (a user
  turn). Without ``prompt``, or when ``chosen`` starts with non-assistant
  turns, the prompt is the longest common prefix of the two conversations.
- ``hh``: Anthropic-HH full dialogues in ``chosen``/``rejected`` and no
  ``prompt``: split after the last ``"\\n\\nAssistant:"`` of their common prefix.
- ``sft``: text ``prompt`` and ``response`` (or ``completion``).
- ``chat_sft``: ``messages`` (the trailing assistant turns are the response),
  or a message-list ``prompt`` with ``completion``/``response``.
- ``unpaired`` (KTO): ``prompt``, ``completion``, ``label`` (bool).

Optional float columns (``OPTIONAL_COLUMNS``) present in the dataset are
carried per record in ``Record.extras``. Problems raise ``RowError(field, problem)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from jaxalign.data.errors import DataError, RowError

__all__ = [
    "Record",
    "detect_format",
    "parse_row",
    "extra_columns",
    "OPTIONAL_COLUMNS",
    "UNPAIRED_COLUMNS",
    "HH_MARKER",
    "PAIRED_FORMATS",
]

HH_MARKER = "\n\nAssistant:"
#: Per-pair float columns carried into the batches when present.
OPTIONAL_COLUMNS = (
    "score_chosen",
    "score_rejected",
    "ref_chosen_logps",
    "ref_rejected_logps",
    "teacher_chosen_logps",
    "teacher_rejected_logps",
    "rdo_weight",
)
#: Per-example float columns of unpaired (KTO) rows.
UNPAIRED_COLUMNS = ("score", "ref_logps", "teacher_logps", "rdo_weight")
PAIRED_FORMATS = ("preference", "chat_preference", "hh")

Text = str
Messages = list  # list[dict[str, str]]


@dataclass
class Record:
    """One validated row.

    ``chosen`` is the response for SFT and the completion for unpaired rows;
    ``rejected`` is None unless the row is a pair; ``label`` is set only for
    unpaired rows. ``prompt``/``chosen``/``rejected`` are text, or message lists
    when ``conversational``.
    """

    row_id: int
    prompt: Text | Messages
    chosen: Text | Messages
    rejected: Text | Messages | None = None
    label: bool | None = None
    conversational: bool = False
    extras: dict[str, float] = field(default_factory=dict)
    response_field: str = "chosen"
    """Column the (first) response came from, for error reports."""


def detect_format(columns: Iterable[str], rows: Iterable[Mapping[str, Any]]) -> str:
    """Guess the row format from the column names and the first rows' value types."""
    cols = set(columns)

    def first(name: str) -> Any:
        for row in rows_list:
            if row.get(name) is not None:
                return row[name]
        return None

    rows_list = list(rows)
    if "messages" in cols:
        return "chat_sft"
    if {"chosen", "rejected"} <= cols:
        if isinstance(first("chosen"), list):
            return "chat_preference"
        return "preference" if "prompt" in cols else "hh"
    if {"prompt", "completion", "label"} <= cols:
        return "unpaired"
    if "prompt" in cols and cols & {"response", "completion"}:
        return "chat_sft" if isinstance(first("prompt"), list) else "sft"
    raise DataError(
        "data.format: cannot detect the row format from columns "
        f"{sorted(cols)}; expected prompt/chosen/rejected, chosen/rejected (Anthropic HH), "
        "prompt/response, messages, or prompt/completion/label; or set data.format"
    )


def extra_columns(fmt: str, columns: Iterable[str]) -> tuple[str, ...]:
    """The optional float columns of ``fmt`` present among ``columns`` (in canonical order)."""
    cols = set(columns)
    names = UNPAIRED_COLUMNS if fmt == "unpaired" else OPTIONAL_COLUMNS
    return tuple(n for n in names if n in cols)


def parse_row(row: Mapping[str, Any], fmt: str, row_id: int, extras: tuple[str, ...] = ()) -> Record:
    """Validate one row of format ``fmt`` and normalise it; raises ``RowError`` naming the field."""
    parser = _PARSERS.get(fmt)
    if parser is None:
        raise DataError(f"data.format: unknown format {fmt!r}")
    record = parser(row, row_id)
    for name in extras:
        record.extras[name] = _number(row, name)
    return record


# ----------------------------------------------------------------------------- parsers


def _preference(row, row_id):
    prompt = _text(row, "prompt", allow_empty=True)
    return Record(row_id, prompt, _text(row, "chosen"), _text(row, "rejected"))


def _chat_preference(row, row_id):
    chosen = _messages(row, "chosen")
    rejected = _messages(row, "rejected")
    prompt_value = row.get("prompt")
    if prompt_value is None or chosen[0]["role"] != "assistant":
        # Implicit prompt: the common leading turns of both conversations.
        n = 0
        while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
            n += 1
        while n > 0 and chosen[n - 1]["role"] == "assistant":
            n -= 1
        prompt, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
        if not prompt and prompt_value is not None:
            prompt = _prompt_messages(row)
    else:
        prompt = _prompt_messages(row)
    for name, msgs in (("chosen", chosen), ("rejected", rejected)):
        _check_response_turns(name, msgs)
    return Record(row_id, prompt, chosen, rejected, conversational=True)


def _hh(row, row_id):
    chosen = _text(row, "chosen")
    rejected = _text(row, "rejected")
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(HH_MARKER, 0, n)
    if cut < 0:
        raise RowError("chosen", f"no common prefix ending in {HH_MARKER!r} with 'rejected' (not an Anthropic-HH pair)")
    cut += len(HH_MARKER)
    prompt, yw, yl = chosen[:cut], chosen[cut:], rejected[cut:]
    for name, text in (("chosen", yw), ("rejected", yl)):
        if not text.strip():
            raise RowError(name, "empty response after the last '\\n\\nAssistant:'")
    return Record(row_id, prompt, yw, yl)


def _sft(row, row_id):
    name = _response_column(row)
    return Record(row_id, _text(row, "prompt", allow_empty=True), _text(row, name), response_field=name)


def _chat_sft(row, row_id):
    if row.get("messages") is not None or "prompt" not in row:
        msgs = _messages(row, "messages", allow_empty_content=True)
        n = len(msgs)
        while n > 0 and msgs[n - 1]["role"] == "assistant":
            n -= 1
        if n == len(msgs):
            raise RowError("messages", "the conversation does not end with an assistant turn")
        response = msgs[n:]
        _check_response_turns("messages", response)
        return Record(row_id, msgs[:n], response, conversational=True, response_field="messages")
    name = _response_column(row)
    prompt = _prompt_messages(row)
    response = _response_messages(row, name)
    return Record(row_id, prompt, response, conversational=True, response_field=name)


def _unpaired(row, row_id):
    value = row.get("prompt")
    conversational = isinstance(value, list)
    if conversational:
        prompt, completion = _prompt_messages(row), _response_messages(row, "completion")
    else:
        prompt, completion = _text(row, "prompt", allow_empty=True), _text(row, "completion")
    label = row.get("label")
    if label is None:
        raise RowError("label", "missing")
    if isinstance(label, bool):
        pass
    elif isinstance(label, int) and label in (0, 1):
        label = bool(label)
    else:
        raise RowError("label", f"expected a bool (or 0/1), got {_kind(label)} {label!r}")
    return Record(
        row_id, prompt, completion, label=label, conversational=conversational, response_field="completion"
    )


_PARSERS = {
    "preference": _preference,
    "chat_preference": _chat_preference,
    "hh": _hh,
    "sft": _sft,
    "chat_sft": _chat_sft,
    "unpaired": _unpaired,
}


# ----------------------------------------------------------------------------- field checks


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _text(row, name: str, *, allow_empty: bool = False) -> str:
    if name not in row or row[name] is None:
        raise RowError(name, "missing")
    value = row[name]
    if not isinstance(value, str):
        raise RowError(name, f"expected text (str), got {_kind(value)}")
    if not allow_empty and not value.strip():
        raise RowError(name, "empty response")
    return value


def _number(row, name: str) -> float:
    value = row.get(name)
    if value is None:
        raise RowError(name, "missing (the column exists, so every row needs a number)")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RowError(name, f"expected a number, got {_kind(value)}")
    if not math.isfinite(value):
        raise RowError(name, f"not finite: {value}")
    return float(value)


def _messages(row, name: str, *, allow_empty_content: bool = False) -> list[dict]:
    if name not in row or row[name] is None:
        raise RowError(name, "missing")
    value = row[name]
    if not isinstance(value, list):
        raise RowError(name, f"expected a list of messages, got {_kind(value)}")
    if not value:
        raise RowError(name, "empty list of messages")
    return [_message(name, i, m) for i, m in enumerate(value)]


def _message(name: str, i: int, m: Any) -> dict:
    if not isinstance(m, dict):
        raise RowError(name, f"message {i}: expected an object with 'role' and 'content', got {_kind(m)}")
    role, content = m.get("role"), m.get("content")
    if not isinstance(role, str) or not role:
        raise RowError(name, f"message {i}: 'role' must be a non-empty string, got {_kind(role)}")
    if not isinstance(content, str):
        raise RowError(name, f"message {i}: 'content' must be text, got {_kind(content)}")
    # Keep other keys (tool calls, names...) unless datasets filled them with nulls.
    return {k: v for k, v in m.items() if v is not None}


def _check_response_turns(name: str, msgs: list[dict]) -> None:
    if not msgs:
        raise RowError(name, "empty response (no turns after the prompt)")
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            raise RowError(name, f"response turn {i} has role {m['role']!r}, expected 'assistant'")
    if not any(m["content"].strip() for m in msgs):
        raise RowError(name, "empty response")


def _prompt_messages(row) -> list[dict]:
    value = row.get("prompt")
    if value is None:
        raise RowError("prompt", "missing")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    msgs = _messages(row, "prompt", allow_empty_content=True)
    return msgs


def _response_messages(row, name: str) -> list[dict]:
    value = row.get(name)
    if isinstance(value, str):
        if not value.strip():
            raise RowError(name, "empty response")
        return [{"role": "assistant", "content": value}]
    msgs = _messages(row, name)
    _check_response_turns(name, msgs)
    return msgs


def _response_column(row) -> str:
    for name in ("response", "completion"):
        if row.get(name) is not None:
            return name
    name = "response" if "response" in row else "completion"
    raise RowError(name, "missing")
