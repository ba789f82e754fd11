"""Loading rows with Hugging Face ``datasets``, with errors that name file and line.

``load_source`` resolves a local file, a directory or a hub id, pre-validates
local JSON/JSON-lines files line by line (a malformed line raises ``DataError``
naming the file and line; ``datasets``' own error would not), loads with
``datasets.load_dataset`` and returns a ``Source``: the ``datasets.Dataset``
plus a locator that turns a row index into ``"<file>:row N"`` for reports.
``load_rows`` returns just the dataset.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from jaxalign.data.errors import DataError

logger = logging.getLogger("jaxalign.data")

__all__ = ["Source", "load_rows", "load_source", "scan_json_file", "BUILDERS"]

#: File extension -> ``datasets`` builder.
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
#: Words in file names that assign a file to a split (as ``datasets`` does).
_SPLIT_WORDS = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test", "eval": "test", "evaluation": "test",
}


@dataclass
class FileSpan:
    """Rows ``start .. start+count-1`` of the dataset come from ``path``; ``lines[i]`` is row i's 1-based line."""

    path: str
    start: int
    count: int | None = None
    lines: np.ndarray | None = None


@dataclass
class Source:
    """A loaded dataset and how to name its rows in error reports."""

    dataset: "object"  # datasets.Dataset
    name: str
    files: list[FileSpan] = field(default_factory=list)

    def locate(self, row_id: int) -> tuple[str, str]:
        """``("<file>:row N", " (line L)")`` for a dataset row index (suffix empty when lines are unknown)."""
        if not self.files:
            return f"{self.name}:row {row_id}", ""
        starts = [f.start for f in self.files]
        span = self.files[max(bisect.bisect_right(starts, row_id) - 1, 0)]
        local = row_id - span.start
        suffix = ""
        if span.lines is not None and 0 <= local < len(span.lines):
            suffix = f" (line {int(span.lines[local])})"
        return f"{span.path}:row {local}", suffix

    def describe(self, row_id: int) -> str:
        """``"<file>:row N (line L)"``: for engine-side reports that only have a ``row_id``."""
        location, suffix = self.locate(row_id)
        return location + suffix


def load_rows(source: str, *, split: str = "train", data_files: Sequence[str] | str | None = None):
    """Load ``source`` (local file, directory or hub id) as a ``datasets.Dataset``. See ``load_source``."""
    return load_source(source, split=split, data_files=data_files).dataset


def load_source(
    source: str, *, split: str = "train", data_files: Sequence[str] | str | None = None
) -> Source:
    """Load a local file / directory (pre-validated, located) or a hub dataset.

    Local JSON-lines files are streamed once to validate every line; a line
    that is not a JSON object raises ``DataError("<file>:line L: ...")``.
    """
    import datasets

    datasets.disable_progress_bars()
    if isinstance(data_files, str):
        data_files = [data_files]
    source = os.fspath(source)
    if os.path.isfile(source) or os.path.isdir(source) or data_files and _all_local(source, data_files):
        files = _resolve_local(source, split, data_files)
        return _load_local(files, split, name=source)
    if _looks_like_path(source):
        raise DataError(f"data.path: no such file or directory: {source}")
    name, _, revision = source.partition("@")  # a hub id may pin a revision: org/name@<tag, branch or commit>
    if "@" in source and not revision:
        raise DataError(f"data.path: {source!r} has an empty revision after '@'")
    try:
        dataset = datasets.load_dataset(name, split=split, data_files=list(data_files) if data_files else None,
                                        revision=revision or None)
    except Exception as e:  # noqa: BLE001 - re-raised with the source named
        message = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"data.path: could not load dataset {source!r} (split {split!r}): {message}") from e
    if not revision:
        logger.info("data.path: hub dataset %s loaded unpinned; pin it as %s@<commit> to make the run repeatable", name, name)
    return Source(dataset, f"{source}[{split}]")


def scan_json_file(path: str) -> np.ndarray | None:
    """Validate a ``.json``/``.jsonl`` file; return the 1-based line of each row (None for a JSON array file).

    Streams JSON-lines files line by line (blank lines are skipped, as
    ``datasets`` does). Raises ``DataError`` naming the file and line of the
    first line that is not a JSON object.
    """
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf").lstrip()
    if head.startswith(b"["):
        with open(path, encoding="utf-8") as f:
            try:
                rows = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:line {e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from None
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise DataError(f"{path}: element {i} of the JSON array is {type(row).__name__}, expected an object")
        return None
    lines: list[int] = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1:
                raw = raw.lstrip(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                detail = f"{e.msg} (column {e.colno})" if isinstance(e, json.JSONDecodeError) else str(e)
                raise DataError(f"{path}:line {lineno}: invalid JSON: {detail}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:line {lineno}: expected a JSON object, got {type(row).__name__}")
            lines.append(lineno)
    return np.asarray(lines, dtype=np.int64)


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or os.path.splitext(source)[1].lower() in BUILDERS


def _all_local(source: str, data_files: Sequence[str]) -> bool:
    base = source if os.path.isdir(source) else ""
    return all(os.path.isfile(os.path.join(base, f)) for f in data_files)


def _resolve_local(source: str, split: str, data_files: Sequence[str] | None) -> list[str]:
    """The local files making up ``split``, sorted; all of one supported extension."""
    if data_files:
        base = source if os.path.isdir(source) else ""
        files = [os.path.join(base, f) for f in data_files]
    elif os.path.isfile(source):
        files = [source]
    else:
        found = sorted(
            os.path.join(root, name)
            for root, _, names in os.walk(source)
            for name in names
            if _extension(name) in BUILDERS and not name.startswith(".")
        )
        if not found:
            raise DataError(f"data.path: no {'/'.join(BUILDERS)} files in directory {source}")
        tagged = {f: _split_words(os.path.relpath(f, source)) for f in found}
        if any(tagged.values()):
            wanted = _SPLIT_WORDS.get(split.lower(), split.lower())
            files = [f for f, words in tagged.items() if wanted in words]
            if not files:
                raise DataError(f"data.path: no files for split {split!r} in {source} (found {', '.join(found)})")
        elif split == "train":
            files = found
        else:
            raise DataError(f"data.path: no files for split {split!r} in {source}: file names name no split")
    exts = {_extension(f) for f in files}
    if any(e not in BUILDERS for e in exts):
        raise DataError(f"data.path: unsupported file type {sorted(exts)}; supported: {', '.join(BUILDERS)}")
    builders = {BUILDERS[e] for e in exts}
    if len(builders) > 1:
        raise DataError(f"data.path: mixed file types {sorted(exts)} in one split")
    return files


def _load_local(files: list[str], split: str, *, name: str) -> Source:
    import datasets

    builder = BUILDERS[_extension(files[0])]
    lines = [scan_json_file(f) for f in files] if builder == "json" else [None] * len(files)
    try:
        dataset = datasets.load_dataset(builder, data_files={split: files}, split=split)
    except Exception as first:  # noqa: BLE001 - retried, then re-raised naming the files
        if builder != "json":
            raise DataError(f"{', '.join(files)}: could not load with datasets: {first}") from first
        # Every line parsed as a JSON object, yet datasets failed (it chokes on, e.g.,
        # blank lines in files whose columns mix types): retry on compacted copies.
        dataset = _load_compacted(files, split, first)
    spans, start = [], 0
    counts = _row_counts(dataset, files, lines)
    for path, rows, count in zip(files, lines, counts):
        spans.append(FileSpan(path, start, count, rows))
        start += count
    return Source(dataset, name, spans)


def _row_counts(dataset, files: list[str], lines: list[np.ndarray | None]) -> list[int]:
    if all(rows is not None for rows in lines):
        counts = [len(rows) for rows in lines]
        if sum(counts) == len(dataset):
            return counts
    if len(files) == 1:
        return [len(dataset)]
    # Per-file counts unknown (JSON arrays, parquet): count per file cheaply.
    counts = []
    for path, rows in zip(files, lines):
        if rows is not None:
            counts.append(len(rows))
        elif _extension(path) == ".parquet":
            import pyarrow.parquet as pq

            counts.append(pq.ParquetFile(path).metadata.num_rows)
        elif _extension(path) == ".json":
            with open(path, encoding="utf-8") as f:
                counts.append(len(json.load(f)))
        else:  # csv: fall back to naming the dataset row only
            return [len(dataset)] + [0] * (len(files) - 1)
    return counts


def _load_compacted(files: list[str], split: str, first: Exception):
    with tempfile.TemporaryDirectory(prefix="jaxalign-data-") as tmp:
        return _load_copies(files, split, first, tmp)


def _load_copies(files: list[str], split: str, first: Exception, tmp: str):
    import datasets

    copies = []
    for i, path in enumerate(files):
        out = os.path.join(tmp, f"{i:05d}.jsonl")
        with open(path, encoding="utf-8-sig") as src, open(out, "w", encoding="utf-8") as dst:
            text = src.read()
            if text.lstrip().startswith("["):
                rows = json.loads(text)
            else:
                rows = (json.loads(line) for line in text.splitlines() if line.strip())
            for row in rows:
                dst.write(json.dumps(row, ensure_ascii=False) + "\n")
        copies.append(out)
    try:
        # keep_in_memory: the copies are deleted when this returns.
        return datasets.load_dataset("json", data_files={split: copies}, split=split, keep_in_memory=True)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{', '.join(files)}: could not load with datasets: {first}") from e


def _extension(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _split_words(relpath: str) -> set[str]:
    words = re.split(r"[^a-z0-9]+", relpath.lower())
    return {_SPLIT_WORDS[w] for w in words if w in _SPLIT_WORDS}
