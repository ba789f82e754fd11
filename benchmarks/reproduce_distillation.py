"""SFT-only vs dDPO vs daDPO (β_teacher sweep) on the pruned SmolLM2 student, same data and steps.

    python benchmarks/reproduce_distillation.py [--steps 12] [--betas 0.002 0.01 0.1] [--out docs/distillation]

Builds on the main job (`make main`; run first if its outputs are missing): the
20%-pruned student, its teacher/student pairs on the shipped training prompts
with cached reference and teacher log-probs, and the judge. Then trains, from
the same pruned student with the same pairs, seed, batch and number of steps:

- ``sft``:   SFT on the teacher's responses (the pairs' ``chosen`` side; dSFT)
- ``ddpo``:  DPO (β = 0.1) on the pairs (chosen = teacher, rejected = student)
- ``dadpo-β``: daDPO (β_ref = 0.1, β_teacher = β) on the same pairs

and evaluates all of them with the main job's ``eval`` stage on the held-out
prompts (forward KL to the teacher per token on the teacher's responses, the
teacher's log-likelihood per token of each model's samples, win rate against
the teacher by the judge). Writes ``<out>.md`` (table, settings, what was
measured) and ``<out>.png``. Every run's folder stays under ``runs/reproduce/steps<N>-lr<LR>``; a rerun
with the same settings reuses the trained models and only evaluates again.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from jaxalign.config import load_config
from jaxalign.pipeline.evaluate import format_table, run_eval
from jaxalign.pipeline.rows import asset_path, load_table, write_rows_atomic
from jaxalign.pipeline.runner import plot_eval, run_pipeline
from jaxalign.train.trainer import train

RECIPE = str(asset_path("main.yaml"))


def sft_rows(pairs: list[dict]) -> list[dict]:
    """dSFT data from the pairs: the prompt and the teacher's (chosen) response."""
    return [{"prompt": r["prompt"], "response": r["chosen"]} for r in pairs]


def start_regime(pairs: list[dict], betas: list[float]) -> str:
    """How saturated daDPO's teacher term is at step 0, where the policy equals the reference.

    There z = β_teacher · (Δ_ref − Δ_te) (the β_ref term is 0), and each pair's gradient weight is
    σ(−z): near 1 for every pair when z ≪ 0, so −log σ(z) is linear and Adam, which removes the
    gradient's scale, takes the same steps for any β_teacher in that regime.
    """
    import numpy as np

    gap = np.array([(r["ref_chosen_logps"] - r["ref_rejected_logps"]) - (r["teacher_chosen_logps"] - r["teacher_rejected_logps"])
                    for r in pairs])
    parts = []
    for b in betas:
        z = b * gap
        w = 1 / (1 + np.exp(z))
        parts.append(f"β_teacher {b:g}: median z {np.median(z):.2f}, σ(−z) {w.min():.2f}–{w.max():.2f}")
    return (f"At step 0 (policy = reference) daDPO's z = β_teacher·(Δ_ref − Δ_te); over these pairs Δ_ref − Δ_te has "
            f"median {np.median(gap):.1f} nats (range {gap.min():.1f} to {gap.max():.1f}), so: " + "; ".join(parts) + ".")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=12, help="optimizer steps of every method")
    p.add_argument("--betas", type=float, nargs="+", default=[0.002, 0.01, 0.1], help="daDPO β_teacher values")
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--runs", default="runs/reproduce")
    p.add_argument("--out", default="docs/distillation")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every stage (e.g. eval.limit=64)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()

    # The main job's data stages (pruned student, pairs, cached log-probs, judge); skipped when present.
    run_pipeline(RECIPE, args.overrides, stop_after="judge")
    base = load_config(RECIPE, args.overrides, check=False)
    runs = Path(args.runs) / f"steps{args.steps}-lr{args.lr:g}"  # a finished run is reused only with the same settings
    scored = base.score.output
    sft_file = write_rows_atomic(sft_rows(load_table(scored)), runs / "sft.jsonl")

    common = [*args.overrides, f"train.steps={args.steps}", f"optimizer.lr={args.lr}", "train.export_hf=true"]
    methods = {
        "sft": ["loss.name=sft", f"data.path={sft_file}"],
        "ddpo": ["loss.name=dpo", "loss.beta=0.1", f"data.path={scored}"],
        **{f"dadpo-{b:g}": ["loss.name=dadpo", "loss.beta_ref=0.1", f"loss.beta_teacher={b}", f"data.path={scored}"]
           for b in args.betas},
    }
    timings = {}
    for name, extra in methods.items():
        out = runs / name
        if not (out / "hf" / "config.json").is_file():
            t = time.perf_counter()
            train(load_config(RECIPE, [*common, *extra, f"train.output_dir={out}"], stage="train"))
            timings[name] = time.perf_counter() - t

    models = [f"{{name: pruned student, path: {base.model.path}}}"] + [f"{{name: {n}, path: {runs / n / 'hf'}}}" for n in methods]
    eval_cfg = load_config(RECIPE, [*args.overrides, f"eval.models=[{', '.join(models)}]",
                                    f"eval.output={runs / 'eval.json'}"], stage="eval")
    results = run_eval(eval_cfg)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot = plot_eval(results, out.with_suffix(".png"))
    (out.with_suffix(".json")).write_text(json.dumps({"results": results, "train_seconds": timings}, indent=2) + "\n")
    text = [
        "# SFT vs dDPO vs daDPO on a pruned SmolLM2-135M-Instruct",
        "",
        f"Written by `python benchmarks/reproduce_distillation.py --steps {args.steps} --betas {' '.join(f'{b:g}' for b in args.betas)}`"
        f" ({time.perf_counter() - start:.0f} s on this machine).",
        "",
        f"Student: SmolLM2-135M-Instruct with {base.prune.fraction:.0%} of its layers removed; teacher: the full model. "
        f"Every method starts from the same pruned student and trains {args.steps} steps of {base.data.batch_size} "
        f"examples (lr {args.lr:g}, seed {base.train.seed}) on the same {len(load_table(scored))} teacher/student pairs "
        f"({base.generate.limit or 'all'} shipped training prompts, {base.generate.max_new_tokens} new tokens, "
        f"temperature {base.generate.temperature}); SFT uses the teacher responses of those pairs.",
        "",
        format_table(results),
        "",
        "KL(teacher||model)/tok: forward KL per response token over the full vocabulary on the teacher's own samples "
        "of the held-out prompts (lower is closer to the teacher). teacher logp/tok of samples: the teacher's "
        "log-likelihood per token of each model's own samples (higher is more teacher-like). win rate: share of "
        "held-out prompts where the judge scores the model's sample above the teacher's.",
        "",
        start_regime(load_table(scored), args.betas),
    ]
    if plot:
        text += ["", f"![metrics]({plot.name})"]
    out.with_suffix(".md").write_text("\n".join(text) + "\n")
    print("\n".join(text))


if __name__ == "__main__":
    main()
