"""The ``score`` stage: one pass over a preference dataset that adds precomputed columns.

Columns (each on request): ``ref_chosen_logps``/``ref_rejected_logps`` and
``teacher_chosen_logps``/``teacher_rejected_logps`` (summed response
log-probs, tokenised exactly as training tokenises, so training then skips
those models), and for RDO ``rdo_difference`` (the predicted reward
difference d: antisymmetrised difference-model output, reward-model score
gap, or the data's score gap) with ``rdo_weight`` (``loss.rdo`` transform,
normalised over the dataset). A reward-model source also writes its scores as
``score_chosen``/``score_rejected``.

With ``score.teacher_top_k`` = k > 0 the teacher's top-k next-token log-probs (ids and values, temperature
1) and residual log-mass at every response token of both sides go to a Parquet file next to the output,
``kd_cache_path(score.output)`` (``<output stem>.teacher_topk.parquet``; format in
``jaxalign.data.kd_cache``), from the same forward pass as the teacher's sequence log-probs. Training
reads it with ``loss.kd_cache`` (``attach_kd_cache`` checks it against the tokenizer and the responses).

Per-row results stream to ``<output>.partial.jsonl`` (resumable after a crash
or SIGTERM); the output is written once every row is scored, since the RDO
normalisation needs them all.

Multi-process (``jax.distributed``): the models are sharded over the global mesh, every process
agrees on the rows left and the batches; in each batch a process collates only its block of rows,
and writes the rows it owns to ``<output>.part-P-of-N.jsonl``; process 0 folds the parts into the
stream (an interrupted run's parts at the start of the next run, of any process count) and writes
the output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from jaxalign.config.loss import kd_sides
from jaxalign.config.schema import Config, ConfigError
from jaxalign.data import DataError, kd_cache, prepare
from jaxalign.data.kd_cache import TopKCache, TopKCacheWriter
from jaxalign.losses import antisymmetric_difference, rdo_weights
from jaxalign.objectives.dadpo import TEACHER_COLUMNS
from jaxalign.objectives.dpo import REFERENCE_COLUMNS
from jaxalign.parallel import distributed
from jaxalign.parallel.mesh import make_mesh
from jaxalign.pipeline.progress import progress
from jaxalign.pipeline.rows import RowWriter, fold_parts, load_table, part_path
from jaxalign.pipeline.scoring import make_pair_differences, make_pair_logps, make_pair_rewards, make_pair_topk
from jaxalign.train.build import build_model, build_model_config, build_tokenizer
from jaxalign.train.preemption import PreemptionGuard

log = logging.getLogger(__name__)

__all__ = ["ScoreResult", "attach_kd_cache", "kd_cache_path", "run_score"]

_ROW = "row"  # key of the staged per-row results


@dataclass
class ScoreResult:
    output: Path
    rows: int  # rows scored so far (all of them unless interrupted)
    new_rows: int
    columns: list[str]
    seconds: float
    interrupted: bool = False
    kd_cache: Path | None = None  # the teacher's top-k cache (score.teacher_top_k > 0)


def _device_batch(batch: dict, mesh, keys, rows: int) -> dict:
    return distributed.global_batch({k: batch[k] for k in keys}, mesh, rows=rows)


_SEQ_KEYS = tuple(f"{side}_{k}" for side in ("chosen", "rejected") for k in ("input_ids", "positions", "segment_ids", "loss_mask"))
_PAIRWISE_KEYS = tuple(f"{d}_{k}" for d in ("fwd", "bwd") for k in ("input_ids", "positions", "segment_ids", "last_index"))


def _finish_rows(config: Config, source_rows: list[dict], staged: list[dict], columns: list[str]) -> list[dict]:
    """Original rows (those scored) + the new columns; RDO weights normalised over the whole dataset."""
    by_row = {r[_ROW]: r for r in staged}
    ids = sorted(by_row)
    if "rdo_difference" in columns:
        rdo = config.loss.rdo
        d = np.asarray([by_row[i]["rdo_difference"] for i in ids], np.float32)
        w = np.asarray(rdo_weights(d, rdo.transform, rdo.temperature, rdo.clip or None, rdo.normalize))
        for i, wi in zip(ids, w):
            by_row[i]["rdo_weight"] = float(wi)
    return [{**source_rows[i], **{k: v for k, v in by_row[i].items() if k != _ROW}} for i in ids]


#: Cached columns -> the provenance keys their values depend on (besides the data settings and tokenizer).
CACHED_COLUMNS = {**dict.fromkeys(REFERENCE_COLUMNS, "reference"), **dict.fromkeys(TEACHER_COLUMNS, "teacher")}


def score_provenance(config: Config, path: str) -> dict:
    """What decides the values ``score`` writes: the input's content, the tokenizer, the data settings that
    change token ids, each scoring model's fingerprint and the RDO settings (see ``jaxalign.train.provenance``)."""
    from jaxalign.train.provenance import data_settings, source_digest, spec_fingerprint

    sc, rdo = config.score, config.loss.rdo
    record = {"kind": "score", "source": source_digest(path), "tokenizer": spec_fingerprint(config.model, tokenizer_only=True),
              **data_settings(config.data)}
    if sc.reference_logps:
        record["reference"] = spec_fingerprint(config.reference if config.reference.is_set() else config.model)
    if sc.teacher_logps or sc.teacher_top_k:
        record["teacher"] = spec_fingerprint(config.teacher)
    if sc.teacher_top_k:
        record["score.teacher_top_k"] = sc.teacher_top_k
    if sc.rdo_weights:
        record.update({f"loss.rdo.{k}": getattr(rdo, k) for k in ("source", "transform", "temperature", "clip", "normalize")})
        if rdo.source != "dataset":
            record["loss.rdo.model"] = spec_fingerprint(rdo.model)
    return record


def check_cached_columns(config: Config, columns: set[str], *, reference, teacher) -> None:
    """Refuse cached log-prob columns of ``data.path`` that ``score`` made with other models or data
    settings than this run uses; ``reference``/``teacher`` are the ``ModelSpec``s this run would load.

    The record beside the file (``<data.path>.provenance.json``) is compared on the data settings,
    the tokenizer, the models of the columns present, and the file's own digest (a file changed
    after scoring is refused too). Without a record the columns cannot be checked: a warning says so.
    """
    from jaxalign.train.provenance import check_match, data_settings, file_digest, read_sidecar, spec_fingerprint

    present = sorted(c for c in CACHED_COLUMNS if c in columns)
    path = config.data.path
    if not present or config.data.ignore_provenance or not path or not Path(path).is_file():
        return
    recorded = read_sidecar(path)
    if recorded is None:
        log.warning("%s: cached columns %s have no provenance record; they cannot be checked against this run's "
                    "models and data settings", path, ", ".join(present))
        return
    regenerate = f"rerun `jaxalign score` with this run's settings to rewrite {path}"
    if "output" in recorded and recorded["output"] != file_digest(path):
        raise DataError(f"data.path={path} changed after `jaxalign score` wrote it (its content no longer matches "
                        f"{Path(path).name}.provenance.json); {regenerate}, or set data.ignore_provenance=true")
    current = {"tokenizer": spec_fingerprint(config.model, tokenizer_only=True), **data_settings(config.data)}
    models = {"reference": reference, "teacher": teacher}
    for role in sorted({CACHED_COLUMNS[c] for c in present}):
        if models[role] is not None:
            current[role] = spec_fingerprint(models[role])
    check_match(f"data.path={path} (columns {', '.join(present)})", {k: recorded.get(k) for k in current}, current,
                regenerate=regenerate)


def kd_cache_path(output: str | Path) -> Path:
    """Where ``score`` writes the teacher's top-k cache for ``score.output``: ``<stem>.teacher_topk.parquet`` beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}.teacher_topk.parquet")


def _kd_cache_record(config: Config, vocab_size: int) -> dict:
    """What a top-k cache's values depend on (its Parquet metadata): the teacher, the tokenizer and its vocab
    size, the data settings that change token ids, and the scored input's digest."""
    from jaxalign.train.provenance import data_settings, source_digest, spec_fingerprint

    return {"kind": "kd_cache", "teacher": spec_fingerprint(config.teacher), "vocab_size": int(vocab_size),
            "tokenizer": spec_fingerprint(config.model, tokenizer_only=True),
            "source": source_digest(config.score.input or config.data.path), **data_settings(config.data)}


def attach_kd_cache(config: Config, spec, data, vocab_size: int) -> TopKCache | None:
    """Training from cached teacher distributions (``loss.kd_cache``): load the cache, check it fits this run and
    add its arrays to ``data``'s batches (the ``loss.kd_on`` sides); None when there is nothing to do.

    Refused with a one-line error naming the file: a vocab size other than the policy's ``vocab_size``, another
    tokenizer, teacher (when ``teacher`` is set) or data settings than recorded (these unless
    ``data.ignore_provenance``), and any row whose response tokens differ from the cache's. The cache holds
    temperature-1 log-probs of ``data.path`` only: ``loss.kd_temperature`` must be 1 and ``eval_data`` unset."""
    from jaxalign.train.provenance import check_match, data_settings, spec_fingerprint

    loss, path, key = config.loss, config.loss.kd_cache, kd_cache.CONFIG_KEY
    if not path or loss.kd_weight == 0:
        return None
    if not spec.extra_terms or spec.task != "preference":
        raise ConfigError(f"{key}={path}: loss.name={loss.name!r} has no token-level distillation term to feed")
    kd_cache.check_settings(loss, config.eval_data)
    cache = TopKCache(path, key=key)
    regenerate = f"rerun `jaxalign score` with score.teacher_top_k and this run's settings to rewrite {path}"
    if cache.record.get("vocab_size") != vocab_size:
        raise DataError(f"{key}={path} was made for vocab size {cache.record.get('vocab_size')} but the policy "
                        f"(model) has {vocab_size}: teacher and student must share a tokenizer; {regenerate}")
    kd_cache.check_top_k(loss, cache.k)
    if not config.data.ignore_provenance:
        current = {"tokenizer": spec_fingerprint(config.model, tokenizer_only=True), **data_settings(config.data)}
        if config.teacher.is_set():
            current["teacher"] = spec_fingerprint(config.teacher)
        check_match(f"{key}={path}", {k: cache.record.get(k) for k in current}, current, regenerate=regenerate)
    cache.match(data.examples, data.describe_row)
    data.collator.use_topk(cache, kd_sides(loss.kd_on))
    log.info("train: token-level distillation from %s (k=%d, %d rows)", path, cache.k, cache.record.get("rows", -1))
    return cache


def _cache_row(host: dict, h: int, values: dict, v: int, row: int) -> dict:
    """One pair's top-k cache entry: per side, the scored positions' target ids and teacher arrays."""
    entry = {"row": row}
    for side in kd_cache.SIDES:
        pos = np.flatnonzero(host[f"{side}_loss_mask"][h, 1:])
        entry[f"{side}_targets"] = host[f"{side}_input_ids"][h, 1:][pos]
        for name in ("ids", "logps", "residual"):
            entry[f"{side}_topk_{name}"] = values[f"{side}_{name}"][v][pos]
    return entry


def run_score(config: Config) -> ScoreResult:
    """Score every row of ``score.input`` (or ``data.path``) not yet scored; write ``score.output``.

    Holds the output's lock; continues a partial output only when its provenance matches."""
    from jaxalign.train.locks import output_lock

    distributed.initialize(config.mesh.multihost)  # before anything (process_index) starts the backend
    with contextlib.ExitStack() as stack:  # process 0 holds the lock for all processes of a multi-process run
        distributed.on_main(lambda: stack.enter_context(output_lock(config.score.output, key="score.output", directory=False)),
                            f"locking score.output={config.score.output}")
        return _run_score(config)


def _run_score(config: Config) -> ScoreResult:
    from jaxalign.pipeline.generate import check_resumable
    from jaxalign.train.provenance import file_digest, write_sidecar

    sc, rdo = config.score, config.loss.rdo
    path = sc.input or config.data.path
    tokenizer = build_tokenizer(config.model, key="model")
    data_cfg = dataclasses.replace(config.data, path=path, task="preference", packing=False, shuffle=False,
                                   drop_remainder=False)
    data = prepare(path, tokenizer, data_cfg)  # every bad row is found here, before any model loads
    log.info("score: %s", data.report.summary())
    extras = set(data.examples.extras)
    want_rdo = sc.rdo_weights
    if want_rdo and rdo.source == "dataset" and not {"score_chosen", "score_rejected"} <= extras:
        raise DataError(f"{path}: loss.rdo.source='dataset' needs columns 'score_chosen' and 'score_rejected'")
    pairwise = None
    if want_rdo and rdo.source == "difference_model":
        judge_tok = build_tokenizer(rdo.model, key="loss.rdo.model") if (rdo.model.tokenizer or rdo.model.path) else tokenizer
        pairwise = prepare(path, judge_tok, dataclasses.replace(data_cfg, task="pairwise"))
    student_cfg = build_model_config(config.model, key="model")
    top_k = sc.teacher_top_k
    if top_k and not config.teacher.is_set():
        raise ConfigError(f"score.teacher_top_k={top_k} needs a teacher (teacher.path or teacher.preset)")
    if sc.teacher_logps or top_k:
        teacher_cfg = build_model_config(config.teacher, key="teacher")
        if teacher_cfg.vocab_size != student_cfg.vocab_size:
            raise ConfigError(f"teacher vocabulary ({teacher_cfg.vocab_size}) differs from the student's "
                              f"({student_cfg.vocab_size}): teacher and student must share a tokenizer")
        if top_k > teacher_cfg.vocab_size:
            raise ConfigError(f"score.teacher_top_k={top_k} exceeds the teacher's vocab size {teacher_cfg.vocab_size}")
    topk = TopKCacheWriter(kd_cache_path(sc.output), top_k) if top_k else None

    source_rows = load_table(path)
    multi, main = jax.process_count() > 1, jax.process_index() == 0
    by_row = lambda row: row[_ROW]  # noqa: E731

    def open_and_fold() -> RowWriter:  # rows an interrupted multi-process run left in part files join the stream first
        opened = RowWriter(sc.output, key=_ROW, staged=True)
        fold_parts(opened, by_row)
        return opened

    writer = distributed.on_main(open_and_fold, f"merging the part files of score.output={sc.output}")
    if writer is None:  # the other processes read what process 0 left
        writer = RowWriter(sc.output, key=_ROW, staged=True)
    out = RowWriter(part_path(sc.output, jax.process_index(), jax.process_count()), key=_ROW) if multi else writer
    rows_before = writer.rows_done
    columns: list[str] = []
    if sc.reference_logps:
        columns += ["ref_chosen_logps", "ref_rejected_logps"]
    if sc.teacher_logps:
        columns += ["teacher_chosen_logps", "teacher_rejected_logps"]
    if want_rdo:
        columns += (["score_chosen", "score_rejected"] if rdo.source == "reward_model" else []) + ["rdo_difference", "rdo_weight"]
    record = score_provenance(config, path)
    unrecorded = check_resumable(sc.output, "score.output", writer, record, ignore=config.data.ignore_provenance,
                                 regenerate=f"delete {sc.output} (and {Path(sc.output).name}.partial.jsonl) to rescore")
    if writer.complete:
        if topk is not None and not topk.complete:
            raise DataError(f"score.output={sc.output} is complete but its top-k cache {topk.path} is missing or "
                            f"unfinished; delete {sc.output} to rescore")
        log.info("score: %s already complete (%d rows)", sc.output, writer.rows_done)
        return ScoreResult(Path(sc.output), writer.rows_done, 0, columns, 0.0, kd_cache=topk and topk.path)

    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    batch_size = -(-config.score_batch_size // shards) * shards
    start, new_rows, interrupted = time.perf_counter(), 0, False
    todo_units = [u for u in data.units if int(data.examples.row_id[u[0]]) not in writer.done_ids]
    if todo_units:
        with jax.set_mesh(mesh):
            scorers = []  # (columns, fn(batch, pairwise_batch) -> {column: [B]})
            chunk = config.loss.chunk_size
            if sc.reference_logps:
                spec = config.reference if config.reference.is_set() else config.model
                gd, st = nnx.split(build_model(spec, key="reference" if config.reference.is_set() else "model", mesh=mesh))
                fn = make_pair_logps(gd, chunk)
                scorers.append(lambda b, p, fn=fn, st=st: dict(zip(("ref_chosen_logps", "ref_rejected_logps"), fn(st, b))))
            if sc.teacher_logps and not top_k:
                gd, st = nnx.split(build_model(config.teacher, key="teacher", mesh=mesh))
                fn = make_pair_logps(gd, chunk)
                scorers.append(lambda b, p, fn=fn, st=st: dict(zip(("teacher_chosen_logps", "teacher_rejected_logps"), fn(st, b))))
            if top_k:  # the sequence log-probs (when asked) and the top-k cache from one teacher forward pass
                gd, st = nnx.split(build_model(config.teacher, key="teacher", mesh=mesh))
                fn = make_pair_topk(gd, chunk, top_k)

                def teacher_cols(b, p, fn=fn, st=st):
                    out = fn(st, b)
                    cols = {f"_topk_{k}": v for k, v in out.items() if k not in ("chosen", "rejected")}
                    if sc.teacher_logps:
                        cols.update(teacher_chosen_logps=out["chosen"], teacher_rejected_logps=out["rejected"])
                    return cols

                scorers.append(teacher_cols)
            if want_rdo and rdo.source == "reward_model":
                gd, st = nnx.split(build_model(rdo.model, key="loss.rdo.model", head="score", mesh=mesh))
                fn = make_pair_rewards(gd)

                def reward_cols(b, p, fn=fn, st=st):
                    c, r = fn(st, b)
                    return {"score_chosen": c, "score_rejected": r, "rdo_difference": c - r}

                scorers.append(reward_cols)
            if want_rdo and rdo.source == "difference_model":
                gd, st = nnx.split(build_model(rdo.model, key="loss.rdo.model", head="score", mesh=mesh))
                fn = make_pair_differences(gd)
                scorers.append(lambda b, p, fn=fn, st=st: {"rdo_difference": antisymmetric_difference(*fn(st, p))})
        if unrecorded and main:
            write_sidecar(sc.output, record)

        pair_by_row = {}
        if pairwise is not None:
            pair_by_row = {int(pairwise.examples.row_id[u[0]]): u for u in pairwise.units}
            missing = [int(data.examples.row_id[u[0]]) for u in todo_units if int(data.examples.row_id[u[0]]) not in pair_by_row]
            if missing:
                raise DataError(f"{path}: row(s) {missing[:5]} could not be laid out for the difference model "
                                f"(too long for data.max_length={config.data.max_length} as a pair)")
        bar = progress(total=len(data.units), initial=len(data.units) - len(todo_units), desc="score", unit="row",
                       enabled=config.logging.progress_bar)
        with PreemptionGuard() as guard, jax.set_mesh(mesh):
            # This process collates its block of each batch's rows (the length bucket is the whole batch's)
            # and reads back the rows it owns from its own shards; on one process: all of them.
            span = slice(*distributed.row_span(mesh, batch_size))
            owned = distributed.owned_rows(mesh, batch_size)
            for lo in range(0, len(todo_units), batch_size):
                units = todo_units[lo:lo + batch_size]
                pad = [None] * (batch_size - len(units))  # one batch shape: one compile per bucket
                host = data.collate(units + pad, span)
                batch = _device_batch(host, mesh, _SEQ_KEYS, batch_size)
                pbatch = None
                if pairwise is not None:
                    punits = [pair_by_row[int(data.examples.row_id[u[0]])] for u in units]
                    pbatch = _device_batch(pairwise.collate(punits + pad, span), mesh, _PAIRWISE_KEYS, batch_size)
                values: dict = {}
                for scorer in scorers:
                    values.update(scorer(batch, pbatch))
                values = {k: distributed.local_rows(v, mesh, owned) for k, v in values.items()}
                cached = {k[len("_topk_"):]: values.pop(k) for k in list(values) if k.startswith("_topk_")}
                rows, cache_rows = [], []
                for j in range(owned.start, min(owned.stop, len(units))):
                    h, v = j - span.start, j - owned.start  # positions in this process's collated / read-back rows
                    row = {_ROW: int(host["row_id"][h, 0])}
                    row.update({k: float(x[v]) for k, x in values.items()})
                    if topk is not None:
                        cache_rows.append(_cache_row(host, h, cached, v, row[_ROW]))
                    if want_rdo and rdo.source == "dataset":
                        row["rdo_difference"] = float(host["score_chosen"][h, 0] - host["score_rejected"][h, 0])
                    rows.append(row)
                if topk is not None:  # before the rows: a row recorded as scored always has its cache entry
                    topk.write(cache_rows, jax.process_index())
                out.write(rows)
                new_rows += len(units)  # over all processes
                bar.update(len(units))
                if distributed.agreed_stop(guard) if multi else guard.requested:  # multi-process: a batch all agree on
                    interrupted = True
                    log.warning("score: stopped by %s after %d of %d rows; rerun the same command to continue",
                                guard.signal_name, rows_before + new_rows, len(data.units))
                    break
        bar.close()
    if not interrupted:
        distributed.barrier("score: rows written")

        def merge() -> None:
            if not todo_units and unrecorded:
                write_sidecar(sc.output, record)
            fold_parts(writer, by_row)
            if topk is not None:  # before the output: a complete output always has its cache
                order = sorted(r[_ROW] for r in (writer.staged_rows() if writer.stream.exists() else []))
                topk.finish(order, _kd_cache_record(config, student_cfg.vocab_size))
            writer.finish(lambda staged: _finish_rows(config, source_rows, staged, columns))
            write_sidecar(sc.output, {**record, "output": file_digest(sc.output)})

        distributed.on_main(merge, f"writing score.output={sc.output}")
    result = ScoreResult(Path(sc.output), rows_before + new_rows, new_rows, columns, time.perf_counter() - start, interrupted,
                         kd_cache=topk.path if topk is not None and topk.complete else None)
    log.info("score: %d rows, columns %s -> %s (%.1f s)", result.rows, ", ".join(columns), sc.output, result.seconds)
    return result
