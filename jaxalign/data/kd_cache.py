"""Cached teacher distributions for token-level distillation: the file ``score`` writes, training reads.

One Parquet file, one row per preference pair (``row`` = the pair's row in the scored file), and per
side (``chosen``/``rejected``), for each scored response token in order:

- ``{side}_targets``: the token id (list<int32>, n) — what training compares to its own tokenisation;
- ``{side}_topk_ids`` / ``{side}_topk_logps``: the teacher's k most likely next tokens and their raw
  log-softmax values at temperature 1, descending (list<int32> / list<float32>, n·k, row-major);
- ``{side}_topk_residual``: ``log(1 − Σ_k p)``, the mass of every other token (list<float32>, n; -inf when k = V).

The schema metadata ``jaxalign.kd_cache`` (JSON) records what made it: k, the vocab size, the teacher's
and the tokenizer's fingerprints, the data settings, the scored input's digest and a digest of the
responses' tokens. In a batch (``Collator``) the cache becomes ``{side}_topk_ids`` ``[B, T, k]`` int32,
``{side}_topk_logps`` ``[B, T, k]`` float32 and ``{side}_topk_residual`` ``[B, T]`` float32, where entry
``t`` is the teacher's distribution of token ``t`` (given the tokens before it) on the positions
``loss_mask`` scores, and 0 elsewhere — aligned like ``loss_mask``, packed rows included.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from jaxalign.data.collate import Examples
from jaxalign.data.errors import DataError
from jaxalign.errors import ConfigError
from jaxalign.io.atomic import atomic_path

__all__ = ["CONFIG_KEY", "METADATA_KEY", "SIDES", "TopKCache", "TopKCacheWriter", "check_settings", "check_top_k",
           "read_record", "response_targets", "responses_digest"]

#: Key of the record in the Parquet schema metadata.
METADATA_KEY = b"jaxalign.kd_cache"
SIDES = ("chosen", "rejected")
_FIELDS = ("targets", "topk_ids", "topk_logps", "topk_residual")
#: The config key that names a cache for training (what errors about it cite).
CONFIG_KEY = "loss.kd_cache"


def check_settings(loss, eval_data: str | None) -> None:
    """A cache holds temperature-1 log-probs of ``data.path`` only: ``ConfigError`` for ``loss.kd_temperature``
    other than 1 or a set ``eval_data``."""
    path = loss.kd_cache
    if loss.kd_temperature != 1:
        raise ConfigError(f"{CONFIG_KEY}={path} holds temperature-1 log-probs; loss.kd_temperature={loss.kd_temperature} "
                          "needs the teacher in the step (unset loss.kd_cache) or set loss.kd_temperature=1")
    if eval_data:
        raise ConfigError(f"{CONFIG_KEY}={path} covers data.path only, not eval_data={eval_data}; unset eval_data "
                          "(evaluate with the `eval` stage) or unset loss.kd_cache")


def check_top_k(loss, k: int) -> None:
    """``loss.kd_top_k`` can use at most the cache's ``k`` entries per position (``ConfigError`` otherwise)."""
    if loss.kd_top_k > k:
        raise ConfigError(f"loss.kd_top_k={loss.kd_top_k} exceeds the k={k} of {CONFIG_KEY}={loss.kd_cache}")


def response_targets(examples: Examples, i: int, side: str) -> np.ndarray:
    """The token ids ``loss_mask`` scores in example ``i``'s ``side`` response: the response, less its first
    token when the prompt is empty (nothing predicts a sequence's first token)."""
    response = (examples.chosen if side == "chosen" else examples.rejected)[i]
    return response if len(examples.prompt[i]) else response[1:]


def responses_digest(targets: Iterable[Sequence[np.ndarray]]) -> str:
    """sha256 over each row's per-side target ids, in row order (length-prefixed, so boundaries count)."""
    h = hashlib.sha256()
    for sides in targets:
        for t in sides:
            t = np.asarray(t, np.int32)
            h.update(np.int64(len(t)).tobytes())
            h.update(t.tobytes())
    return h.hexdigest()


def _schema(k: int):
    import pyarrow as pa

    fields = [pa.field("row", pa.int64())]
    for side in SIDES:
        fields += [pa.field(f"{side}_targets", pa.list_(pa.int32())), pa.field(f"{side}_topk_ids", pa.list_(pa.int32())),
                   pa.field(f"{side}_topk_logps", pa.list_(pa.float32())),
                   pa.field(f"{side}_topk_residual", pa.list_(pa.float32()))]
    return pa.schema(fields)


class TopKCacheWriter:
    """Writes the cache of one ``score`` run, resumably: each batch's rows go to a Parquet part in
    ``<path>.partial/`` (written atomically, named by process and first row, so a recomputed batch
    replaces its part); ``finish`` joins the parts in the scored file's row order into ``path``
    (atomically) and removes the folder.

    A row's part is written before the row itself is recorded as scored, so every row a resumed
    ``score`` skips has its cache entry."""

    def __init__(self, path: str | Path, k: int):
        self.path = Path(path)
        self.k = int(k)
        self.staging = self.path.with_name(self.path.name + ".partial")

    @property
    def complete(self) -> bool:
        return self.path.is_file() and not self.staging.exists()

    def write(self, rows: Sequence[Mapping[str, Any]], process: int = 0) -> None:
        """Append one batch: dicts with ``row`` (source row id) and the per-side arrays of ``_FIELDS``
        (``topk_ids``/``topk_logps`` ``[n, k]``, the others ``[n]``)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        columns = {"row": pa.array([int(r["row"]) for r in rows], pa.int64())}
        schema = _schema(self.k)
        for side in SIDES:
            for f in _FIELDS:
                name = f"{side}_{f}"
                columns[name] = pa.array([np.asarray(r[name]).reshape(-1) for r in rows], schema.field(name).type)
        self.staging.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.staging / f"part-p{process}-r{int(rows[0]['row']):012d}.parquet") as tmp:
            pq.write_table(pa.table(columns, schema=schema), str(tmp))

    def finish(self, order: Sequence[int], record: Mapping[str, Any]) -> Path:
        """Write ``path``: the rows of source ids ``order`` (the scored file's rows, in its order; ``row``
        becomes the position in it), with ``record`` plus the responses' digest as the metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.complete:
            return self.path
        parts = sorted(self.staging.glob("part-*.parquet")) if self.staging.is_dir() else []
        table = pa.concat_tables([pq.read_table(p) for p in parts]) if parts else _schema(self.k).empty_table()
        first: dict[int, int] = {}
        for j, r in enumerate(table.column("row").to_pylist()):
            first.setdefault(r, j)
        missing = [r for r in order if r not in first]
        if missing:
            raise DataError(f"{self.path}: the top-k cache has no entry for scored row(s) {missing[:5]} "
                            f"({self.staging} is incomplete); delete the scored output to rescore")
        table = table.take(pa.array([first[r] for r in order], pa.int64()))
        table = table.set_column(0, "row", pa.array(np.arange(len(order)), pa.int64()))
        targets = [[np.asarray(table.column(f"{s}_targets")[j].values) for s in SIDES] for j in range(len(order))]
        meta = {**record, "k": self.k, "rows": len(order), "responses": responses_digest(targets)}
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True, default=str).encode()})
        with atomic_path(self.path) as tmp:
            pq.write_table(table, str(tmp))
        shutil.rmtree(self.staging, ignore_errors=True)
        return self.path


class _Ragged:
    """One list column as (offsets ``[n + 1]``, flat values)."""

    def __init__(self, column):
        col = column.combine_chunks()
        offsets = col.offsets.to_numpy()
        self.offsets = offsets - offsets[0]
        self.values = col.flatten().to_numpy(zero_copy_only=False)

    def __getitem__(self, j: int) -> np.ndarray:
        return self.values[self.offsets[j]:self.offsets[j + 1]]


def _record(metadata: Mapping[bytes, bytes] | None, path: Path, key: str) -> dict:
    """The ``jaxalign.kd_cache`` record of a cache file's schema metadata (``DataError`` when it has none)."""
    raw = (metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DataError(f"{key}={path}: not a jaxalign top-k cache (no {METADATA_KEY.decode()} metadata)")
    return json.loads(raw)


def _missing(path: Path, key: str) -> DataError:
    return DataError(f"{key}={path}: no such file (write it with `jaxalign score` and score.teacher_top_k)")


def _unreadable(path: Path, key: str, e: Exception) -> DataError:
    return DataError(f"{key}={path}: not a readable Parquet file ({type(e).__name__}: {e})")


def read_record(path: str | Path, *, key: str = CONFIG_KEY) -> dict:
    """A cache file's metadata record (``k``, ``vocab_size``, ...), read from the Parquet footer only: no
    table is loaded (``jaxalign plan`` sizes the top-k arrays from it)."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise _missing(path, key)
    try:
        schema = pq.read_schema(str(path))
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise _unreadable(path, key, e) from None
    return _record(schema.metadata, path, key)


class TopKCache:
    """A cache file loaded for training: ``record`` (its metadata), ``k``, and per row and side the arrays.

    ``match(examples, where)`` ties it to a prepared dataset (every example's responses must have the
    tokens the cache was made from); then ``arrays`` builds a batch's ``[B, T, k]`` arrays.
    """

    def __init__(self, path: str | Path, *, key: str = CONFIG_KEY):
        import pyarrow.parquet as pq

        self.path, self.key = Path(path), key
        if not self.path.is_file():
            raise _missing(self.path, key)
        try:
            table = pq.read_table(str(self.path))
        except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
            raise _unreadable(self.path, key, e) from None
        self.record: dict = _record(table.schema.metadata, self.path, key)
        self.k = int(self.record["k"])
        self._rows = {int(r): j for j, r in enumerate(table.column("row").to_pylist())}
        self._cols = {f"{s}_{f}": _Ragged(table.column(f"{s}_{f}")) for s in SIDES for f in _FIELDS}
        self._of_example: np.ndarray | None = None

    def match(self, examples: Examples, describe=lambda row: f"row {row}") -> None:
        """Map each example to its cache row; ``DataError`` naming the first row the cache lacks or whose
        response tokens differ from the cache's (other responses, tokenizer or data settings)."""
        of_example = np.empty(len(examples), np.int64)
        regenerate = f"rerun `jaxalign score` (score.teacher_top_k) on this data to rewrite {self.path}"
        for i in range(len(examples)):
            row = int(examples.row_id[i])
            j = self._rows.get(row)
            of_example[i] = -1 if j is None else j
            if j is None:
                raise DataError(f"{self.key}={self.path}: no entry for {describe(row)}; {regenerate}")
            for side in SIDES if examples.rejected is not None else ("chosen",):
                mine, cached = response_targets(examples, i, side), self._cols[f"{side}_targets"][j]
                if len(mine) != len(cached) or not np.array_equal(mine, cached):
                    raise DataError(f"{self.key}={self.path}: {describe(row)}: the {side} response's tokens differ from "
                                    f"the cache's ({len(mine)} vs {len(cached)} tokens; other responses, tokenizer or "
                                    f"data settings); {regenerate}")
        self._of_example = of_example

    def arrays(self, examples: Examples, units: Sequence[tuple[int, ...] | None], T: int, side: str,
               prefix: str) -> dict[str, np.ndarray]:
        """``{prefix}topk_ids`` ``[B, T, k]``, ``{prefix}topk_logps`` ``[B, T, k]`` and ``{prefix}topk_residual``
        ``[B, T]`` of ``units`` laid out as ``Collator`` lays out their ``side`` sequences."""
        if self._of_example is None:
            raise RuntimeError("TopKCache.match must run before arrays")
        B, k = len(units), self.k
        ids = np.zeros((B, T, k), np.int32)
        logps = np.zeros((B, T, k), np.float32)
        residual = np.zeros((B, T), np.float32)
        responses = examples.chosen if side == "chosen" else examples.rejected
        cols = [self._cols[f"{side}_{f}"] for f in ("topk_ids", "topk_logps", "topk_residual")]
        for r, unit in enumerate(units):
            off = 0
            for i in unit or ():
                p, n = len(examples.prompt[i]), len(responses[i])
                j = self._of_example[i]
                start = off + p if p else off + 1  # the first scored position of this segment
                stop = off + p + n
                ids[r, start:stop] = cols[0][j].reshape(-1, k)
                logps[r, start:stop] = cols[1][j].reshape(-1, k)
                residual[r, start:stop] = cols[2][j]
                off = stop
        return {f"{prefix}topk_ids": ids, f"{prefix}topk_logps": logps, f"{prefix}topk_residual": residual}
