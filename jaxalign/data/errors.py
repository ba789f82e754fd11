"""Data errors and the bad-row policy.

Every problem with the user's data is reported as ``<file>:row <N>: field
'<name>': <problem>`` so it can be fixed without reading our code. ``row N``
is the 0-based row index inside that file (the same number as ``row_id`` in
the batches for single-file sources); for JSON-lines files the 1-based line
number is appended as ``(line L)``.

``BadRows`` implements ``on_bad_row``: ``"error"`` collects every problem of
the up-front validation pass and raises one ``DataError`` listing them,
``"skip"`` drops the rows and counts them (never silently).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

__all__ = ["DataError", "RowProblem", "BadRows"]

logger = logging.getLogger("jaxalign.data")

#: How many problems a ``DataError`` message lists before "... and N more".
MAX_LISTED = 20


class DataError(ValueError):
    """A problem with the data or the data config that the user must fix.

    ``problems`` holds the ``RowProblem`` records behind the message (empty for
    file- or config-level errors).
    """

    def __init__(self, message: str, problems: list["RowProblem"] | None = None):
        super().__init__(message)
        self.problems: list[RowProblem] = list(problems or [])


@dataclass(frozen=True)
class RowProblem:
    """One bad row: where it is, which field, what is wrong."""

    row_id: int
    location: str
    field: str | None
    problem: str
    suffix: str = ""

    def __str__(self) -> str:
        where = f"{self.location}: field '{self.field}'" if self.field else self.location
        return f"{where}: {self.problem}{self.suffix}"


class RowError(Exception):
    """Raised by row parsers/encoders; turned into a ``RowProblem`` by the caller."""

    def __init__(self, field: str | None, problem: str):
        super().__init__(problem)
        self.field = field
        self.problem = problem


class BadRows:
    """Collects bad rows under the ``on_bad_row`` policy ("error" or "skip").

    ``locate(row_id) -> (location, suffix)`` names a row, e.g.
    ``("data.jsonl:row 3", " (line 5)")``.
    """

    def __init__(self, policy: str, locate: Callable[[int], tuple[str, str]]):
        if policy not in ("error", "skip"):
            raise DataError(f"data.on_bad_row must be 'error' or 'skip', got {policy!r}")
        self.policy = policy
        self._locate = locate
        self.problems: list[RowProblem] = []
        self._rows: set[int] = set()

    def add(self, row_id: int, field: str | None, problem: str) -> None:
        location, suffix = self._locate(row_id)
        self.problems.append(RowProblem(row_id, location, field, problem, suffix))
        self._rows.add(row_id)

    def __contains__(self, row_id: int) -> bool:
        return row_id in self._rows

    @property
    def count(self) -> int:
        """Number of distinct bad rows."""
        return len(self._rows)

    def finish(self) -> int:
        """Raise (policy "error") or log and return the number of skipped rows (policy "skip")."""
        if not self.problems:
            return 0
        if self.policy == "error":
            raise DataError(describe_problems(self.problems, "bad rows (data.on_bad_row='error')"), self.problems)
        logger.warning(describe_problems(self.problems, "skipped bad rows (data.on_bad_row='skip')"))
        return self.count


def describe_problems(problems: list[RowProblem], title: str) -> str:
    """First problem on the first line (the one to fix first), then a short list."""
    rows = len({p.row_id for p in problems})
    lines = [str(problems[0])]
    if len(problems) > 1:
        lines.append(f"({rows} rows: {title}); the first {min(len(problems), MAX_LISTED)} problems:")
        lines += [f"  {p}" for p in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            lines.append(f"  ... and {len(problems) - MAX_LISTED} more")
    else:
        lines.append(f"(1 row: {title})")
    return "\n".join(lines)
