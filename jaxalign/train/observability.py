"""Training observability: metrics JSONL, TensorBoard scalars, progress bar, plots and a run summary.

Everything here is host-side and cheap: metric values arrive as Python floats
(or numpy / 0-d array scalars, converted with ``float``), nothing touches jax.
Only the main process writes; on the others :class:`MetricsLogger` is a no-op,
so the loop can call it unconditionally.

``{output_dir}/metrics.jsonl`` has one JSON object per :meth:`MetricsLogger.log`
call::

    {"step": 10, "split": "train", "time": 1712345678.123, "wall_time": 12.5,
     "loss": 0.6931, "rewards/accuracies": 0.5, ..., "tokens_per_s": 1234.5}

* ``time`` is the Unix time of the call; ``wall_time`` the seconds of training
  wall time since the run started, summed over resumed segments (time between
  a crash and the restart is not counted, time spent before the first log of
  a segment - compilation, data loading - is).
* ``tokens_per_s`` is present when ``tokens`` was given (see :meth:`MetricsLogger.log`).
* Non-finite values (NaN, +-inf) are written as JSON ``null`` and their names
  listed, in order, in a ``"nonfinite"`` field of that line (absent when every
  value is finite).  The file is therefore strict JSON (``NaN`` literals are
  not), and a divergence is still visible: ``loss: null, nonfinite: ["loss"]``.
  TensorBoard receives the raw non-finite value.
* Each line is flushed when written, so a crashed process loses nothing it
  logged (no ``fsync``: an OS crash may lose the last lines).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from jaxalign.io.atomic import atomic_file, write_text_atomic

log = logging.getLogger(__name__)

__all__ = ["MetricsLogger", "format_metrics", "plot_metrics", "read_metrics", "summary"]

RESERVED_FIELDS = ("step", "split", "time", "wall_time", "nonfinite", "tokens_per_s")
"""Fields the logger writes itself; metrics may not use these names."""

_TB_WARNED = False

# name -> (short name, format spec) for format_metrics; everything else is "name=value:.4g".
_SHORT = {
    "loss": ("loss", ".4f"),
    "rewards/accuracies": ("acc", ".3f"),
    "rewards/margins": ("margin", ".3f"),
    "tokens_per_s": ("tok/s", None),
    "learning_rate": ("lr", ".2e"),
    "lr": ("lr", ".2e"),
    "grad_norm": ("gnorm", ".3g"),
}
_SKIP_IN_FORMAT = {"step", "split", "time", "wall_time", "nonfinite"}


def _to_number(value: Any) -> float | None:
    """``float(value)`` for numbers (Python, numpy, 0-d arrays); None for anything else (str, dict, ...)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (str, bytes, Mapping, list, tuple)) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _fmt_count(x: float) -> str:
    """1234567 -> '1.23M': tokens/s and similar rates."""
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.0f}"


def _fmt_value(value: Any, spec: str | None) -> str:
    number = _to_number(value)
    if number is None:
        return "nan" if value is None else str(value)
    if not math.isfinite(number):
        return str(number)
    if spec is None:
        return _fmt_count(number)
    return format(number, spec)


def format_metrics(metrics: Mapping[str, Any]) -> str:
    """A compact one-line rendering for logs: ``loss=0.6931 acc=0.500 margin=0.000 tok/s=12.3k kl=0.01``.

    Well-known names are shortened (``rewards/accuracies`` -> ``acc``,
    ``rewards/margins`` -> ``margin``, ``tokens_per_s`` -> ``tok/s``,
    ``learning_rate`` -> ``lr``, ``grad_norm`` -> ``gnorm``) and come first;
    the rest follow in their own order as ``name=value`` with 4 significant
    digits.  The bookkeeping fields of a JSONL record (step, split, time, ...)
    are skipped, so a record read back can be passed as is; ``null`` shows as ``nan``.
    """
    parts: list[str] = []
    seen_short: set[str] = set()
    for name, (short, spec) in _SHORT.items():
        if name in metrics and short not in seen_short:
            seen_short.add(short)
            parts.append(f"{short}={_fmt_value(metrics[name], spec)}")
    for name, value in metrics.items():
        if name in _SHORT or name in _SKIP_IN_FORMAT:
            continue
        parts.append(f"{name}={_fmt_value(value, '.4g')}")
    return " ".join(parts)


def read_metrics(jsonl_path: str | os.PathLike) -> list[dict]:
    """Parse a ``metrics.jsonl``; lines that are not valid JSON objects (e.g. cut short by a crash) are skipped."""
    records = []
    path = Path(jsonl_path)
    if not path.exists():
        return records
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
    return records


class MetricsLogger:
    """Log training/eval metrics to JSONL + TensorBoard and drive a tqdm progress bar (main process only).

    ``start_step`` is the step the run starts *after* (0 for a fresh run, the
    restored checkpoint's step on resume):

    * ``start_step == 0``: ``metrics.jsonl`` is started afresh (an old file in
      the same directory is replaced).
    * ``start_step > 0``: the file is kept and appended to; lines with
      ``step > start_step`` (any split: an interrupted run logged them after
      the checkpoint, and they will be logged again) and unparsable lines are
      dropped first, by an atomic rewrite.  TensorBoard gets
      ``purge_step=start_step + 1`` so its curves have no duplicates either.

    On a process with ``is_main_process=False`` every method is a no-op and no
    file or directory is created.  After :meth:`close`, :meth:`log` is a no-op.
    """

    def __init__(self, output_dir: str | os.PathLike, *, total_steps: int, start_step: int = 0,
                 jsonl: bool = True, tensorboard: bool = True, progress_bar: bool = True,
                 is_main_process: bool = True):
        self.output_dir = Path(output_dir)
        self.total_steps = int(total_steps)
        self.start_step = int(start_step)
        self.is_main_process = bool(is_main_process)
        self.jsonl_path = self.output_dir / "metrics.jsonl"
        self.tensorboard_dir = self.output_dir / "tensorboard"
        self._file = None
        self._writer = None
        self._bar = None
        self._closed = False
        self._wall_offset = 0.0
        self._t0 = time.perf_counter()
        self._last_train_t = self._t0
        self._paused = 0.0
        if not self.is_main_process:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if jsonl:
            self._open_jsonl()
        if tensorboard:
            self._writer = self._make_writer()
        if progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total_steps, initial=min(self.start_step, self.total_steps),
                             desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)

    # -- set-up ---------------------------------------------------------------------------------

    def _open_jsonl(self) -> None:
        if self.start_step > 0 and self.jsonl_path.exists():
            raw = self.jsonl_path.read_bytes()
            n_lines = sum(1 for line in raw.splitlines() if line.strip())
            kept = [r for r in read_metrics(self.jsonl_path) if r["step"] <= self.start_step]
            walls = [r["wall_time"] for r in kept if isinstance(r.get("wall_time"), (int, float))]
            self._wall_offset = max(walls, default=0.0)
            if len(kept) != n_lines or (raw and not raw.endswith(b"\n")):
                write_text_atomic(self.jsonl_path, "".join(json.dumps(r) + "\n" for r in kept))
            self._file = open(self.jsonl_path, "a", encoding="utf-8")
        else:
            self._file = open(self.jsonl_path, "w", encoding="utf-8")

    def _make_writer(self):
        global _TB_WARNED
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            if not _TB_WARNED:
                _TB_WARNED = True
                log.warning("tensorboardX is not installed: TensorBoard logging is off "
                            "(pip install 'jaxalign[plots]' or tensorboardX)")
            return None
        purge = self.start_step + 1 if self.start_step > 0 else None
        return SummaryWriter(logdir=str(self.tensorboard_dir), purge_step=purge, flush_secs=30)

    # -- logging --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def pause(self):
        """Exclude the wall time of the ``with`` block (eval, checkpoint save) from the next train tokens/s."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - t

    def log(self, step: int, metrics: Mapping[str, Any], *, split: str = "train",
            tokens: int | None = None, elapsed: float | None = None) -> dict | None:
        """Record ``metrics`` at ``step``; returns the JSON record written (None on non-main/closed).

        ``tokens`` (tokens processed since the previous train log) gives
        ``tokens_per_s = tokens / seconds``, where seconds is ``elapsed`` when
        given, else (train split only) the wall time since the previous train
        ``log`` call (since construction for the first one, so it includes
        compilation), minus time spent in :meth:`pause` blocks.  Eval calls get
        ``tokens_per_s`` only with ``elapsed``.  Train calls move the bar to
        ``step`` and show loss, acc and tok/s in its postfix (ETA is the bar's
        ``<remaining``); other splits print one line with ``tqdm.write`` and
        leave the bar alone.
        """
        if not self.is_main_process or self._closed:
            return None
        now = time.perf_counter()
        bad = [k for k in metrics if k in RESERVED_FIELDS]
        if bad:
            raise ValueError(f"metric names {bad} are reserved for the logger's own fields {RESERVED_FIELDS}")
        step = int(step)
        is_train = split == "train"
        tokens_per_s = None
        if tokens is not None:
            seconds = elapsed if elapsed is not None else (
                now - self._last_train_t - self._paused if is_train else None)
            if seconds is not None and seconds > 0:
                tokens_per_s = float(tokens) / seconds
        if is_train:
            self._last_train_t = now
            self._paused = 0.0

        record: dict[str, Any] = {"step": step, "split": split, "time": round(time.time(), 3),
                                  "wall_time": round(self._wall_offset + now - self._t0, 3)}
        scalars: dict[str, float] = {}
        nonfinite: list[str] = []
        for name, value in metrics.items():
            number = _to_number(value)
            if number is None:
                record[name] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
                continue
            scalars[name] = number
            if math.isfinite(number):
                record[name] = int(number) if isinstance(value, int) and not isinstance(value, bool) else number
            else:
                record[name] = None
                nonfinite.append(name)
        if tokens_per_s is not None:
            record["tokens_per_s"] = round(tokens_per_s, 3)
            scalars["tokens_per_s"] = tokens_per_s
        if nonfinite:
            record["nonfinite"] = nonfinite

        if self._file is not None:
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
        if self._writer is not None:
            for name, value in scalars.items():
                self._writer.add_scalar(f"{split}/{name}", value, step)
        if self._bar is not None:
            if is_train:
                shown = {k: record[k] for k in ("loss", "rewards/accuracies", "tokens_per_s") if k in record}
                self._bar.set_postfix_str(format_metrics(shown), refresh=False)
                delta = min(step, self.total_steps) - self._bar.n
                if delta >= 0:
                    self._bar.update(delta)
                else:  # step went backwards (should not happen): just move the bar
                    self._bar.n = step
                    self._bar.refresh()
            else:
                self._bar.write(f"[{split} step {step}] {format_metrics(record)}")
        return record

    def write(self, message: str) -> None:
        """Print a message on the main process without breaking the progress bar."""
        if not self.is_main_process:
            return
        from tqdm.auto import tqdm

        tqdm.write(message)

    def flush(self) -> None:
        """Flush TensorBoard events (JSONL lines are flushed as they are written)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Close the JSONL file, the TensorBoard writer and the bar; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> "MetricsLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# -- plots and summary ---------------------------------------------------------------------------


def _ema(values: list[float], smoothing: float) -> list[float]:
    """TensorBoard-style debiased exponential moving average."""
    out, acc, weight = [], 0.0, 0.0
    for v in values:
        acc = smoothing * acc + (1 - smoothing) * v
        weight = smoothing * weight + (1 - smoothing)
        out.append(acc / weight)
    return out


def _series(records: Iterable[dict], key: str, split: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the finite values of ``key`` in ``split``, sorted by step."""
    pts = sorted((r["step"], float(r[key])) for r in records
                 if r.get("split") == split and isinstance(r.get(key), (int, float))
                 and not isinstance(r.get(key), bool) and math.isfinite(r[key]))
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_metrics(jsonl_path: str | os.PathLike, png_path: str | os.PathLike, *,
                 keys: Iterable[str] = ("loss", "rewards/accuracies", "rewards/margins"),
                 smoothing: float | None = 0.9) -> Path | None:
    """Plot ``keys`` from a ``metrics.jsonl`` into a PNG: one panel per key that occurs.

    The train curve is drawn raw, plus an EMA (``smoothing``; None/0 turns it
    off) when it has more than 50 points; every other split (eval) is overlaid
    as markers.  Uses the Agg canvas directly (no pyplot, no display).  The
    PNG is written atomically (:func:`jaxalign.io.atomic.atomic_file`).  Returns the
    path, or None (nothing written) when none of the keys has a finite value.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(jsonl_path)
    splits = sorted({r.get("split", "train") for r in records} - {"train"})
    panels = []
    for key in keys:
        train = _series(records, key, "train")
        others = {s: _series(records, key, s) for s in splits}
        others = {s: v for s, v in others.items() if v[0]}
        if train[0] or others:
            panels.append((key, train, others))
    if not panels:
        return None

    fig = Figure(figsize=(5.0 * len(panels), 3.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, (steps, values), others) in zip(axes, panels):
        if steps:
            smooth = smoothing and len(values) > 50
            ax.plot(steps, values, color="C0", alpha=0.3 if smooth else 1.0, linewidth=1,
                    label="train" if not smooth else "train (raw)")
            if smooth:
                ax.plot(steps, _ema(values, smoothing), color="C0", linewidth=1.6, label=f"train (EMA {smoothing})")
        for i, (split, (s_steps, s_values)) in enumerate(others.items()):
            ax.plot(s_steps, s_values, marker="o", markersize=4, linestyle="--", linewidth=1,
                    color=f"C{i + 1}", label=split)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()

    png_path = Path(png_path)
    with atomic_file(png_path, "wb") as f:
        fig.savefig(f, format="png")
    return png_path


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _num(x: Any, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def summary(jsonl_path: str | os.PathLike, *, title: str = "run summary", extra: Mapping[str, Any] | None = None,
            max_lines: int = 24) -> str:
    """A one-screen text summary of a ``metrics.jsonl`` (at most ``max_lines`` lines).

    Steps, wall time (``wall_time`` of the last line: resumed segments summed;
    first-to-last ``time`` for files without it), mean train tokens/s (the
    first interval, which includes compilation, is left out when there are
    more), first/last train loss, last and best eval loss/accuracy/margin, then
    ``extra`` (e.g. checkpoint and export paths) as an aligned ``key  value`` table.
    """
    records = read_metrics(jsonl_path)
    train = sorted((r for r in records if r.get("split") == "train"), key=lambda r: r["step"])
    evals = sorted((r for r in records if r.get("split") == "eval"), key=lambda r: r["step"])
    rows: list[tuple[str, str]] = []
    if not records:
        rows.append(("metrics", f"none logged ({jsonl_path})"))
    else:
        last_step = max(r["step"] for r in records)
        rows.append(("steps", f"{last_step} ({len(train)} train / {len(evals)} eval logs)"))
        walls = [r["wall_time"] for r in records if isinstance(r.get("wall_time"), (int, float))]
        times = [r["time"] for r in records if isinstance(r.get("time"), (int, float))]
        if walls:
            rows.append(("wall time", _hms(max(walls))))
        elif len(times) > 1:
            rows.append(("wall time", _hms(max(times) - min(times))))
        tps = [r["tokens_per_s"] for r in train if isinstance(r.get("tokens_per_s"), (int, float))]
        if tps:
            used = tps[1:] if len(tps) > 1 else tps
            rows.append(("tokens/s (mean)", _fmt_count(sum(used) / len(used))))
        losses = [(r["step"], r["loss"]) for r in train if isinstance(r.get("loss"), (int, float))]
        if losses:
            rows.append(("train loss (first)", f"{losses[0][1]:.4f} @ step {losses[0][0]}"))
            rows.append(("train loss (last)", f"{losses[-1][1]:.4f} @ step {losses[-1][0]}"))
        diverged = [r["step"] for r in train if "loss" in (r.get("nonfinite") or ())]
        if diverged:
            rows.append(("non-finite loss", f"{len(diverged)} logs, first @ step {diverged[0]}"))
        if train:
            last = {k: v for k, v in train[-1].items() if k not in ("loss", "tokens_per_s")}
            rest = format_metrics(last)
            if rest:
                rows.append(("train (last)", rest[:100]))
        eval_keys = [("loss", "loss", min, ".4f"), ("rewards/accuracies", "acc", max, ".3f"),
                     ("rewards/margins", "margin", max, ".3f")]
        present = [k for k in eval_keys if any(isinstance(r.get(k[0]), (int, float)) for r in evals)]
        if present:
            rows.append((f"eval (last @ {evals[-1]['step']})",
                         " ".join(f"{short}={_num(evals[-1].get(key), spec)}" for key, short, _, spec in present)))
            best = []
            for key, short, pick, spec in present:
                pts = [(r[key], r["step"]) for r in evals if isinstance(r.get(key), (int, float))]
                value, at = pick(pts, key=lambda p: p[0])
                best.append(f"{short}={value:{spec}}@{at}")
            rows.append(("eval (best)", " ".join(best)))
    for key, value in (extra or {}).items():
        rows.append((str(key), str(value)))

    header = [title, "=" * max(len(title), 20)]
    budget = max_lines - len(header)
    if len(rows) > budget:
        dropped = len(rows) - (budget - 1)
        rows = rows[:budget - 1] + [("...", f"{dropped} more entries not shown")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(header + [f"{k.ljust(width)}  {v}" for k, v in rows])
