"""``jaxalign pipeline``: run a recipe's stages in order, skipping the finished ones.

Each stage is ``load_config(recipe, overrides + stage.overrides)`` handed to its
stage function. Finished means: ``prune``/``train`` — the output folder has a
``config.json``; ``eval`` — its JSON exists; ``generate``/``score`` — they are
resumable, so they always run and do nothing when their output is complete.
At the end a Markdown report (stage timings, the eval table, peak host memory)
and a plot of the eval metrics are written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import time
from pathlib import Path
from typing import Callable, Sequence

from jaxalign.config import load_config
from jaxalign.config.schema import Config, ConfigError

log = logging.getLogger(__name__)

__all__ = ["StageRecord", "PipelineResult", "run_pipeline", "run_prune", "DEFAULT_PIPELINE"]

#: The main job's recipe, shipped inside the package.
DEFAULT_PIPELINE = "asset:main.yaml"


@dataclasses.dataclass
class StageRecord:
    name: str
    run: str
    seconds: float
    status: str  # "ran" | "skipped" | "interrupted"
    detail: str = ""


@dataclasses.dataclass
class PipelineResult:
    stages: list[StageRecord]
    report: Path | None
    eval_results: dict | None
    peak_rss_mb: float
    interrupted: bool = False


def run_prune(config: Config) -> tuple[Path, list[int]]:
    """Write ``prune.output``: ``prune.source`` (default ``teacher.path``) minus a fraction of its layers."""
    from jaxalign.models.resolve import resolve_model_path
    from jaxalign.models.prune import prune_checkpoint

    pr = config.prune
    return prune_checkpoint(resolve_model_path(pr.source or config.teacher.path), pr.output, fraction=pr.fraction,
                            strategy=pr.strategy, overwrite=False)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _stage(config: Config, run: str) -> tuple[str, str]:
    """Run one stage; returns (status, detail)."""
    if run == "prune":
        if (Path(config.prune.output) / "config.json").is_file():
            return "skipped", f"{config.prune.output} exists"
        out, dropped = run_prune(config)
        return "ran", f"dropped layers {dropped} -> {out}"
    if run == "train":
        from jaxalign.train.trainer import train

        done = Path(config.export_dir) / "config.json"
        if done.is_file():
            return "skipped", f"{config.export_dir} exists"
        result = train(config)
        if result.preempted:
            return "interrupted", f"stopped at step {result.steps}; rerun to resume"
        return "ran", f"{result.steps} steps, final loss {result.losses[-1]:.4f}" if result.losses else "ran"
    if run == "generate":
        from jaxalign.pipeline.generate import run_generate

        r = run_generate(config)
        status = "interrupted" if r.interrupted else ("ran" if r.new_rows else "skipped")
        return status, f"{r.rows} rows, {r.new_rows} new, {r.tokens_per_second:.1f} tokens/s"
    if run == "score":
        from jaxalign.pipeline.score import run_score

        r = run_score(config)
        status = "interrupted" if r.interrupted else ("ran" if r.new_rows else "skipped")
        return status, f"{r.rows} rows: {', '.join(r.columns)}"
    if run == "eval":
        from jaxalign.pipeline.evaluate import eval_output_path, run_eval

        if eval_output_path(config).is_file():
            return "skipped", f"{eval_output_path(config)} exists"
        run_eval(config)
        return "ran", str(eval_output_path(config))
    raise ConfigError(f"pipeline stage run={run!r} is not one of prune, train, generate, score, eval")


def run_pipeline(path: str | None, overrides: Sequence[str] = (), *,
                 on_stage: Callable[[StageRecord], None] | None = None, stop_after: str | None = None) -> PipelineResult:
    """Run the stages of the recipe at ``path`` (default: the shipped main job), up to ``stop_after`` (a stage name)."""
    from jaxalign.pipeline.rows import asset_path

    path = path or DEFAULT_PIPELINE
    recipe = str(asset_path(path[len("asset:"):])) if path.startswith("asset:") else path
    base = load_config(recipe, overrides, check=False)
    stages = base.pipeline.stages
    if not stages:
        raise ConfigError(f"{recipe}: pipeline.stages is empty; list the stages to run")
    if stop_after is not None:
        names = [st.name or st.run for st in stages]
        if stop_after not in names:
            raise ConfigError(f"stop_after={stop_after!r} is not a stage of {recipe} ({', '.join(names)})")
        stages = stages[: names.index(stop_after) + 1]
    # Every stage's config is loaded and checked before the first one starts.
    configs = [load_config(recipe, [*overrides, *st.overrides], stage=st.run) for st in stages]
    records: list[StageRecord] = []
    interrupted = False
    for st, cfg in zip(stages, configs):
        label = st.name or st.run
        log.info("pipeline: stage %s (%s)", label, st.run)
        t0 = time.perf_counter()
        status, detail = _stage(cfg, st.run)
        rec = StageRecord(label, st.run, time.perf_counter() - t0, status, detail)
        records.append(rec)
        log.info("pipeline: %s %s in %.1f s: %s", label, status, rec.seconds, detail)
        if on_stage:
            on_stage(rec)
        if status == "interrupted":
            interrupted = True
            break
    eval_results = None
    eval_cfgs = [c for st, c in zip(stages, configs) if st.run == "eval"]
    if eval_cfgs and not interrupted:
        from jaxalign.pipeline.evaluate import eval_output_path

        out = eval_output_path(eval_cfgs[-1])
        if out.is_file():
            eval_results = json.loads(out.read_text())
    report = None
    peak = _peak_rss_mb()
    if not interrupted:
        report = write_report(base, records, eval_results, peak)
    return PipelineResult(records, report, eval_results, peak, interrupted)


def write_report(config: Config, records: list[StageRecord], eval_results: dict | None, peak_rss_mb: float) -> Path:
    """Markdown report (timings, eval table, memory) and, with eval results, a PNG of the metrics."""
    from jaxalign.pipeline.evaluate import format_table

    path = Path(config.pipeline.report or f"{config.train.output_dir.rstrip('/')}/report.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# jaxalign pipeline report", "", "| stage | run | status | seconds | detail |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.run} | {r.status} | {r.seconds:.1f} | {r.detail} |" for r in records]
    lines += ["", f"total: {sum(r.seconds for r in records):.1f} s; peak host memory (max RSS of this process): {peak_rss_mb:.0f} MB"]
    if eval_results:
        plot = plot_eval(eval_results, path.with_suffix(".png"))
        lines += ["", "## Evaluation", "", format_table(eval_results)]
        if plot:
            lines += ["", f"![eval metrics]({plot.name})"]
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_eval(results: dict, out: Path) -> Path | None:
    """One bar chart per metric, one bar per model; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; no plot (pip install 'jaxalign[plots]')")
        return None
    from jaxalign.pipeline.evaluate import METRICS

    models = results["models"]
    metrics = [k for k in METRICS if any(k in m for m in models.values())]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2), squeeze=False)
    for ax, key in zip(axes[0], metrics):
        names = [n for n, m in models.items() if key in m]
        ax.bar(names, [models[n][key] for n in names], color=["#888888" if n == "teacher" else "#3070b0" for n in names])
        ax.set_title(METRICS[key], fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
