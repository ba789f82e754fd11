"""Row I/O of the offline stages: prompt sets in, resumable JSONL/Parquet out.

Stages write rows in batches. ``RowWriter`` appends each batch to a JSON-lines
file and fsyncs it, so a run killed at any point leaves only whole batches
behind, plus at most one torn last line, which the next run cuts off; the
rows already written are then not recomputed (``done_ids``). A ``.parquet``
output is streamed to ``<output>.partial.jsonl`` and converted once complete
(temporary file, then rename), so a Parquet file is never half-written.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from jaxalign.data.errors import DataError
from jaxalign.data.sources import load_source
from jaxalign.io.atomic import atomic_path, write_text_atomic

__all__ = ["load_prompts", "load_table", "RowWriter", "asset_path", "fold_parts", "iter_batches", "part_files", "part_path",
           "prompt_key", "write_rows_atomic"]

#: Scheme of files shipped inside the package (``asset:prompts.jsonl``).
ASSET_PREFIX = "asset:"


def asset_path(name: str) -> Path:
    """Path of a file in ``jaxalign/pipeline/assets``."""
    return Path(str(resources.files("jaxalign.pipeline") / "assets" / name))


def _resolve(path: str) -> str:
    return str(asset_path(path[len(ASSET_PREFIX):])) if path.startswith(ASSET_PREFIX) else path


def prompt_key(prompt, occurrence: int = 0) -> str:
    """Identity of a prompt in resumable outputs: a hash of its content (and of which repeat of the same
    prompt in the set it is), so rows stay matched to their prompt when the prompt file changes."""
    text = json.dumps(prompt, ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16] + (f"#{occurrence}" if occurrence else "")


def load_prompts(path: str, *, limit: int = 0) -> list[dict]:
    """Rows with a non-empty ``prompt`` (a string or a message list), each with ``prompt_id`` (its index)
    and ``prompt_key`` (see ``prompt_key``).

    ``path`` is anything ``data.path`` takes, or ``asset:NAME`` for a shipped file
    (``asset:prompts_train.jsonl``, ``asset:prompts_heldout.jsonl``); ``limit`` keeps the first N. Raises ``DataError``
    naming the file and row of a bad prompt, or when nothing is left.
    """
    resolved = _resolve(path)
    if os.path.isfile(resolved) and not Path(resolved).read_bytes().strip():
        raise DataError(f"{resolved}: no prompts (the prompt set is empty)")  # datasets fails on it with no message
    source = load_source(resolved)
    columns = source.dataset.column_names
    if "prompt" not in columns:
        raise DataError(f"{source.name}: no 'prompt' column (columns: {', '.join(columns)})")
    rows, seen = [], {}
    for i, row in enumerate(source.dataset):
        prompt = row["prompt"]
        where, line = source.locate(i)
        if isinstance(prompt, str):
            if not prompt.strip():
                raise DataError(f"{where}{line}: field 'prompt' is empty")
        elif isinstance(prompt, list):
            if not prompt or not all(isinstance(m, Mapping) and m.get("role") and m.get("content") is not None for m in prompt):
                raise DataError(f"{where}{line}: field 'prompt' must be a non-empty list of {{role, content}} messages")
            prompt = [{"role": m["role"], "content": m["content"]} for m in prompt]
        else:
            raise DataError(f"{where}{line}: field 'prompt' must be a string or a message list, got {type(prompt).__name__}")
        key = prompt_key(prompt)
        seen[key] = seen.get(key, -1) + 1
        rows.append({**row, "prompt": prompt, "prompt_id": i, "prompt_key": prompt_key(prompt, seen[key])})
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise DataError(f"{source.name}: no prompts (the prompt set is empty)")
    return rows


def load_table(path: str) -> list[dict]:
    """All rows of a dataset file (JSONL/Parquet/...) as dicts."""
    return [dict(r) for r in load_source(_resolve(path)).dataset]


def _fsync_write(f, text: str) -> None:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


class RowWriter:
    """Append-only, resumable writer of rows with a unique ``key`` field.

    Opening it repairs a torn last line and reads which keys are done. ``write``
    appends one batch durably. ``finish`` converts a Parquet target.
    """

    def __init__(self, output: str | os.PathLike, key: str, *, staged: bool = False):
        self.output = Path(output)
        if self.output.suffix not in (".jsonl", ".parquet"):
            raise DataError(f"{self.output}: output must end in .jsonl or .parquet")
        self.key = key
        self.staged = staged or self.output.suffix == ".parquet"
        self.stream = self.output.with_name(self.output.name + ".partial.jsonl") if self.staged else self.output
        self.stream.parent.mkdir(parents=True, exist_ok=True)
        self.done_ids: set = set()
        self.rows_done = 0
        if self.staged and self.output.exists():
            rows = load_table(str(self.output))
            self.done_ids = {r[key] for r in rows if key in r}
            self.rows_done = len(rows)
            self.complete = True
            return
        self.complete = False
        self._repair_and_scan()

    def _repair_and_scan(self) -> None:
        if not self.stream.exists():
            return
        data = self.stream.read_bytes()
        good = data.rfind(b"\n") + 1  # bytes up to the last complete line
        if good < len(data):
            with open(self.stream, "r+b") as f:
                f.truncate(good)
                os.fsync(f.fileno())
        for row in _parse_lines(self.stream, data[:good], self.key):
            self.done_ids.add(row[self.key])
            self.rows_done += 1

    def retain(self, keys: set, *, rewrite: bool = True) -> tuple[int, int]:
        """Keep only the first row of each key in ``keys``; returns (foreign rows, duplicate rows) dropped.

        Rows of prompts no longer in the input, and the duplicates two writers (or an older jaxalign)
        left, are removed by rewriting the output atomically; a complete staged output whose rows
        change goes back to its stream, so ``finish`` writes it again. ``rewrite=False`` only updates
        ``done_ids``/``rows_done`` to what the rewrite leaves (the other processes of a multi-process
        run, while process 0 rewrites).
        """
        rows = load_table(str(self.output)) if self.complete else (self.staged_rows() if self.stream.exists() else [])
        kept, seen, foreign = [], set(), 0
        for r in rows:
            k = r.get(self.key)
            if k not in keys:
                foreign += 1
            elif k not in seen:
                seen.add(k)
                kept.append(r)
        duplicates = len(rows) - foreign - len(kept)
        if foreign or duplicates or (self.complete and self.staged and len(seen) < len(keys)):
            if not rewrite:
                self.complete = False
                self.done_ids, self.rows_done = seen, len(kept)
                return foreign, duplicates
            write_rows_atomic(kept, self.stream)
            if self.complete and self.staged:
                self.output.unlink()
                self.complete = False
        self.done_ids, self.rows_done = seen, len(kept)
        return foreign, duplicates

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append ``rows`` (one batch) and fsync."""
        if not rows:
            return
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        with open(self.stream, "a", encoding="utf-8") as f:
            _fsync_write(f, text)
        for r in rows:
            self.done_ids.add(r[self.key])
        self.rows_done += len(rows)

    def staged_rows(self) -> list[dict]:
        """The rows written so far (staged outputs: read back from the stream)."""
        return [json.loads(line) for line in self.stream.read_text(encoding="utf-8").splitlines() if line.strip()]

    def finish(self, transform: Callable[[list[dict]], list[dict]] | None = None) -> Path:
        """Make a staged output final: ``transform`` the streamed rows (default: as they are) and
        write the target atomically (temporary file, then rename); returns its path."""
        if self.staged and not self.complete:
            rows = self.staged_rows() if self.stream.exists() else []
            write_rows_atomic(transform(rows) if transform else rows, self.output)
            self.stream.unlink(missing_ok=True)
            self.complete = True
        return self.output


def _parse_lines(path: Path, data: bytes, key: str) -> list[dict]:
    """The rows of complete JSON lines ``data`` read from ``path``; ``DataError`` naming the line of a bad one."""
    rows = []
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{n}: not valid JSON ({e.msg}); the file is not a jaxalign output") from None
        if key not in row:
            raise DataError(f"{path}:{n}: no {key!r} field; the file is not a jaxalign output")
        rows.append(row)
    return rows


def part_path(output: str | os.PathLike, process: int, count: int) -> Path:
    """``<output>.part-P-of-N.jsonl``: the rows process P of an N-process run wrote (see ``fold_parts``)."""
    output = Path(output)
    return output.with_name(f"{output.name}.part-{process}-of-{count}.jsonl")


def part_files(output: str | os.PathLike) -> list[Path]:
    """The part files of ``output`` left by multi-process runs of any process count, sorted."""
    output = Path(output)
    pattern = re.compile(re.escape(output.name) + r"\.part-(\d+)-of-(\d+)\.jsonl")
    found = [p for p in output.parent.glob(f"{glob.escape(output.name)}.part-*-of-*.jsonl") if pattern.fullmatch(p.name)]
    return sorted(found, key=lambda p: tuple(int(x) for x in pattern.fullmatch(p.name).groups())[::-1])


def fold_parts(writer: RowWriter, order: Callable[[dict], Any]) -> int:
    """Move the rows of ``writer.output``'s part files into its stream, then delete the parts; returns the rows moved.

    The stream's rows and the parts' complete lines (a torn last line is cut off) are merged, each key
    kept once (its first row: the stream's, then the parts' in process order), sorted by ``order`` and
    written atomically, before any part is deleted: a crash in between leaves duplicates that the next
    fold drops, never a lost row. Run by one process while no other writes (process 0 of a multi-process
    run, between barriers); ``writer`` is updated to the result.
    """
    parts = part_files(writer.output)
    if not parts:
        return 0
    rows = writer.staged_rows() if writer.stream.exists() else []
    if writer.complete:
        rows = load_table(str(writer.output))
    moved = []
    for path in parts:
        data = path.read_bytes()
        moved += _parse_lines(path, data[:data.rfind(b"\n") + 1], writer.key)
    kept, seen = [], set()
    for r in rows + moved:
        if r[writer.key] not in seen:
            seen.add(r[writer.key])
            kept.append(r)
    write_rows_atomic(sorted(kept, key=order), writer.stream)
    if writer.complete:
        writer.output.unlink()
        writer.complete = False
    for path in parts:
        path.unlink()
    writer.done_ids, writer.rows_done = seen, len(kept)
    return len(kept) - len(rows)


def write_rows_atomic(rows: Sequence[Mapping[str, Any]], output: str | os.PathLike) -> Path:
    """Write rows as ``.jsonl`` or ``.parquet`` atomically (see :mod:`jaxalign.io.atomic`)."""
    output = Path(output)
    if output.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(list(rows))
        with atomic_path(output) as tmp:
            pq.write_table(table, str(tmp))
    else:
        write_text_atomic(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return output


def iter_batches(items: Sequence, size: int) -> Iterable[tuple[int, Sequence]]:
    """``(batch_index, items[i*size:(i+1)*size])`` over ``items``."""
    for b, start in enumerate(range(0, len(items), size)):
        yield b, items[start:start + size]
