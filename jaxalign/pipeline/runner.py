"""``jaxalign pipeline``: run a recipe's stages in order, skipping the finished ones.

Each stage is ``load_config(recipe, overrides + stage.overrides)`` handed to its
stage function. A stage is skipped only when its output exists and the
provenance recorded with it (``jaxalign.train.provenance``) matches the stage's
resolved config and inputs (model fingerprints, source digests). Otherwise it
runs: a ``train`` stage whose only change is a longer ``train.steps`` resumes
from its checkpoint; any other difference moves the old output aside
(``<name>.replaced-N``) and reruns, and the stage's detail says which and why.
``generate``/``score`` continue an interrupted output whose provenance matches.
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

import yaml

from jaxalign.config import load_config, to_yaml
from jaxalign.config.schema import STAGES, Config, ConfigError
from jaxalign.io.atomic import atomic_file, write_text_atomic

log = logging.getLogger(__name__)

__all__ = ["StageRecord", "PipelineResult", "STAGE_RUNNERS", "run_pipeline", "run_prune", "DEFAULT_PIPELINE"]

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


#: Written into a pruned folder: what it was pruned from and how.
PRUNE_PROVENANCE = "jaxalign_provenance.json"


def prune_provenance(config: Config) -> dict:
    """What decides ``prune.output``: the source model's fingerprint and every ``prune`` setting that changes
    what is removed (the calibration prompts by content digest)."""
    from jaxalign.config.schema import ModelSpec
    from jaxalign.train.provenance import spec_fingerprint

    pr = config.prune
    record = {"kind": "prune", "source": spec_fingerprint(ModelSpec(path=pr.source or config.teacher.path))}
    record.update({f"prune.{k}": getattr(pr, k) for k in ("fraction", "strategy", "hidden_fraction", "mlp_fraction",
                                                          "heads_fraction", "params_fraction")})
    if prune_spec(config).needs_calibration:
        from jaxalign.train.provenance import source_digest

        record.update({"prune.calibration": source_digest(pr.calibration),
                       "prune.calibration_size": pr.calibration_size,
                       "prune.calibration_batch_size": pr.calibration_batch_size})
    return record


def prune_spec(config: Config):
    """``config.prune`` as a ``jaxalign.models.prune.PruneSpec``."""
    from jaxalign.models.prune import PruneSpec

    pr = config.prune
    return PruneSpec(fraction=pr.fraction or None, strategy=pr.strategy, hidden_fraction=pr.hidden_fraction,
                     mlp_fraction=pr.mlp_fraction, heads_fraction=pr.heads_fraction, params_fraction=pr.params_fraction,
                     calibration=pr.calibration, calibration_size=pr.calibration_size,
                     calibration_batch_size=pr.calibration_batch_size)


def run_prune(config: Config) -> tuple[Path, list[int]]:
    """Write ``prune.output``: ``prune.source`` (default ``teacher.path``) pruned by ``config.prune``, with its
    provenance (``jaxalign_provenance.json``) and, when measured, the importance statistics."""
    from jaxalign.models.prune import prune_checkpoint
    from jaxalign.models.resolve import resolve_model_path
    from jaxalign.train.provenance import write_record

    pr = config.prune
    record = prune_provenance(config)
    from jaxalign.parallel.mesh import make_mesh

    mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    result = prune_checkpoint(resolve_model_path(pr.source or config.teacher.path), pr.output, prune_spec(config),
                              overwrite=False, mesh=mesh, show_progress=config.logging.progress_bar)
    write_record(Path(result.path) / PRUNE_PROVENANCE, record)
    return result.path, result.dropped


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _stale(recorded: dict | None, current: dict, ignore: Sequence[str] = ("output",)) -> str | None:
    """``None`` when the recorded provenance matches ``current``; else why not (for the stage's detail)."""
    from jaxalign.train.provenance import describe_diff, diff

    if recorded is None:
        return "it has no provenance record"
    changes = diff(recorded, current, ignore=ignore)
    return describe_diff(changes) if changes else None


def _set_aside(paths: Sequence[Path]) -> str:
    """Rename the existing ``paths`` to ``<path>.replaced-N`` (one N for all, never overwriting); returns where."""
    paths = [Path(p) for p in paths if Path(p).exists() or Path(p).is_symlink()]
    n = 1
    while any(p.with_name(f"{p.name}.replaced-{n}").exists() for p in paths):
        n += 1
    for p in paths:
        p.rename(p.with_name(f"{p.name}.replaced-{n}"))
    return ", ".join(f"{p.name}.replaced-{n}" for p in paths)


def _file_outputs(output: str) -> list[Path]:
    """A generate/score output with its staged stream and provenance record."""
    from jaxalign.train.provenance import sidecar_path

    out = Path(output)
    return [out, out.with_name(out.name + ".partial.jsonl"), sidecar_path(out)]


def _check_file_stage(output: str, current: dict, what: str) -> str:
    """Before a resumable stage: an output made otherwise is set aside (it reruns); returns a note on that."""
    from jaxalign.train.provenance import read_sidecar

    paths = _file_outputs(output)
    if not any(p.exists() for p in paths[:2]):
        return ""
    why = _stale(read_sidecar(output), current)
    if why is None:
        return ""
    moved = _set_aside(paths)
    log.warning("pipeline: %s rerun: %s (previous output moved to %s)", what, why, moved)
    return f"rerun because {why}; previous output moved to {moved}; "


def _train_plan(config: Config) -> tuple[str, str]:
    """("skip" | "run", why): skip only when the export's provenance matches this stage's config and inputs;
    a longer ``train.steps`` resumes; any other difference sets the old run aside and trains anew."""
    from jaxalign.train.provenance import describe_diff, flatten
    from jaxalign.train.trainer import EXPORT_PROVENANCE, RESUME_ALLOWED, check_resume, config_changes, run_provenance

    out = Path(config.train.output_dir)
    moved_paths = [Path(config.checkpoint_dir), Path(config.export_dir), out / "metrics.jsonl"]
    current = flatten(yaml.safe_load(to_yaml(config)))
    provenance = run_provenance(config)
    export = Path(config.export_dir)
    if (export / "config.json").is_file():
        recorded = _read_json(export / EXPORT_PROVENANCE)
        if recorded is None:
            changes, why = [], "its export has no provenance record"
        else:
            was = {**flatten(recorded.get("config", {})), **{f"provenance.{k}": v for k, v in recorded.items()
                                                             if k not in ("config", "steps")}}
            now = {**current, **{f"provenance.{k}": v for k, v in provenance.items()}}
            changes = config_changes(was, now, ignore=tuple(k for k in RESUME_ALLOWED
                                                            if k not in ("train.steps", "train.epochs")))
            if not changes:
                return "skip", f"{config.export_dir} exists and was made by this config"
            why = describe_diff(changes)
            if [k for k, _, _ in changes] == ["train.steps"] and config.train.epochs == 0 and changes[0][2] > changes[0][1]:
                return "run", f"resumed: train.steps {changes[0][1]} -> {changes[0][2]}; "
        moved = _set_aside(moved_paths)
        log.warning("pipeline: train rerun: %s (previous run moved to %s)", why, moved)
        return "run", f"rerun because {why}; previous run moved to {moved}; "
    try:
        check_resume(config, to_yaml(config), provenance)
    except ConfigError as e:
        moved = _set_aside(moved_paths)
        log.warning("pipeline: train rerun: %s (previous run moved to %s)", e, moved)
        return "run", f"rerun because the checkpoint's run differs; previous run moved to {moved}; "
    return "run", ""


def _stage_prune(config: Config) -> tuple[str, str]:
    """``prune``: skipped when ``prune.output`` was made by these settings; else (re)pruned."""
    out = Path(config.prune.output)
    note = ""
    if (out / "config.json").is_file():
        why = _stale(_read_json(out / PRUNE_PROVENANCE), prune_provenance(config))
        if why is None:
            return "skipped", f"{config.prune.output} exists and was made by this config"
        note = f"rerun because {why}; previous output moved to {_set_aside([out])}; "
    out, dropped = run_prune(config)
    return "ran", f"{note}dropped layers {dropped} -> {out}"


def _stage_train(config: Config) -> tuple[str, str]:
    """``train``: skipped, resumed or rerun as :func:`_train_plan` decides."""
    from jaxalign.train.trainer import train

    plan, note = _train_plan(config)
    if plan == "skip":
        return "skipped", note
    result = train(config)
    if result.preempted:
        return "interrupted", f"{note}stopped at step {result.steps}; rerun to resume"
    return "ran", note + (f"{result.steps} steps, final loss {result.losses[-1]:.4f}" if result.losses else "ran")


def _stage_generate(config: Config) -> tuple[str, str]:
    """``generate``: continues an output with matching provenance, sets a mismatching one aside."""
    from jaxalign.pipeline.generate import generate_provenance, generation_models, run_generate

    note = _check_file_stage(config.generate.output, generate_provenance(config, generation_models(config)), "generate")
    r = run_generate(config)
    status = "interrupted" if r.interrupted else ("ran" if r.new_rows else "skipped")
    return status, f"{note}{r.rows} rows, {r.new_rows} new, {r.tokens_per_second:.1f} tokens/s"


def _stage_score(config: Config) -> tuple[str, str]:
    """``score``: continues an output with matching provenance, sets a mismatching one aside."""
    from jaxalign.pipeline.score import run_score, score_provenance

    note = _check_file_stage(config.score.output, score_provenance(config, config.score.input or config.data.path), "score")
    r = run_score(config)
    status = "interrupted" if r.interrupted else ("ran" if r.new_rows else "skipped")
    return status, f"{note}{r.rows} rows: {', '.join(r.columns)}"


def _stage_eval(config: Config) -> tuple[str, str]:
    """``eval``: skipped when its results were made by these models and settings; else (re)evaluated."""
    from jaxalign.pipeline.evaluate import eval_output_path, eval_provenance, run_eval

    out = eval_output_path(config)
    note = ""
    if out.is_file():
        note = _check_file_stage(str(out), eval_provenance(config), "eval")
        if not note:
            return "skipped", f"{out} exists and was made by these models and settings"
    run_eval(config)
    return "ran", f"{note}{out}"


#: ``pipeline.stages[].run`` -> the function that runs that stage on its resolved config and returns
#: ``(status, detail)``: status "ran" | "skipped" | "interrupted", detail one line for the report.
STAGE_RUNNERS: dict[str, Callable[[Config], tuple[str, str]]] = {
    "prune": _stage_prune,
    "train": _stage_train,
    "generate": _stage_generate,
    "score": _stage_score,
    "eval": _stage_eval,
}

if set(STAGE_RUNNERS) != set(STAGES):  # the config's choices for ``run`` and this table must list the same kinds
    raise RuntimeError(f"jaxalign.pipeline.runner.STAGE_RUNNERS ({', '.join(STAGE_RUNNERS)}) and "
                       f"jaxalign.config.schema.STAGES ({', '.join(STAGES)}) name different stage kinds")


def _stage(config: Config, run: str) -> tuple[str, str]:
    """Run one stage of kind ``run``; returns (status, detail)."""
    if run not in STAGE_RUNNERS:
        raise ConfigError(f"pipeline stage run={run!r} is not one of {', '.join(STAGE_RUNNERS)}")
    return STAGE_RUNNERS[run](config)


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
    lines = ["# jaxalign pipeline report", "", "| stage | run | status | seconds | detail |", "|---|---|---|---|---|"]
    lines += [f"| {r.name} | {r.run} | {r.status} | {r.seconds:.1f} | {r.detail} |" for r in records]
    lines += ["", f"total: {sum(r.seconds for r in records):.1f} s; peak host memory (max RSS of this process): {peak_rss_mb:.0f} MB"]
    if eval_results:
        plot = plot_eval(eval_results, path.with_suffix(".png"))
        lines += ["", "## Evaluation", "", format_table(eval_results)]
        if plot:
            lines += ["", f"![eval metrics]({plot.name})"]
    return write_text_atomic(path, "\n".join(lines) + "\n")


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
    try:
        with atomic_file(out, "wb") as f:
            fig.savefig(f, dpi=110, format="png")
    finally:
        plt.close(fig)
    return out
