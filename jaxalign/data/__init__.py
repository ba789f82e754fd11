"""Data pipeline: rows from Hugging Face ``datasets`` -> fixed-shape numpy batches.

Host-side numpy only. Typical use::

    data = prepare(config.path, tokenizer, config)   # validate + tokenise everything up-front
    batches = data.batcher(process_index=jax.process_index(), process_count=jax.process_count())
    for batch in batches: ...                        # dict of numpy arrays, see jaxalign.data.collate
    state = batches.state_dict()                     # {"epoch", "step", ...}: resume with load_state_dict

Modules: ``config`` (DataConfig), ``sources`` (loading, file/line locations),
``formats`` (row formats), ``tokenize`` (chat templates, BOS/EOS, truncation),
``packing`` (first-fit, lockstep for pairs), ``collate`` (batch schema),
``batching`` (epochs, shuffling, process slices, resume), ``pipeline`` (prepare),
``errors`` (DataError, bad-row policy).
"""

from jaxalign.data.batching import Batcher, epoch_order
from jaxalign.data.collate import Collator, Examples, select_bucket
from jaxalign.data.config import FORMATS, TASKS, DataConfig
from jaxalign.data.errors import DataError, RowProblem
from jaxalign.data.formats import OPTIONAL_COLUMNS, UNPAIRED_COLUMNS, Record, detect_format, parse_row
from jaxalign.data.packing import pack_first_fit
from jaxalign.data.pipeline import PreparedData, PrepareReport, build_batcher, prepare
from jaxalign.data.sources import Source, load_rows, load_source

__all__ = [
    "Batcher",
    "Collator",
    "DataConfig",
    "DataError",
    "Examples",
    "FORMATS",
    "OPTIONAL_COLUMNS",
    "PrepareReport",
    "PreparedData",
    "Record",
    "RowProblem",
    "Source",
    "TASKS",
    "UNPAIRED_COLUMNS",
    "build_batcher",
    "detect_format",
    "epoch_order",
    "load_rows",
    "load_source",
    "pack_first_fit",
    "parse_row",
    "prepare",
    "select_bucket",
]
