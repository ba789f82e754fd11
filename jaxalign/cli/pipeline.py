"""Run a recipe's stages in order: `jaxalign pipeline [CONFIG] [key=value ...]`.

Without CONFIG it runs the main job shipped with jaxalign (SmolLM2-135M-Instruct
teacher, a 20%-pruned student, daDPO on the shipped prompts, before/after
evaluation). A stage is skipped when its output exists and the provenance recorded with it
matches the stage's config and inputs; a longer train.steps resumes training; any other change
moves the old output aside (NAME.replaced-N) and reruns the stage, saying why.
"""

from __future__ import annotations

from jaxalign.cli._stage import add_config_args, split_args

HELP = "run the stages of a recipe (prune, generate, score, train, eval) in order, skipping those whose output matches"


def add_parser(p):
    add_config_args(p)


def run(args) -> int:
    from jaxalign.pipeline.runner import run_pipeline

    path, overrides = split_args(args)
    result = run_pipeline(path, overrides, on_stage=lambda r: print(f"[pipeline] {r.name}: {r.status} in {r.seconds:.1f} s — {r.detail}", flush=True))
    if result.interrupted:
        print("[pipeline] interrupted; rerun the same command to continue")
        return 0
    print(f"[pipeline] done in {sum(r.seconds for r in result.stages):.1f} s; peak host memory {result.peak_rss_mb:.0f} MB; "
          f"report: {result.report}")
    return 0
