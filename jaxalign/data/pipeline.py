"""``prepare``: rows -> validated, tokenised, truncated (optionally packed) examples, once, up-front.

Runs over the whole dataset before training: every bad row is found here
(``on_bad_row="error"`` raises one ``DataError`` listing them; ``"skip"``
drops and counts them), truncation is applied and counted, and the result
(``PreparedData``) is an in-memory list of int32 token arrays plus the units
(rows) that ``Batcher`` shuffles and ``Collator`` turns into batches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from jaxalign.data.batching import Batcher
from jaxalign.data.collate import Collator, Examples
from jaxalign.data.config import DataConfig
from jaxalign.data.errors import BadRows, DataError, RowError, RowProblem
from jaxalign.data.formats import PAIRED_FORMATS, Record, detect_format, extra_columns, parse_row
from jaxalign.data.packing import pack_first_fit
from jaxalign.data.sources import Source, load_source
from jaxalign.data.tokenize import Encoded, Encoder, truncate_pair_budget, truncate_prompt

__all__ = ["prepare", "PreparedData", "PrepareReport", "build_batcher"]

logger = logging.getLogger("jaxalign.data")

#: KTO examples built from pairs: per-example column <- (chosen column, rejected column).
_KTO_FROM_PAIR = {
    "score": ("score_chosen", "score_rejected"),
    "ref_logps": ("ref_chosen_logps", "ref_rejected_logps"),
    "teacher_logps": ("teacher_chosen_logps", "teacher_rejected_logps"),
    "rdo_weight": ("rdo_weight", "rdo_weight"),
}


@dataclass
class PrepareReport:
    """What ``prepare`` did: counts to log, and the skipped rows' problems."""

    source: str
    format: str
    task: str
    num_rows: int
    num_examples: int
    num_units: int
    num_skipped: int
    num_truncated: int
    num_retokenized: int
    chat_template: bool
    skipped: list[RowProblem] = field(default_factory=list)

    def summary(self) -> str:
        parts = [
            f"{self.source}: {self.num_rows} rows (format={self.format}, task={self.task}"
            f"{', chat template' if self.chat_template else ''}) "
            f"-> {self.num_examples} examples in {self.num_units} rows",
            f"{self.num_skipped} bad rows skipped",
            f"{self.num_truncated} rows truncated",
        ]
        if self.num_retokenized:
            parts.append(f"{self.num_retokenized} rows re-tokenised at the prompt/response boundary")
        return "; ".join(parts)


class PreparedData:
    """Prepared examples, their units (batch rows) and the collator that turns units into arrays."""

    def __init__(self, config: DataConfig, examples: Examples, units: list[tuple[int, ...]], collator: Collator,
                 report: PrepareReport, source: Source):
        self.config = config
        self.examples = examples
        self.units = units
        self.collator = collator
        self.report = report
        self.source = source

    @property
    def task(self) -> str:
        return self.config.task

    def __len__(self) -> int:
        return len(self.units)

    def collate(self, units: Sequence[tuple[int, ...] | None], rows: slice | None = None) -> dict[str, np.ndarray]:
        """Arrays for ``units[rows]``; see ``jaxalign.data.collate`` for the schema."""
        return self.collator(units, rows)

    def describe_row(self, row_id: int) -> str:
        """``"<file>:row N (line L)"`` for a ``row_id`` found in a batch (for error reports)."""
        return self.source.describe(int(row_id))

    def batcher(self, *, process_index: int = 0, process_count: int = 1, num_epochs: int | None = None) -> Batcher:
        """A ``Batcher`` with this data's config (batch size, shuffle, seed, drop_remainder)."""
        return Batcher.from_config(
            self, self.config, process_index=process_index, process_count=process_count, num_epochs=num_epochs
        )


def build_batcher(
    config: DataConfig, tokenizer: Any, *, process_index: int = 0, process_count: int = 1,
    num_epochs: int | None = None,
) -> Batcher:
    """Load ``config.path``, prepare it and return this process's ``Batcher``."""
    return prepare(config.path, tokenizer, config).batcher(
        process_index=process_index, process_count=process_count, num_epochs=num_epochs
    )


def prepare(source: Any, tokenizer: Any, config: DataConfig) -> PreparedData:
    """Validate, tokenise, truncate and (optionally) pack every row of ``source``.

    Args:
      source: a path / hub id (loaded with ``config.split``/``data_files``), a
        ``Source``, a ``datasets.Dataset`` or a list of row dicts.
      tokenizer: a ``transformers`` tokenizer (fast), with an EOS token.
      config: the ``DataConfig``.

    Raises:
      DataError: config problems, or bad rows when ``on_bad_row="error"``.
    """
    config.validate()
    src = _as_source(source, config)
    columns, first_rows, num_rows = _peek(src.dataset)
    fmt = config.format if config.format != "auto" else detect_format(columns, first_rows)
    _check_task(fmt, config.task)
    extras = extra_columns(fmt, columns)
    bad = BadRows(config.on_bad_row, src.locate)

    records: list[Record] = []
    for row_id, row in enumerate(_iter_rows(src.dataset)):
        try:
            rec = parse_row(row, fmt, row_id, extras)
        except RowError as e:
            bad.add(row_id, e.field, e.problem)
            continue
        if config.task == "sft":
            rec.rejected = None
        records.append(rec)

    encoder = Encoder(
        tokenizer,
        use_chat_template=config.use_chat_template,
        add_bos=config.add_bos,
        append_eos=config.task != "pairwise",
    )
    pairwise_ids = None
    if config.task == "pairwise":
        pieces = [config.pairwise_a_prefix, config.pairwise_b_prefix, config.pairwise_suffix]
        pairwise_ids = tuple(np.asarray(tokenizer(p, add_special_tokens=False)["input_ids"] if p else [], np.int32)
                             for p in pieces)
    encoded: list[Encoded] = []
    retokenized = 0
    chat = False
    for rec, enc in zip(records, encoder.encode(records)):
        if isinstance(enc, RowError):
            bad.add(rec.row_id, enc.field, enc.problem)
            continue
        chat = chat or encoder.uses_template(rec)
        retokenized += enc.retokenized
        encoded.append(enc)

    truncated = 0
    kept: list[Encoded] = []
    for enc in encoded:
        try:
            truncated += _truncate(enc, config, pairwise_ids)
        except RowError as e:
            bad.add(enc.record.row_id, e.field, e.problem)
            continue
        kept.append(enc)

    skipped = bad.finish()
    examples = _examples(kept, config.task, extras)
    if not len(examples):
        raise DataError(f"{src.name}: no usable rows ({num_rows} rows, {skipped} skipped as bad)")

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = Collator(
        examples,
        config.task,
        segments_per_row=config.segments_per_row,
        buckets=config.bucket_lengths(),
        pad_id=pad_id,
        max_length=config.max_length,
        eos_id=tokenizer.eos_token_id,
        pairwise_ids=pairwise_ids,
    )
    if config.packing:
        order = np.random.default_rng(config.seed).permutation(len(examples)) if config.shuffle else None
        units = pack_first_fit(collator.side_lengths(), config.max_length, config.max_segments_per_row, order=order)
    else:
        units = [(i,) for i in range(len(examples))]

    report = PrepareReport(
        source=src.name, format=fmt, task=config.task, num_rows=num_rows, num_examples=len(examples),
        num_units=len(units), num_skipped=skipped, num_truncated=truncated, num_retokenized=retokenized,
        chat_template=chat, skipped=list(bad.problems),
    )
    logger.info("prepared %s", report.summary())
    return PreparedData(config, examples, units, collator, report, src)


# ----------------------------------------------------------------------------- helpers


def _as_source(source: Any, config: DataConfig) -> Source:
    if isinstance(source, Source):
        return source
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        return load_source(source, split=config.split, data_files=config.data_files)
    if isinstance(source, list):
        return Source(source, "<rows>")
    if hasattr(source, "column_names"):
        return Source(source, getattr(getattr(source, "info", None), "dataset_name", None) or "<dataset>")
    raise DataError(f"cannot read rows from a {type(source).__name__}")


def _peek(dataset: Any) -> tuple[list[str], list[Mapping[str, Any]], int]:
    if isinstance(dataset, list):
        columns = sorted({k for row in dataset for k in row})
        return columns, dataset[:100], len(dataset)
    head = dataset[: min(100, len(dataset))]
    first = [dict(zip(head, values)) for values in zip(*head.values())] if head else []
    return list(dataset.column_names), first, len(dataset)


def _iter_rows(dataset: Any) -> Iterator[Mapping[str, Any]]:
    if isinstance(dataset, list):
        for row in dataset:
            if not isinstance(row, Mapping):
                raise DataError(f"rows must be dicts, got {type(row).__name__}")
            yield row
        return
    for batch in dataset.iter(batch_size=1024):
        names = list(batch)
        for values in zip(*(batch[n] for n in names)):
            yield dict(zip(names, values))


def _check_task(fmt: str, task: str) -> None:
    paired = fmt in PAIRED_FORMATS
    if task in ("preference", "pairwise") and not paired:
        raise DataError(f"data.task={task!r} needs preference pairs (chosen/rejected), but the rows are format {fmt!r}")
    if task == "sft" and fmt == "unpaired":
        raise DataError("data.task='sft' cannot use unpaired (KTO) rows")
    if task == "kto" and not (paired or fmt == "unpaired"):
        raise DataError(f"data.task='kto' needs pairs or prompt/completion/label rows, but the rows are format {fmt!r}")


def _truncate(enc: Encoded, config: DataConfig, pairwise_ids) -> bool:
    """Truncate ``enc`` in place; True if anything was cut. Raises ``RowError`` under ``truncation="error"``."""
    limit, max_len, policy = config.prompt_limit, config.max_length, config.truncation
    prompt = enc.prompt
    names = ("chosen", "rejected") if len(enc.responses) == 2 else (enc.record.response_field,)
    if config.task == "pairwise":
        overhead = sum(len(x) for x in pairwise_ids) + 1
        budget = max_len - min(len(prompt), limit) - overhead
        if budget < 2:
            raise RowError("prompt", f"no room for the responses: max_length {max_len} - prompt - template "
                           f"({overhead} tokens) leaves {budget}")
        too_long = len(prompt) > limit or sum(len(r) for r in enc.responses) > budget
        if too_long and policy == "error":
            raise RowError(names[0], f"too long for max_length {max_len} (data.truncation='error')")
        if too_long:
            enc.prompt = truncate_prompt(prompt, limit, policy)
            enc.responses = list(truncate_pair_budget(*enc.responses, budget))
        return too_long
    if len(prompt) > limit:
        if policy == "error":
            raise RowError(
                "prompt", f"too long: {len(prompt)} tokens > max_prompt_length {limit} (data.truncation='error')"
            )
        prompt = truncate_prompt(prompt, limit, policy)
    room = max_len - len(prompt)
    cut = len(prompt) < len(enc.prompt)
    responses = []
    for name, r in zip(names, enc.responses):
        if len(r) > room:
            if policy == "error":
                raise RowError(name, f"too long: {len(prompt)} prompt + {len(r)} response tokens > max_length "
                               f"{max_len} (data.truncation='error')")
            r, cut = r[:room], True
        responses.append(r)
    enc.prompt, enc.responses = prompt, responses
    return cut


def _examples(kept: list[Encoded], task: str, extras: tuple[str, ...]) -> Examples:
    if task != "kto":
        pair = task in ("preference", "pairwise")
        return Examples(
            prompt=[e.prompt for e in kept],
            chosen=[e.responses[0] for e in kept],
            rejected=[e.responses[1] for e in kept] if pair else None,
            row_id=np.asarray([e.record.row_id for e in kept], np.int64),
            extras={n: np.asarray([e.record.extras[n] for e in kept], np.float32) for n in extras},
        )
    prompt, completion, label, row_id = [], [], [], []
    cols: dict[str, list[float]] = {}
    unpaired = bool(kept) and kept[0].record.label is not None
    # From pairs, a KTO column exists only when both of its source columns do.
    names = extras if unpaired else tuple(k for k, (c, r) in _KTO_FROM_PAIR.items() if c in extras and r in extras)
    for e in kept:
        rec = e.record
        if unpaired:
            sides = [(e.responses[0], rec.label, 0)]
        else:
            sides = [(e.responses[0], True, 0), (e.responses[1], False, 1)]
        for ids, lab, side in sides:
            prompt.append(e.prompt)
            completion.append(ids)
            label.append(bool(lab))
            row_id.append(rec.row_id)
            for n in names:
                src = n if unpaired else _KTO_FROM_PAIR[n][side]
                cols.setdefault(n, []).append(rec.extras[src])
    return Examples(
        prompt=prompt,
        chosen=completion,
        rejected=None,
        row_id=np.asarray(row_id, np.int64),
        label=np.asarray(label, bool),
        extras={n: np.asarray(v, np.float32) for n, v in cols.items()},
    )
