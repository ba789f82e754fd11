"""``DataConfig``: every knob of the data pipeline, as a plain dataclass.

Plain ``@dataclass`` with ``typing`` annotations so it can be embedded in the
global OmegaConf structured config. Each field carries a docstring (the string
literal under it). ``validate()`` checks cross-field constraints and names the
offending field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from jaxalign.data.errors import DataError

__all__ = ["DataConfig", "FORMATS", "TASKS"]

#: Row formats ("auto" detects one from the columns); see ``jaxalign.data.formats``.
FORMATS = ("auto", "preference", "chat_preference", "hh", "sft", "chat_sft", "unpaired")
#: Batch schemas; see ``jaxalign.data.batching``.
TASKS = ("preference", "sft", "kto", "pairwise")
TRUNCATIONS = ("keep_end", "keep_start", "error")


@dataclass
class DataConfig:
    """Where the data comes from and how it becomes fixed-shape batches."""

    path: str = ""
    """Local ``.jsonl``/``.json``/``.parquet``/``.csv`` file, a directory of such files, or a hub dataset id."""

    split: str = "train"
    """Split to load (for a directory: files whose name contains the split, else all files for 'train')."""

    data_files: Optional[List[str]] = None
    """Explicit data files (relative to ``path`` when ``path`` is a directory); overrides discovery."""

    format: str = "auto"
    """Row format: auto | preference | chat_preference | hh | sft | chat_sft | unpaired."""

    task: str = "preference"
    """Batch schema to build: preference (DPO family, RRHF, reward models) | sft | kto | pairwise (difference model)."""

    batch_size: int = 32
    """Global batch size (rows per step over all processes); must divide by the process count."""

    max_length: int = 1024
    """Maximum tokens per sequence (prompt + response) after truncation."""

    max_prompt_length: Optional[int] = None
    """Maximum prompt tokens; default ``max_length // 2``. Must be < ``max_length``."""

    truncation: str = "keep_end"
    """Prompt truncation: keep_end (drop the prompt's beginning) | keep_start | error (over-long rows are bad rows)."""

    buckets: Optional[List[int]] = None
    """Padded lengths a batch may take (each batch uses the smallest fitting its longest row).

    Default: powers of two from ``min_bucket`` below ``max_length``, plus ``max_length``."""

    min_bucket: int = 64
    """Smallest automatic bucket."""

    packing: bool = False
    """Pack several examples per row (segment ids 1..K); preference pairs pack in lockstep. Not for kto/pairwise."""

    max_segments_per_row: int = 8
    """K: maximum examples per packed row (per-example arrays are ``[B, K]``)."""

    on_bad_row: str = "error"
    """error: stop before training listing the bad rows | skip: drop them and report the count."""

    use_chat_template: Optional[bool] = None
    """None: the tokenizer's chat template for conversational rows only; True: also wrap
    plain-text rows as user/assistant messages; False: never (conversational rows are an error)."""

    add_bos: Optional[bool] = None
    """Plain-text rows: prepend BOS to the prompt (None: when the tokenizer has a BOS token).

    Chat templates decide BOS themselves (never doubled)."""

    pairwise_a_prefix: str = "\n\nResponse A: "
    """Difference-model template: text between the prompt and the first response."""

    pairwise_b_prefix: str = "\n\nResponse B: "
    """Difference-model template: text between the two responses."""

    pairwise_suffix: str = ""
    """Difference-model template: text after the second response (an EOS token follows it)."""

    shuffle: bool = True
    """Shuffle rows each epoch (deterministic from ``seed`` and the epoch)."""

    seed: int = 0
    """Seed of the shuffle and of the packing order."""

    drop_remainder: bool = True
    """Drop the last incomplete batch of an epoch; if False it is padded with empty rows (example_mask 0)."""

    ignore_provenance: bool = False
    """Use derived files (cached log-prob columns, a generate/score output to resume) even when the
    provenance recorded beside them differs from this run's models and settings (at your own risk)."""

    def validate(self) -> "DataConfig":
        """Check values and cross-field constraints; returns self. Raises ``DataError`` naming the field."""
        _one_of("format", self.format, FORMATS)
        _one_of("task", self.task, TASKS)
        _one_of("truncation", self.truncation, TRUNCATIONS)
        _one_of("on_bad_row", self.on_bad_row, ("error", "skip"))
        for name in ("batch_size", "max_length", "min_bucket", "max_segments_per_row"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DataError(f"data.{name} must be a positive integer, got {value!r}")
        mpl = self.prompt_limit
        if not 0 < mpl < self.max_length:
            raise DataError(f"data.max_prompt_length ({mpl}) must be in 1..max_length-1 (max_length={self.max_length})")
        if self.buckets is not None:
            buckets = list(self.buckets)
            if not buckets or any(not isinstance(b, int) or b < 1 for b in buckets):
                raise DataError(f"data.buckets must be a non-empty list of positive integers, got {self.buckets!r}")
            if max(buckets) < self.max_length:
                raise DataError(
                    f"data.buckets: the largest bucket ({max(buckets)}) must be >= data.max_length ({self.max_length})"
                )
        if self.packing and self.task in ("kto", "pairwise"):
            raise DataError(f"data.packing is not supported for data.task={self.task!r}; set data.packing=false")
        return self

    @property
    def prompt_limit(self) -> int:
        """``max_prompt_length`` with its default applied."""
        return self.max_prompt_length if self.max_prompt_length is not None else self.max_length // 2

    @property
    def segments_per_row(self) -> int:
        """K of the per-example arrays: ``max_segments_per_row`` when packing, else 1."""
        return self.max_segments_per_row if self.packing else 1

    def bucket_lengths(self) -> list[int]:
        """Sorted bucket lengths: the explicit ones, or the automatic ones (see ``buckets``)."""
        if self.buckets is not None:
            return sorted(set(int(b) for b in self.buckets))
        out, b = [], 1
        while b < self.max_length:
            if b >= self.min_bucket:
                out.append(b)
            b *= 2
        return out + [self.max_length]


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise DataError(f"data.{name} must be one of {', '.join(allowed)}; got {value!r}")
