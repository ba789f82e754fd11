"""Which 20%-pruned SmolLM2-135M-Instruct student starts closest to its teacher, and distils best?

    python benchmarks/prune_quality.py [--target 0.2] [--calibration-n 32] [--cost-ns 8 16 32]
                                       [--sft-steps 16] [--out benchmarks/prune_quality.json]

Students, each with about `--target` of the teacher's parameters removed (the embedding counted once):

- depth uniform / depth importance (skip KL) / depth importance (cosine): the number of layers closest to the
  target, spread evenly or the ones whose skipping changes the calibration outputs least;
- width MLP / width hidden: only MLP channels (every layer) or only hidden channels, by importance;
- width mix: `--params-fraction`'s choice (hidden 0 / half / all of the target, with or without a KV group,
  MLP channels for the rest; the one with the smallest KL to the teacher on the calibration prompts).

Measured: held-out KL(teacher‖student) per token, the `eval` stage's measure (forward KL over the full
vocabulary on the teacher's own samples of the shipped held-out prompts, `eval.*` settings of the main
job: 24 prompts, 32 new tokens, temperature 0.7), before training and after the same short dSFT (SFT on the
teacher's samples of shipped training prompts; `--sft-steps` steps of 8, lr `--sft-lr`) of each student
in `--sft` (default: both depth students, the better single-width one and the mix). The calibration
pass (heads, MLP and hidden channels, per-layer cosine and skip KL) is timed in a subprocess per N in
`--cost-ns`: wall time, RSS after loading the model, peak RSS. Intermediate results (students, teacher
samples, trained models, figures) are kept under `--runs`, so a rerun continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TEACHER = "bundled:smollm2-135m-instruct"
RECIPE_OVERRIDES = ["logging.progress_bar=false", "logging.tensorboard=false", "logging.plot=false"]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _load_teacher(path: str):
    from jaxalign.models import load_pretrained
    from jaxalign.models.resolve import resolve_model_path

    return load_pretrained(resolve_model_path(path))


def _batches(tokenizer, n: int):
    from jaxalign.models.importance import calibration_batches, encode_calibration_prompts
    from jaxalign.models.prune import DEFAULT_CALIBRATION

    return calibration_batches(encode_calibration_prompts(tokenizer, DEFAULT_CALIBRATION, n), 8, shards=1)


def measure_calibration(teacher: str, n: int, out: Path) -> dict:
    """One calibration pass over the first `n` shipped training prompts (run in its own process)."""
    from jaxalign.models.importance import calibrate

    model, tokenizer = _load_teacher(teacher)
    batches = _batches(tokenizer, n)
    before = _rss_mb()
    imp = calibrate(model, batches, show_progress=False)
    imp.save(out.parent)
    os.replace(out.parent / "importance.json", out)
    return {"n": n, "tokens": imp.tokens, "seconds": imp.seconds, "rss_after_load_mb": before, "peak_rss_mb": _peak_mb()}


def calibration_cost(args, runs: Path) -> list[dict]:
    rows = []
    for n in args.cost_ns:
        out = runs / f"importance-{n}.json"
        cached = runs / f"cost-{n}.json"
        if not cached.is_file():
            cmd = [sys.executable, __file__, "--measure-calibration", str(n), "--teacher", args.teacher, "--runs", str(runs)]
            subprocess.run(cmd, check=True)
        rows.append(json.loads(cached.read_text()))
        print(f"calibration N={n}: {rows[-1]['tokens']} tokens, {rows[-1]['seconds']:.1f} s, "
              f"RSS after load {rows[-1]['rss_after_load_mb']:.0f} MB, peak {rows[-1]['peak_rss_mb']:.0f} MB", flush=True)
        assert out.is_file()
    return rows


def depth_layers(config, target: float) -> int:
    """Layers whose removal removes the fraction of parameters closest to `target`."""
    from jaxalign.models.param_roles import layer_param_count

    per_layer, total = layer_param_count(config), config.num_params()
    return max(1, int(round(target * total / per_layer)))


def width_fraction(config, target: float, kind: str) -> float:
    """The `kind` (mlp | hidden) fraction whose removal removes the fraction of parameters closest to `target`."""
    from jaxalign.models.prune_width import WidthCounts, pruned_config

    total, size = config.num_params(), config.intermediate_size if kind == "mlp" else config.hidden_size
    best = min(range(1, size), key=lambda k: abs(1 - pruned_config(config, WidthCounts(**{kind: k})).num_params() / total - target))
    return best / size


def make_students(args, runs: Path, teacher, tokenizer, imp) -> dict[str, dict]:
    """Prune the teacher every way (in memory), save each student; returns name -> {path, removed, how}."""
    from jaxalign.models import save_pretrained
    from jaxalign.models.prune import calibration_kl, layers_to_drop, prune_layers, width_mixes
    from jaxalign.models.prune_width import plan_width, prune_width, width_counts
    from jaxalign.parallel.mesh import make_mesh

    config = teacher.config
    total = config.num_params()
    n = depth_layers(config, args.target)
    frac = n / config.num_layers
    mlp_f, hidden_f = width_fraction(config, args.target, "mlp"), width_fraction(config, args.target, "hidden")
    plans = {
        "depth uniform": ("depth", layers_to_drop(config.num_layers, frac, "uniform")),
        "depth importance (skip KL)": ("depth", layers_to_drop(config.num_layers, frac, "importance", imp.skip_kl)),
        "depth importance (cosine)": ("depth", layers_to_drop(config.num_layers, frac, "importance", imp.cosine)),
        "width MLP": ("width", width_counts(config, mlp_fraction=mlp_f)),
        "width hidden": ("width", width_counts(config, hidden_fraction=hidden_f)),
    }
    mix_file = runs / "mixes.json"
    if not mix_file.is_file():
        batches, mesh = _batches(tokenizer, args.calibration_n), make_mesh()
        tried = []
        for counts in width_mixes(config, args.target):
            t = time.perf_counter()
            kl = calibration_kl(teacher, prune_width(teacher, plan_width(config, imp, counts)), batches, mesh)
            tried.append({"counts": vars(counts), "calibration_kl": kl, "seconds": time.perf_counter() - t})
            print(f"mix {vars(counts)}: calibration KL {kl:.4f}", flush=True)
        mix_file.write_text(json.dumps(tried, indent=1))
    tried = json.loads(mix_file.read_text())
    from jaxalign.models.prune_width import WidthCounts

    best = min(tried, key=lambda m: m["calibration_kl"])
    plans["width mix (params-fraction)"] = ("width", WidthCounts(**best["counts"]))
    students = {}
    for name, (kind, what) in plans.items():
        path = runs / "students" / name.replace(" ", "_").replace("(", "").replace(")", "")
        if kind == "depth":
            how = {"dropped": list(map(int, what))}
            model = None if (path / "config.json").is_file() else prune_layers(teacher, what)
        else:
            how = vars(what)
            model = None if (path / "config.json").is_file() else prune_width(teacher, plan_width(config, imp, what))
        if model is not None:
            save_pretrained(model, tokenizer, path)
            kept = model.config.num_params()
        else:
            from jaxalign.models import ModelConfig

            kept = ModelConfig.from_pretrained(path).num_params()
        students[name] = {"path": str(path), "removed": 1 - kept / total, "how": how}
    return students


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default=TEACHER)
    p.add_argument("--target", type=float, default=0.2, help="fraction of the parameters to remove")
    p.add_argument("--calibration-n", type=int, default=32, help="calibration prompts the students are pruned by")
    p.add_argument("--cost-ns", type=int, nargs="+", default=[8, 16, 32], help="N of the calibration cost runs")
    p.add_argument("--eval-limit", type=int, default=24, help="held-out prompts")
    p.add_argument("--train-limit", type=int, default=64, help="training prompts whose teacher samples the dSFT uses")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--sft-steps", type=int, default=16)
    p.add_argument("--sft-lr", type=float, default=2e-5)
    p.add_argument("--sft", nargs="*", default=None, help="students to dSFT (default: see the docstring); none: skip")
    p.add_argument("--runs", default="runs/prune_quality")
    p.add_argument("--out", default="benchmarks/prune_quality.json")
    p.add_argument("--measure-calibration", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    if args.measure_calibration:
        out = runs / f"importance-{args.measure_calibration}.json"
        result = measure_calibration(args.teacher, args.measure_calibration, out)
        (runs / f"cost-{args.measure_calibration}.json").write_text(json.dumps(result))
        return
    start = time.perf_counter()
    print(f"load average {os.getloadavg()}", flush=True)
    if args.calibration_n not in args.cost_ns:
        args.cost_ns = sorted(args.cost_ns + [args.calibration_n])
    cost = calibration_cost(args, runs)

    from flax import nnx

    from jaxalign.config import load_config
    from jaxalign.config.schema import ModelSpec
    from jaxalign.models.importance import Importance
    from jaxalign.pipeline.evaluate import Evaluator
    from jaxalign.pipeline.generate import named
    from jaxalign.pipeline.rows import asset_path, load_prompts, write_rows_atomic
    from jaxalign.train.trainer import train

    recipe = str(asset_path("main.yaml"))
    base = [f"teacher.path={args.teacher}", f"model.path={args.teacher}", f"eval.limit={args.eval_limit}", f"eval.max_new_tokens={args.max_new_tokens}",
            *RECIPE_OVERRIDES]
    config = load_config(recipe, base, check=False)
    evaluator = Evaluator(config)
    sampler = evaluator._sampler(named(config.teacher, "teacher"), "teacher")
    samples = runs / "teacher_samples.json"
    if not samples.is_file():
        held = load_prompts(config.eval.prompts, limit=args.eval_limit)
        train_prompts = load_prompts("asset:prompts_train.jsonl", limit=args.train_limit)
        t = time.perf_counter()
        texts = {"heldout": evaluator.samples(sampler, held, sampler.encode(held, config.eval.prompts)),
                 "train": evaluator.samples(sampler, train_prompts, sampler.encode(train_prompts, "asset:prompts_train.jsonl"))}
        samples.write_text(json.dumps({"texts": texts, "seconds": time.perf_counter() - t}))
    texts = json.loads(samples.read_text())["texts"]
    held = load_prompts(config.eval.prompts, limit=args.eval_limit)
    heldout_rows = evaluator.sft_rows(sampler, held, texts["heldout"])
    train_prompts = load_prompts("asset:prompts_train.jsonl", limit=args.train_limit)
    sft_file = write_rows_atomic(evaluator.sft_rows(sampler, train_prompts, texts["train"]), runs / "dsft.jsonl")
    sampler.load(evaluator.mesh)
    teacher_model = sampler.model
    teacher = nnx.split(teacher_model)
    imp = Importance.from_json(json.loads((runs / f"importance-{args.calibration_n}.json").read_text()))
    students = make_students(args, runs, teacher_model, sampler.tokenizer, imp)

    results_file = runs / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}

    def kl_of(path: str) -> float:
        return evaluator.kl_per_token(evaluator._load(ModelSpec(path=path), "student"), teacher, heldout_rows)

    for name, s in students.items():
        r = results.setdefault(name, {})
        r.update(removed=s["removed"], how=s["how"])
        if "kl_before" not in r:
            r["kl_before"] = kl_of(s["path"])
            results_file.write_text(json.dumps(results, indent=1))
        print(f"{name}: {s['removed']:.1%} of the parameters removed, held-out KL {r['kl_before']:.4f}", flush=True)

    sft = args.sft
    if sft is None:
        single = min(("width MLP", "width hidden"), key=lambda n: results[n]["kl_before"])
        sft = ["depth uniform", "depth importance (skip KL)", single, "width mix (params-fraction)"]
    for name in sft:
        r = results[name]
        out = runs / "dsft" / Path(students[name]["path"]).name
        same = [o for o in sft if o != name and results[o]["how"] == r["how"] and "kl_after" in results[o]]
        if same and "kl_after" not in r:  # the mix search chose a single-kind width student: the same model
            r.update(kl_after=results[same[0]]["kl_after"], same_as=same[0])
        if "kl_after" not in r:
            t = time.perf_counter()
            if not (out / "hf" / "config.json").is_file():
                train(load_config(recipe, [*base, "loss.name=sft", f"data.path={sft_file}", f"model.path={students[name]['path']}",
                                           f"train.output_dir={out}", f"train.steps={args.sft_steps}", f"optimizer.lr={args.sft_lr}",
                                           "train.export_hf=true", "train.epochs=0"], stage="train"))
            r["sft_seconds"] = time.perf_counter() - t
            r["kl_after"] = kl_of(str(out / "hf"))
            results_file.write_text(json.dumps(results, indent=1))
        print(f"{name} + dSFT: held-out KL {r['kl_after']:.4f}", flush=True)

    lines = ["| student | params removed | how | held-out KL/tok before | after dSFT |", "|---|---|---|---|---|"]
    for name, r in results.items():
        after = f"{r['kl_after']:.4f}" if "kl_after" in r else "-"
        lines.append(f"| {name} | {r['removed']:.1%} | {json.dumps(r['how'])} | {r['kl_before']:.4f} | {after} |")
    lines += ["", "| calibration N | tokens | seconds | RSS after load (MB) | peak RSS (MB) |", "|---|---|---|---|---|"]
    lines += [f"| {c['n']} | {c['tokens']} | {c['seconds']:.1f} | {c['rss_after_load_mb']:.0f} | {c['peak_rss_mb']:.0f} |" for c in cost]
    print("\n".join(lines))
    Path(args.out).write_text(json.dumps({
        "settings": {k: v for k, v in vars(args).items() if k != "measure_calibration"}, "students": results,
        "calibration_cost": cost, "mixes": json.loads((runs / "mixes.json").read_text()),
        "seconds": time.perf_counter() - start, "load_average_end": os.getloadavg()}, indent=1) + "\n")
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
