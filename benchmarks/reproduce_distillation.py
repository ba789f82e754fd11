"""dDPO vs daDPO under the daDPO paper's protocol, trained until they separate: 3 seeds, checkpoints, intervals.

    python benchmarks/reproduce_distillation.py                       # the full study (~100 min, 2 quiet cores)
    python benchmarks/reproduce_distillation.py --smoke               # the same flow, tiny, end to end
    python benchmarks/reproduce_distillation.py --plan                # sizes, units and the time estimate only

Protocol (the daDPO paper's, on SmolLM2-135M-Instruct and a copy with 20% of its layers removed):

1. data, by the main job's own recipe (``jaxalign/pipeline/assets/main.yaml``, stages prune -> teacher
   responses -> dSFT -> pairs -> cache log-probs, run here with this study's sizes and paths): prune the
   student; the teacher's responses to the training prompts; dSFT (SFT of the pruned student on them,
   one epoch); pairs sampled once (chosen = a new teacher sample, rejected = a sample of the dSFT student);
   the reference (= dSFT student) and teacher sequence log-probs of every pair, cached.
2. β₂ grid: 0.1 (the main job's) plus, from the measured Δte − Δref of the scored pairs, the β₂ that put
   the median |z| at step 0 at each of ``--z-targets`` (default 1.5, the middle of "about 1–2"; give more
   values for a larger grid, each adds a method): at step 0 (policy = reference) daDPO's
   z = β₂·(Δref − Δte), so β₂ = target / median|Δte − Δref|. Printed with the distribution.
3. From the dSFT student (also the reference), with the same pairs, steps, learning rate, batch and seeds:
   dDPO (β) and daDPO (β₁ = β, each β₂ of the grid), ``--epochs`` epochs over the pairs (default 1: what
   ~100 minutes on 2 cores allow; a rerun with ``--epochs 2`` continues the same runs), stopping at
   ``--evals-per-epoch`` checkpoints per epoch (default 2). A seed sets the data order and every sampling of the
   evaluation (the teacher's held-out samples included); the pairs and the dSFT student are shared.
4. At step 0 (the dSFT student, and the pruned student for reference) and at every checkpoint, per seed:
   KL(teacher‖student) per token on the teacher's samples of the held-out prompts, the teacher's
   log-likelihood per token of the student's own samples, their mean length (tokens) and distinct-2, and
   on the first ``--probe-pairs`` (32) training pairs the student's chosen / rejected log-probs, Δθ against
   the teacher's Δte, and mean σ(−z) of each method's own z (its pair weight in the gradient). The
   trainer's per-step metrics (``metrics.jsonl``: batch means of chosen / rejected log-probs, margins,
   loss) give the same log-probs at every step.
5. Mean ± sd over seeds per method and checkpoint, a 95% t-interval of the paired (same seed) difference
   daDPO − dDPO, a plot of each measure over training per method, the table as JSON and Markdown.

Resumable: every finished unit (the data stages, each seed's teacher held-out samples, each training
segment, each method x seed x checkpoint evaluation) is saved as it completes and a rerun skips it; an
interrupted training segment resumes from its checkpoint. A rerun with other settings in the same
``--work`` folder is refused (``settings.json``). Before each unit the script prints its estimated time
from the units of the same kind measured so far (in this folder, or ``--rates`` from another run, e.g. a
smoke run: its shapes are the full study's, only the counts are smaller), and the estimate for the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

#: Stage names of main.yaml that make the study's data (in this order), and the folder all its outputs live in.
DATA_STAGES = ("prune", "teacher responses", "dSFT", "pairs", "cache log-probs")
MAIN_ROOT = "runs/main"
MEASURES = {  # key -> (title, higher is closer to the teacher?)
    "kl_to_teacher": ("KL(teacher‖student) / token, held-out teacher samples", False),
    "teacher_logp_per_token": ("teacher log-prob / token of the student's samples", True),
    "length": ("student sample length (tokens)", None),
    "distinct2": ("distinct-2 of the student's samples", None),
    "sigma_neg_z": ("mean σ(−z) on training pairs (own z)", None),
    "logp_chosen": ("log π(chosen) on training pairs", None),
    "logp_rejected": ("log π(rejected) on training pairs", None),
    "margin_minus_teacher": ("mean Δθ − Δte on training pairs", None),
    "corr_margin_teacher": ("corr(Δθ, Δte) over training pairs", None),
}


@dataclasses.dataclass(frozen=True)
class Size:
    """What the study runs; the smoke size keeps every per-batch shape and only shrinks the counts, so
    its unit timings extrapolate to the full size by counts (``--rates``)."""

    train_prompts: int = 256
    heldout_prompts: int = 64
    seeds: int = 3
    epochs: int = 3  # until dDPO's mean σ(−z) < 0.2 (issue 12); one epoch is ~70 min on 2 quiet cores
    evals_per_epoch: int = 2
    probe_pairs: int = 32
    max_new_tokens: int = 16  # short enough for the ~100-minute budget (main.yaml: 24)
    max_length: int = 80  # prompts are 36-58 tokens with the chat template (max_prompt_length 64) + 16 + EOS
    batch_size: int = 8
    eval_batch_size: int = 32  # held-out sampling and scoring batch
    generate_batch_size: int = 32
    lr: float = 5e-6
    beta: float = 0.1
    beta_teacher_fixed: tuple = (0.1,)
    z_targets: tuple = (1.5,)
    #: seeds of the one labelled departure, dDPO on per-token mean log-probs (``loss.average_logps``); 0 = not run
    average_logps_seeds: int = 1


SMOKE = dict(train_prompts=16, heldout_prompts=8, seeds=2, epochs=2, evals_per_epoch=1, probe_pairs=8)


# ----------------------------------------------------------------------------- pure pieces
def relocate(tree, root: str):
    """``tree`` (a loaded recipe) with every ``runs/main`` path moved under ``root`` (strings, lists, dicts)."""
    if isinstance(tree, dict):
        return {k: relocate(v, root) for k, v in tree.items()}
    if isinstance(tree, list):
        return [relocate(v, root) for v in tree]
    if isinstance(tree, str):
        return tree.replace(MAIN_ROOT, root)
    return tree


def choose_beta_teacher(gap: np.ndarray, fixed: Sequence[float], z_targets: Sequence[float]) -> tuple[list[float], str]:
    """The β₂ grid and how it was chosen. ``gap``: ``[pairs]`` Δte − Δref (nats) of the training pairs.

    At step 0 daDPO's z = β₂·(Δref − Δte) = −β₂·gap, so β₂ = t / median|gap| puts the median |z| at t.
    Values are rounded to 2 significant digits; duplicates are dropped."""
    gap = np.asarray(gap, np.float64)
    if gap.size == 0:
        raise ValueError("no scored pairs: cannot choose β_teacher from Δte − Δref")
    med = float(np.median(np.abs(gap)))
    if med <= 0:
        raise ValueError("median |Δte − Δref| is 0: the teacher and the reference agree on every pair")
    chosen = [float(f"{t / med:.2g}") for t in z_targets]
    grid = sorted(set(float(b) for b in fixed) | set(chosen))
    lines = [f"Δte − Δref over {gap.size} pairs: median {np.median(gap):+.1f} nats, median |.| {med:.1f}, "
             f"10–90% {np.percentile(gap, 10):+.1f} to {np.percentile(gap, 90):+.1f}"]
    for b in grid:
        z = -b * gap
        why = (f"median |z| target {z_targets[chosen.index(b)]:g}" if b in chosen else "fixed (main job)")
        w = _sigmoid(-z)
        lines.append(f"  β_teacher {b:g} ({why}): median |z| at step 0 {np.median(np.abs(z)):.2f}, "
                     f"σ(−z) 10–90% {np.percentile(w, 10):.2f}–{np.percentile(w, 90):.2f}")
    return grid, "\n".join(lines)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def checkpoint_steps(pairs: int, size: Size) -> list[int]:
    """Steps at which training stops to evaluate: ``evals_per_epoch`` evenly spaced per epoch."""
    per_epoch = pairs // size.batch_size
    if per_epoch < 1:
        raise ValueError(f"{pairs} usable pairs are fewer than one batch of {size.batch_size}")
    total = size.epochs * size.evals_per_epoch
    return sorted({max(1, i * per_epoch // size.evals_per_epoch) for i in range(1, total + 1)})


def distinct_n(token_lists: Sequence[Sequence[int]], n: int = 2) -> float:
    """Distinct-n over a set of samples: distinct n-grams / all n-grams (0 when there are none)."""
    grams = [tuple(t[i:i + n]) for t in token_lists for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def probe_measures(pc, pr, rc, rr, tc, tr, beta_ref: float, beta_teacher: float, lengths=None) -> dict:
    """Training-pair measures of one policy for one method. All ``[pairs]`` summed log-probs: policy (pc, pr),
    reference (rc, rr), teacher (tc, tr); ``beta_teacher`` 0 is DPO (z = β(Δθ − Δref)). ``lengths``
    (``[pairs]`` chosen and rejected token counts) makes every measure per-token (``loss.average_logps``)."""
    pc, pr, rc, rr, tc, tr = (np.asarray(x, np.float64) for x in (pc, pr, rc, rr, tc, tr))
    if lengths is not None:
        lc, lr = (np.maximum(np.asarray(x, np.float64), 1.0) for x in lengths)
        pc, rc, tc, pr, rr, tr = pc / lc, rc / lc, tc / lc, pr / lr, rr / lr, tr / lr
    d_pol, d_ref, d_te = pc - pr, rc - rr, tc - tr
    z = beta_ref * (d_pol - d_ref) + beta_teacher * (d_pol - d_te)
    return {"sigma_neg_z": float(np.mean(_sigmoid(-z))), "logp_chosen": float(np.mean(pc)),
            "logp_rejected": float(np.mean(pr)), "margin": float(np.mean(d_pol)),
            "margin_minus_teacher": float(np.mean(d_pol - d_te)),
            "share_margin_at_teacher": float(np.mean(d_pol >= d_te)),
            "corr_margin_teacher": float(np.corrcoef(d_pol, d_te)[0, 1]) if len(pc) > 1 and d_pol.std() > 0 else float("nan")}


def t_quantile(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (two-sided 95% interval)."""
    try:
        from scipy.stats import t
    except ImportError:
        table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
        return table.get(df, 1.96)
    return float(t.ppf(0.975, df))


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def paired_interval(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean of the paired differences a − b and its 95% t-interval (nan half-width with one pair)."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    m = float(d.mean())
    half = t_quantile(len(d) - 1) * float(d.std(ddof=1)) / math.sqrt(len(d)) if len(d) > 1 else float("nan")
    return {"mean": m, "low": m - half, "high": m + half, "n": int(len(d))}


# ----------------------------------------------------------------------------- bookkeeping
class Clock:
    """Unit timings (``timings.jsonl`` in the work folder): records each unit and estimates others by kind.

    Each unit records its wall time and its process CPU time (all threads). Estimates come in two kinds:
    ``wall`` (at the load the units ran under) and ``quiet``: CPU seconds / ``QUIET_CORES``, the wall time on
    an otherwise idle machine whose cores this process keeps busy (a lower bound: some work, e.g. decoding
    small batches, does not fill both cores), which is what a loaded machine still measures faithfully."""

    QUIET_CORES = 2

    def __init__(self, path: Path, rates: Path | None = None):
        self.path = path
        self.rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
        self.borrowed = [json.loads(x) for x in rates.read_text().splitlines() if x.strip()] if rates else []

    def record(self, kind: str, seconds: float, count: float = 1.0, cpu: float | None = None, **extra) -> None:
        row = {"kind": kind, "seconds": round(seconds, 2), "cpu": None if cpu is None else round(cpu, 2), "count": count, **extra}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def rate(self, kind: str, quiet: bool = False) -> float | None:
        """Median seconds per count of ``kind``, from this folder's units, else from ``--rates``."""
        for rows in (self.rows, self.borrowed):
            if quiet:
                r = [x["cpu"] / self.QUIET_CORES / x["count"] for x in rows if x["kind"] == kind and x["count"] > 0
                     and x.get("cpu") is not None]
            else:
                r = [x["seconds"] / x["count"] for x in rows if x["kind"] == kind and x["count"] > 0]
            if r:
                return float(np.median(r))
        return None

    def estimate(self, kind: str, count: float = 1.0, quiet: bool = False) -> float | None:
        r = self.rate(kind, quiet)
        return None if r is None else r * count

    def both(self, kind: str, count: float = 1.0) -> str:
        return f"{fmt_s(self.estimate(kind, count))} at the measured load, {fmt_s(self.estimate(kind, count, True))} quiet"


class Timer:
    """Wall and process CPU seconds since construction."""

    def __init__(self):
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()

    @property
    def wall(self) -> float:
        return time.perf_counter() - self.wall0

    @property
    def cpu(self) -> float:
        return time.process_time() - self.cpu0


def fmt_s(seconds: float | None) -> str:
    return "unknown" if seconds is None else (f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min")


# ----------------------------------------------------------------------------- the study
class Study:
    def __init__(self, size: Size, work: Path, rates: Path | None, overrides: Sequence[str]):
        self.size, self.work, self.overrides = size, work, list(overrides)
        work.mkdir(parents=True, exist_ok=True)
        self._check_settings()
        self.clock = Clock(work / "timings.jsonl", rates)
        self.data = work / "data"
        self.recipe = self._write_recipe()

    # --------------------------------------------------------------- setup
    #: Sizes a rerun may change in the same folder: they only add or drop units (finished ones stay valid).
    EXTENDABLE = ("seeds", "epochs", "average_logps_seeds")

    def _check_settings(self) -> None:
        def fixed(record):
            return {**record, "size": {k: v for k, v in record["size"].items() if k not in self.EXTENDABLE}}

        record = json.loads(json.dumps({"size": dataclasses.asdict(self.size), "overrides": self.overrides}))
        path = self.work / "settings.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if fixed(old) != fixed(record):
                raise SystemExit(f"{self.work} holds a study with other settings ({path}: {old}); "
                                 f"use another --work, or delete the folder to start over")
        else:
            path.write_text(json.dumps(record, indent=1) + "\n")

    def _write_recipe(self) -> Path:
        from jaxalign.pipeline.rows import asset_path

        recipe = relocate(yaml.safe_load(asset_path("main.yaml").read_text()), str(self.data))
        names = [st.get("name") for st in recipe["pipeline"]["stages"]]
        missing = [n for n in DATA_STAGES if n not in names]
        if missing:
            raise SystemExit(f"main.yaml has no stage(s) {missing} (stages: {names}); the study runs its data stages")
        from jaxalign.io.atomic import write_text_atomic

        path = self.work / "recipe.yaml"
        write_text_atomic(path, yaml.safe_dump(recipe, sort_keys=False))  # a --report beside a running study
        return path

    @property
    def common(self) -> list[str]:
        """Overrides of every stage and run: the study's sizes and quiet logging."""
        s = self.size
        return [f"generate.limit={s.train_prompts}", f"generate.max_new_tokens={s.max_new_tokens}",
                f"generate.batch_size={s.generate_batch_size}", f"data.max_length={s.max_length}",
                f"data.buckets=[{s.max_length}]", f"data.batch_size={s.batch_size}", f"eval.limit={s.heldout_prompts}",
                f"eval.max_new_tokens={s.max_new_tokens}", f"eval.batch_size={s.eval_batch_size}",
                "logging.progress_bar=false", "logging.plot=false", "logging.tensorboard=false", *self.overrides]

    def load(self, extra: Sequence[str], stage: str):
        from jaxalign.config import load_config

        return load_config(str(self.recipe), [*self.common, *extra], stage=stage)

    # --------------------------------------------------------------- 1. data
    def run_data(self) -> None:
        from jaxalign.pipeline.runner import run_pipeline

        est = [self.clock.estimate(f"data:{n}", self._data_count(n), quiet=True) for n in DATA_STAGES]
        print(f"[data] stages {', '.join(DATA_STAGES)}: estimated {fmt_s(sum(est) if None not in est else None)} quiet",
              flush=True)
        cpu = [time.process_time()]

        def on_stage(r):
            used = time.process_time() - cpu[0]
            cpu[0] = time.process_time()
            print(f"  {r.name}: {r.status} in {r.seconds:.1f} s, {used:.0f} CPU s ({r.detail})", flush=True)
            if r.status == "ran":
                self.clock.record(f"data:{r.name}", r.seconds, self._data_count(r.name), cpu=used)

        result = run_pipeline(str(self.recipe), self.common, stop_after=DATA_STAGES[-1], on_stage=on_stage)
        if result.interrupted:
            raise SystemExit("interrupted during the data stages; rerun to continue")

    def _data_count(self, stage: str) -> float:
        """What a data stage's time scales with: generation batches, dSFT steps, scoring batches (1 for prune)."""
        s = self.size
        gen_batches = math.ceil(s.train_prompts / s.generate_batch_size)
        return {"teacher responses": gen_batches, "pairs": gen_batches, "dSFT": max(s.train_prompts // s.batch_size, 1),
                "cache log-probs": math.ceil(s.train_prompts / 16)}.get(stage, 1)

    @property
    def eval_batches(self) -> int:
        """What an evaluation's time scales with: its rounds of ``eval_batch_size`` (held-out prompts or probe pairs)."""
        s = self.size
        return math.ceil(max(s.heldout_prompts, s.probe_pairs) / s.eval_batch_size)

    @property
    def scored(self) -> Path:
        return self.data / "pairs_scored.jsonl"

    def plan(self) -> dict:
        """β₂ grid and checkpoint steps, fixed once the pairs are scored (``plan.json``)."""
        path = self.work / "plan.json"
        if path.is_file():
            plan = json.loads(path.read_text())
            if plan.get("data") != self._data_fingerprints():
                raise SystemExit(f"{self.work}: the dSFT student or the scored pairs differ from those the finished units "
                                 f"were made from ({path}); use another --work, or delete {self.work} to start over")
            return {**plan, "checkpoints": checkpoint_steps(plan["usable_pairs"], self.size)}
        from jaxalign.pipeline.rows import load_table

        rows = load_table(str(self.scored))
        gap = np.array([(r["teacher_chosen_logps"] - r["teacher_rejected_logps"]) - (r["ref_chosen_logps"] - r["ref_rejected_logps"])
                        for r in rows])
        grid, why = choose_beta_teacher(gap, self.size.beta_teacher_fixed, self.size.z_targets)
        usable = self._usable_pairs()
        plan = {"beta": self.size.beta, "beta_teacher": grid, "why": why, "pairs": len(rows), "usable_pairs": usable,
                "steps_per_epoch": usable // self.size.batch_size, "data": self._data_fingerprints()}
        path.write_text(json.dumps(plan, indent=1) + "\n")
        return {**plan, "checkpoints": checkpoint_steps(usable, self.size)}

    def _data_fingerprints(self) -> dict:
        """Content digests of what every unit starts from: the dSFT export and the scored pairs."""
        from jaxalign.train.provenance import file_digest, model_fingerprint

        return {"dsft": model_fingerprint(self.data / "dsft" / "hf"), "pairs": file_digest(self.scored)}

    def _usable_pairs(self) -> int:
        """Pairs the trainer keeps (rows with an empty sample are skipped, ``data.on_bad_row: skip``)."""
        from jaxalign.data import prepare
        from jaxalign.train.build import build_tokenizer

        cfg = self.load([f"data.path={self.scored}"], "train")
        data = prepare(str(self.scored), build_tokenizer(cfg.model, key="model"),
                       dataclasses.replace(cfg.data, task="preference"))
        return len(data)

    def methods(self, plan: dict) -> dict[str, dict]:
        b = plan["beta"]
        out = {"ddpo": {"overrides": ["loss.name=dpo", f"loss.beta={b}"], "beta_ref": b, "beta_teacher": 0.0}}
        for b2 in plan["beta_teacher"]:
            out[f"dadpo-{b2:g}"] = {"overrides": ["loss.name=dadpo", f"loss.beta_ref={b}", f"loss.beta_teacher={b2}"],
                                    "beta_ref": b, "beta_teacher": b2}
        if self.size.average_logps_seeds:
            # per-token means: β scaled by the response cap, so a full-length pair's z has the summed form's scale
            b_avg = float(f"{b * self.size.max_new_tokens:.3g}")
            out["ddpo-avg"] = {"overrides": ["loss.name=dpo", f"loss.beta={b_avg}", "loss.average_logps=true"],
                               "beta_ref": b_avg, "beta_teacher": 0.0, "average": True,
                               "seeds": min(self.size.average_logps_seeds, self.size.seeds)}
        return out

    def seeds_of(self, spec: dict) -> range:
        return range(spec.get("seeds", self.size.seeds))

    def probe_lengths(self) -> dict[int, tuple[float, float]]:
        """Response token counts (chosen, rejected) of the probe pairs by scored-file row: the tokenizer only."""
        from jaxalign.data import prepare
        from jaxalign.pipeline.rows import load_table
        from jaxalign.train.build import build_tokenizer

        cfg = self.load([], "eval")
        rows = load_table(str(self.scored))[:self.size.probe_pairs]
        data = prepare(rows, build_tokenizer(cfg.model, key="model"),
                       dataclasses.replace(cfg.data, task="preference", shuffle=False, drop_remainder=False,
                                           packing=False, on_bad_row="skip", path=""))
        host = data.collate(list(data.units))
        counts = {side: host[f"{side}_loss_mask"][:, 1:].sum(-1) for side in ("chosen", "rejected")}
        return {int(r): (float(counts["chosen"][i]), float(counts["rejected"][i]))
                for i, r in enumerate(host["row_id"][:, 0])}

    # --------------------------------------------------------------- units
    def eval_path(self, model: str, seed: int, step: int) -> Path:
        return self.work / "evals" / model / f"seed{seed}" / f"step{step:05d}.json"

    def run_dir(self, method: str, seed: int) -> Path:
        return (self.work / "train" / method / f"seed{seed}").resolve()  # Orbax wants absolute paths

    def units_left(self, plan: dict) -> dict[str, float]:
        """Counts of what is left, by unit kind (for the whole-study estimate)."""
        left = {"heldout teacher": 0, "eval": 0, "train step": 0, "segment": 0}
        teacher_batches = math.ceil(self.size.heldout_prompts / self.size.eval_batch_size)
        for seed in range(self.size.seeds):
            if not self._teacher_file(seed).is_file():
                left["heldout teacher"] += teacher_batches
            left["eval"] += self.eval_batches * sum(not self.eval_path(m, seed, 0).is_file() for m in ("pruned", "dsft"))
            for method, spec in self.methods(plan).items():
                if seed not in self.seeds_of(spec):
                    continue
                done = self._exported_steps(method, seed)
                for k in plan["checkpoints"]:
                    if not self.eval_path(method, seed, k).is_file():
                        left["eval"] += self.eval_batches
                        if k > done:
                            left["segment"] += 1
                left["train step"] += max(plan["checkpoints"][-1] - max(done, self._checkpoint_step(method, seed)), 0) \
                    if not self.eval_path(method, seed, plan["checkpoints"][-1]).is_file() else 0
        return left

    def estimate_left(self, plan: dict, quiet: bool = False) -> float | None:
        total = 0.0
        for kind, n in self.units_left(plan).items():
            if n == 0:
                continue
            e = self.clock.estimate(kind, n, quiet)
            if e is None:
                return None
            total += e
        return total

    def _exported_steps(self, method: str, seed: int) -> int:
        from jaxalign.train.trainer import EXPORT_PROVENANCE

        record = self.run_dir(method, seed) / "hf" / EXPORT_PROVENANCE
        return int(json.loads(record.read_text())["steps"]) if record.is_file() else 0

    def _checkpoint_step(self, method: str, seed: int) -> int:
        folder = self.run_dir(method, seed) / "checkpoints"
        steps = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
        return max(steps, default=0)

    def train_to(self, method: str, spec: dict, seed: int, step: int) -> None:
        """Train ``method`` x ``seed`` up to ``step`` (resuming its checkpoint) and export it."""
        from jaxalign.train.trainer import train

        out = self.run_dir(method, seed)
        start = self._checkpoint_step(method, seed)
        if start < self._exported_steps(method, seed):
            raise SystemExit(f"{out}: its export is at step {self._exported_steps(method, seed)} but its newest "
                             f"checkpoint at {start}; training on would not continue that run (delete the folder to redo it)")
        seg, steps = self.clock.estimate("segment", quiet=True), self.clock.estimate("train step", step - start, quiet=True)
        est = None if seg is None or steps is None else seg + steps
        print(f"  [train] {method} seed {seed}: steps {start} -> {step} (estimated {fmt_s(est)} quiet)", flush=True)
        cfg = self.load([*spec["overrides"], f"data.path={self.scored}", f"train.output_dir={out}", f"train.steps={step}",
                         "train.epochs=0", f"data.seed={seed}", f"train.seed={seed}", f"optimizer.lr={self.size.lr}",
                         "train.export_hf=true", "train.log_every=1", "checkpoint.keep=1", "checkpoint.every=0",
                         "checkpoint.async_save=false"], "train")
        timer = Timer()
        log = io.StringIO()
        with contextlib.redirect_stdout(log):
            result = train(cfg)
        out.mkdir(parents=True, exist_ok=True)
        with (out / "train_log.txt").open("a") as f:
            f.write(log.getvalue())
        seconds, cpu = timer.wall, timer.cpu
        if result.preempted:
            raise SystemExit(f"{method} seed {seed} stopped at step {result.steps} by a signal; rerun to resume")
        per_step = _steady_step_seconds(out / "metrics.jsonl", start, step)
        if per_step is not None:  # the steady steps and the rest (load, compile, checkpoint, export); CPU split alike
            steady = min(per_step * (step - start), seconds)
            self.clock.record("train step", steady, step - start, cpu=cpu * steady / seconds, method=method)
            self.clock.record("segment", seconds - steady, cpu=cpu * (1 - steady / seconds), method=method)
        print(f"  [train] {method} seed {seed}: {step - start} steps in {seconds:.0f} s "
              f"({per_step or float('nan'):.2f} s/step steady, {cpu:.0f} CPU s), loss {result.losses[-1]:.4f}", flush=True)

    # --------------------------------------------------------------- evaluation
    def _teacher_file(self, seed: int) -> Path:
        return self.work / "heldout" / f"teacher_seed{seed}.json"

    def evaluate(self, held: "HeldOut", model: str, path: Path, seed: int, step: int) -> None:
        out = self.eval_path(model, seed, step)
        if out.is_file():
            return
        teacher_texts = self._teacher_texts(held, seed)
        print(f"  [eval] {model} seed {seed} step {step} (estimated {self.clock.both('eval', self.eval_batches)})", flush=True)
        timer = Timer()
        record = {"model": model, "seed": seed, "step": step,
                  **held.evaluate(path, model, seed, teacher_texts, probe=model != "pruned")}
        record["seconds"], record["cpu_seconds"] = timer.wall, timer.cpu
        from jaxalign.io.atomic import write_json_atomic

        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, record)
        self.clock.record("eval", record["seconds"], self.eval_batches, cpu=record["cpu_seconds"], model=model)
        print(f"  [eval] {model} seed {seed} step {step}: KL {record['kl_to_teacher']:.4f}, teacher logp/tok "
              f"{record['teacher_logp_per_token']:.3f}, length {record['length']:.1f}, distinct-2 {record['distinct2']:.3f} "
              f"({record['seconds']:.0f} s)", flush=True)

    def _teacher_texts(self, held: "HeldOut", seed: int) -> list[str]:
        path = self._teacher_file(seed)
        if path.is_file():
            return json.loads(path.read_text())["texts"]
        n = math.ceil(self.size.heldout_prompts / self.size.eval_batch_size)
        print(f"  [heldout teacher] seed {seed} (estimated {self.clock.both('heldout teacher', n)})", flush=True)
        timer = Timer()
        texts = held.teacher_samples(seed)
        from jaxalign.io.atomic import write_json_atomic

        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"seed": seed, "texts": texts})
        self.clock.record("heldout teacher", timer.wall, n, cpu=timer.cpu)
        return texts

    # --------------------------------------------------------------- the whole
    def run(self) -> dict:
        self.run_data()
        plan = self.plan()
        methods = self.methods(plan)
        print(f"[plan] β (dDPO, daDPO's β_ref) {plan['beta']:g}; β_teacher grid {plan['beta_teacher']}; chosen from\n{plan['why']}",
              flush=True)
        print(f"[plan] {plan['usable_pairs']} usable pairs, {plan['steps_per_epoch']} steps per epoch, checkpoints at steps "
              f"{plan['checkpoints']}; methods {', '.join(methods)}; seeds {self.size.seeds}", flush=True)
        self.print_estimate(plan)
        held = HeldOut(self)
        for seed in range(self.size.seeds):
            self.evaluate(held, "pruned", self.data / "student", seed, 0)
            self.evaluate(held, "dsft", self.data / "dsft" / "hf", seed, 0)
            for method, spec in methods.items():
                for step in plan["checkpoints"] if seed in self.seeds_of(spec) else ():
                    if self.eval_path(method, seed, step).is_file():
                        continue
                    done = self._exported_steps(method, seed)
                    if done > step:
                        raise SystemExit(f"{self.run_dir(method, seed)}/hf is at step {done}, past the unevaluated checkpoint "
                                         f"{step}; delete that run folder to redo it")
                    if done < step:
                        self.train_to(method, spec, seed, step)
                    self.evaluate(held, method, self.run_dir(method, seed) / "hf", seed, step)
                    self.print_estimate(plan)
        return plan

    def print_estimate(self, plan: dict) -> None:
        left = {k: v for k, v in self.units_left(plan).items() if v}
        rates = ", ".join(f"{k} {fmt_s(self.clock.rate(k))} ({fmt_s(self.clock.rate(k, True))} quiet)"
                          for k in ("train step", "segment", "eval", "heldout teacher"))
        print(f"[estimate] left: {left or 'nothing'}; per count: {rates}; remaining {fmt_s(self.estimate_left(plan))} at the "
              f"measured load, {fmt_s(self.estimate_left(plan, True))} quiet", flush=True)


def _steady_step_seconds(metrics: Path, start: int, stop: int) -> float | None:
    """Median seconds between consecutive logged steps in (start, stop] (compilation excluded)."""
    from jaxalign.train.observability import read_metrics

    times = [(r["step"], r["time"]) for r in read_metrics(metrics) if r.get("split") == "train" and start < r["step"] <= stop]
    gaps = [t1 - t0 for (s0, t0), (s1, t1) in zip(times, times[1:]) if s1 == s0 + 1]
    return float(np.median(gaps)) if gaps else None


class HeldOut:
    """The teacher (loaded once), the held-out prompts and the probe pairs: evaluates one policy for one seed
    with the ``eval`` stage's own pieces (``jaxalign.pipeline.evaluate.Evaluator``)."""

    def __init__(self, study: Study):
        from jaxalign.data import prepare
        from jaxalign.pipeline.generate import named
        from jaxalign.pipeline.rows import load_prompts, load_table

        self.cfg = study.load([], "eval")
        ev = self.cfg.eval
        self.prompts = load_prompts(ev.prompts, limit=ev.limit)
        self._evaluators = {}
        self.teacher = self.sampler(named(self.cfg.teacher, "teacher"), "teacher")
        self.teacher_ids = self.teacher.encode(self.prompts, ev.prompts)
        self.tokenizer = self.teacher.tokenizer
        rows = load_table(str(study.scored))[:study.size.probe_pairs]
        self.probe_rows = rows
        cfg = dataclasses.replace(self.cfg.data, task="preference", shuffle=False, drop_remainder=False, packing=False,
                                  on_bad_row="skip", path="")
        self.probe = prepare(rows, self.tokenizer, cfg)

    def evaluator(self, seed: int):
        """The ``Evaluator`` whose sampling seed is ``eval.seed + seed``."""
        from jaxalign.pipeline.evaluate import Evaluator

        if seed not in self._evaluators:
            self._evaluators[seed] = Evaluator(dataclasses.replace(self.cfg, eval=dataclasses.replace(self.cfg.eval, seed=self.cfg.eval.seed + seed)))
        return self._evaluators[seed]

    def sampler(self, spec, key: str):
        from jaxalign.generation.sampler import SamplingParams
        from jaxalign.pipeline.generate import PolicySampler

        ev = self.cfg.eval
        return PolicySampler(spec, key=key, chat_setting=self.cfg.data.use_chat_template, add_bos=self.cfg.data.add_bos,
                             max_new_tokens=ev.max_new_tokens, sampling=SamplingParams(ev.temperature, 0, ev.top_p))

    def teacher_samples(self, seed: int) -> list[str]:
        return self.evaluator(seed).samples(self.teacher, self.prompts, self.teacher_ids)

    def evaluate(self, path: Path, name: str, seed: int, teacher_texts: list[str], probe: bool = True) -> dict:
        """The held-out measures of the policy at ``path`` and (``probe``) its summed log-probs of the probe pairs."""
        from flax import nnx

        from jaxalign.config.schema import GenerateModel

        ev = self.evaluator(seed)
        self.teacher.load(ev.mesh)
        teacher = nnx.split(self.teacher.model)
        sampler = self.sampler(GenerateModel(path=str(path), name=name), name)
        texts = ev.samples(sampler, self.prompts, sampler.encode(self.prompts, self.cfg.eval.prompts))
        policy = nnx.split(sampler.model)
        tokens = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        out = {"kl_to_teacher": ev.kl_per_token(policy, teacher, ev.sft_rows(self.teacher, self.prompts, teacher_texts)),
               "teacher_logp_per_token": ev.sequence_logp_per_token(teacher, ev.sft_rows(sampler, self.prompts, texts)),
               "length": float(np.mean([len(t) for t in tokens])), "distinct2": distinct_n(tokens, 2),
               "empty_share": float(np.mean([not t for t in tokens])), "examples": texts[:3]}
        if probe:
            out.update(self.probe_logps(ev, policy))
        sampler.model = None
        return out

    def probe_logps(self, ev, policy) -> dict:
        """Summed log-probs of the probe pairs (row order of the scored file; rows the data pipeline skipped are
        left out, with the reference's and teacher's cached values of the same rows)."""
        import jax

        from jaxalign.pipeline.evaluate import _PAIR_KEYS, _Batches
        from jaxalign.pipeline.scoring import make_pair_logps

        fn = make_pair_logps(policy[0], self.cfg.loss.chunk_size)
        got = {}
        with jax.set_mesh(ev.mesh):
            for n, host, batch in _Batches(self.probe, ev.batch_size, ev.mesh, _PAIR_KEYS):
                pc, pr = jax.device_get(fn(policy[1], batch))
                for i, row in enumerate(host["row_id"][:n, 0]):
                    got[int(row)] = (float(pc[i]), float(pr[i]))
        ids = sorted(got)
        rows = [self.probe_rows[i] for i in ids]
        return {"probe": {"rows": ids, "policy_chosen": [got[i][0] for i in ids], "policy_rejected": [got[i][1] for i in ids],
                          **{k: [r[k] for r in rows] for k in ("ref_chosen_logps", "ref_rejected_logps",
                                                               "teacher_chosen_logps", "teacher_rejected_logps")}}}


# ----------------------------------------------------------------------------- the whole-study estimate
def study_counts(size: Size) -> dict[str, float]:
    """Unit counts of a fresh study of ``size`` (assuming every pair usable and every β₂ distinct)."""
    methods = 1 + len(set(size.beta_teacher_fixed)) + len(size.z_targets)
    avg_seeds = min(size.average_logps_seeds, size.seeds)
    steps = checkpoint_steps(size.train_prompts, size)
    gen_batches = math.ceil(size.train_prompts / size.generate_batch_size)
    eval_batches = math.ceil(max(size.heldout_prompts, size.probe_pairs) / size.eval_batch_size)
    return {"data:prune": 1, "data:teacher responses": gen_batches, "data:dSFT": max(size.train_prompts // size.batch_size, 1),
            "data:pairs": gen_batches, "data:cache log-probs": math.ceil(size.train_prompts / 16),
            "heldout teacher": size.seeds * math.ceil(size.heldout_prompts / size.eval_batch_size),
            "eval": eval_batches * (size.seeds * (2 + methods * len(steps)) + avg_seeds * len(steps)),
            "train step": (size.seeds * methods + avg_seeds) * steps[-1],
            "segment": (size.seeds * methods + avg_seeds) * len(steps)}


def print_study_estimate(size: Size, clock: Clock) -> None:
    counts = study_counts(size)
    parts, totals, unknown = [], {False: 0.0, True: 0.0}, {False: [], True: []}
    for kind, n in counts.items():
        parts.append(f"  {kind}: {n:g} x {fmt_s(clock.rate(kind))} = {fmt_s(clock.estimate(kind, n))} at the measured "
                     f"load; {n:g} x {fmt_s(clock.rate(kind, True))} = {fmt_s(clock.estimate(kind, n, True))} quiet")
        for quiet in totals:
            e = clock.estimate(kind, n, quiet)
            if e is None:
                unknown[quiet].append(kind)
            else:
                totals[quiet] += e

    def total(quiet):
        missing = f" + not yet measured: {', '.join(unknown[quiet])}" if unknown[quiet] else ""
        return f"{fmt_s(totals[quiet])}{missing}"

    print("[estimate] the whole study at this size (counts: generation batches, dSFT steps, scoring batches, "
          "held-out batches, train steps, segments):\n" + "\n".join(parts)
          + f"\n  total {total(False)} at the measured load; {total(True)} quiet (CPU s / {Clock.QUIET_CORES})", flush=True)


# ----------------------------------------------------------------------------- results
def load_records(work: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((work / "evals").glob("*/seed*/step*.json"))]


def record_measures(record: dict, method: dict | None, lengths: dict[int, tuple[float, float]] | None = None) -> dict[str, float]:
    """The measures of one evaluation; the training-pair ones only for a ``method`` (they use its β's, and
    ``lengths``, the probe pairs' response token counts by row, when it averages log-probs)."""
    out = {k: record[k] for k in ("kl_to_teacher", "teacher_logp_per_token", "length", "distinct2")}
    if method is not None:
        p = record["probe"]
        per_token = np.array([lengths[r] for r in p["rows"]]).T if method.get("average") else None
        out.update(probe_measures(p["policy_chosen"], p["policy_rejected"], p["ref_chosen_logps"], p["ref_rejected_logps"],
                                  p["teacher_chosen_logps"], p["teacher_rejected_logps"], method["beta_ref"], method["beta_teacher"],
                                  per_token))
    return out


def summarise(records: list[dict], methods: dict[str, dict], plan: dict,
              lengths: dict[int, tuple[float, float]] | None = None) -> dict:
    """Per method and step: each measure's values by seed, mean and sd; paired daDPO − dDPO intervals."""
    values: dict[str, dict[int, dict[str, dict[int, float]]]] = {}
    for r in records:
        targets = list(methods) if r["model"] == "dsft" else [r["model"]]
        for name in targets:
            spec = methods.get(name)
            if spec is not None and r["seed"] not in range(spec.get("seeds", r["seed"] + 1)):
                continue
            for k, v in record_measures(r, spec, lengths).items():
                values.setdefault(name, {}).setdefault(r["step"], {}).setdefault(k, {})[r["seed"]] = v
    table = []
    for name in ["pruned", *methods]:
        for step in sorted(values.get(name, {})):
            row = {"method": name, "step": step, "epoch": step / plan["steps_per_epoch"]}
            for k, by_seed in values[name][step].items():
                m, sd = mean_sd(list(by_seed.values()))
                row[k] = {"mean": m, "sd": sd, "seeds": len(by_seed)}
            table.append(row)
    paired = []
    base = values.get("ddpo", {})
    for name in methods:
        if name == "ddpo":
            continue
        for step in sorted(values.get(name, {})):
            if step == 0 or step not in base:
                continue
            row = {"method": name, "step": step, "epoch": step / plan["steps_per_epoch"]}
            for k, by_seed in values[name][step].items():
                seeds = sorted(set(by_seed) & set(base[step].get(k, {})))
                if seeds:
                    row[k] = paired_interval([by_seed[s] for s in seeds], [base[step][k][s] for s in seeds])
            paired.append(row)
    return {"table": table, "paired_vs_ddpo": paired}


def _cell(x: dict | None, digits: int = 4) -> str:
    return "" if not x else f"{x['mean']:.{digits}f} ± {x['sd']:.{digits}f}"


def _ci(x: dict | None, digits: int = 4) -> str:
    if not x:
        return ""
    if x["n"] < 2:  # one seed (e.g. the length-averaged method): a difference, no interval
        return f"{x['mean']:+.{digits}f} (1 seed)"
    return f"{x['mean']:+.{digits}f} [{x['low']:+.{digits}f}, {x['high']:+.{digits}f}]"


def markdown(summary: dict, plan: dict, size: Size, seconds: float | None) -> str:
    cols = [("kl_to_teacher", 4), ("teacher_logp_per_token", 3), ("length", 1), ("distinct2", 3), ("sigma_neg_z", 3),
            ("logp_chosen", 1), ("logp_rejected", 1), ("margin_minus_teacher", 1), ("corr_margin_teacher", 3)]
    lines = [f"Sizes: {json.dumps(dataclasses.asdict(size))}", "",
             f"β (dDPO, daDPO β_ref) {plan['beta']:g}; β_teacher grid {plan['beta_teacher']}:", "", "```", plan["why"], "```", "",
             f"{plan['usable_pairs']} pairs, {plan['steps_per_epoch']} steps per epoch; step 0 is the dSFT student "
             "(every method starts from it); `pruned` is the student before dSFT.", "",
             "| method | step | epoch | " + " | ".join(MEASURES[k][0] for k, _ in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for row in summary["table"]:
        lines.append(f"| {row['method']} | {row['step']} | {row['epoch']:.2f} | "
                     + " | ".join(_cell(row.get(k), d) for k, d in cols) + " |")
    lines += ["", "Paired difference daDPO − dDPO (same seed), mean [95% t-interval]:", "",
              "| method | step | epoch | " + " | ".join(MEASURES[k][0] for k, _ in cols) + " |",
              "|---|---|---|" + "---|" * len(cols)]
    for row in summary["paired_vs_ddpo"]:
        lines.append(f"| {row['method']} − ddpo | {row['step']} | {row['epoch']:.2f} | "
                     + " | ".join(_ci(row.get(k), d) for k, d in cols) + " |")
    if seconds is not None:
        lines += ["", f"Wall time of this invocation: {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def plot(summary: dict, runs: dict[str, list[Path]], out: Path) -> list[Path]:
    """One PNG per measure (a line per method over steps, ± sd band; the pruned student dashed), one of the paired
    differences against dDPO (``_plot_paired``) and one of the trainer's per-step batch metrics (mean over seeds)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots")
        return []
    from jaxalign.train.observability import read_metrics

    written = []
    methods = sorted({r["method"] for r in summary["table"]} - {"pruned"})
    for key, (title, _) in MEASURES.items():
        fig, ax = plt.subplots(figsize=(5.5, 3.6))
        for name in methods:
            rows = [r for r in summary["table"] if r["method"] == name and key in r]
            if not rows:
                continue
            x = np.array([r["step"] for r in rows])
            m = np.array([r[key]["mean"] for r in rows])
            sd = np.array([r[key]["sd"] for r in rows])
            ax.plot(x, m, marker="o", ms=3, label=name)
            ax.fill_between(x, m - sd, m + sd, alpha=0.15)
        pruned = [r for r in summary["table"] if r["method"] == "pruned" and key in r]
        if pruned:
            ax.axhline(pruned[0][key]["mean"], color="grey", ls="--", lw=1, label="pruned")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out.with_name(f"{out.name}_{key}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    written.append(_plot_paired(summary, out, plt))
    keys = ("logps/chosen", "logps/rejected", "rewards/margins", "loss")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for name, files in sorted(runs.items()):
        per_step: dict[int, dict[str, list[float]]] = {}
        for f in files:
            for r in read_metrics(f) if f.is_file() else []:
                if r.get("split") == "train":
                    for k in keys:
                        if r.get(k) is not None:
                            per_step.setdefault(r["step"], {}).setdefault(k, []).append(r[k])
        steps = sorted(per_step)
        for ax, k in zip(axes, keys):
            ax.plot(steps, [np.mean(per_step[s].get(k, [np.nan])) for s in steps], lw=1, label=name)
            ax.set_title(f"{k} (training batch, mean over seeds)", fontsize=8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = out.with_name(f"{out.name}_train_metrics.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return written + [path]


PAIRED_PLOT = ("kl_to_teacher", "teacher_logp_per_token")


def _plot_paired(summary: dict, out: Path, plt) -> Path:
    """The paired differences method − dDPO over training on ``PAIRED_PLOT``'s measures: a line per method with
    two or more seeds, its 95% t-interval as error bars, 0 marked (the seed-to-seed spread of the per-measure
    plots hides differences this size)."""
    fig, axes = plt.subplots(1, len(PAIRED_PLOT), figsize=(5.5 * len(PAIRED_PLOT), 3.6))
    for ax, key in zip(axes, PAIRED_PLOT):
        for name in sorted({r["method"] for r in summary["paired_vs_ddpo"]}):
            rows = [r for r in summary["paired_vs_ddpo"] if r["method"] == name and r.get(key, {}).get("n", 0) > 1]
            if rows:
                m = np.array([r[key]["mean"] for r in rows])
                err = np.array([[r[key]["mean"] - r[key]["low"], r[key]["high"] - r[key]["mean"]] for r in rows]).T
                ax.errorbar([r["step"] for r in rows], m, yerr=err, marker="o", ms=3, capsize=3, label=f"{name} − ddpo")
        ax.axhline(0, color="grey", lw=1)
        ax.set_title(f"{MEASURES[key][0]}: paired difference, 95% interval", fontsize=8)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = out.with_name(f"{out.name}_paired_vs_ddpo.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_results(study: Study, plan: dict, seconds: float | None, out: Path) -> dict:
    methods = study.methods(plan)
    lengths = study.probe_lengths() if any(m.get("average") for m in methods.values()) else None
    summary = summarise(load_records(study.work), methods, plan, lengths)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs = {m: [study.run_dir(m, s) / "metrics.jsonl" for s in study.seeds_of(spec)] for m, spec in methods.items()}
    plots = plot(summary, runs, out)
    text = markdown(summary, plan, study.size, seconds) + "".join(f"\n![{p.stem}]({p.name})\n" for p in plots)
    from jaxalign.io.atomic import write_json_atomic, write_text_atomic

    write_json_atomic(out.with_suffix(".json"), {"size": dataclasses.asdict(study.size), "plan": plan, **summary})
    write_text_atomic(out.with_suffix(".md"), text)
    print(text)
    print(f"results: {out.with_suffix('.json')}, {out.with_suffix('.md')}, {len(plots)} plots", flush=True)
    return summary


# ----------------------------------------------------------------------------- driver
def enable_compile_cache(folder: Path) -> None:
    """A persistent XLA cache: every training segment and evaluation after the first reuses the compiled steps."""
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def parse_size(args) -> Size:
    base = {**(SMOKE if args.smoke else {})}
    for f in dataclasses.fields(Size):
        value = getattr(args, f.name, None)
        if value is not None:
            base[f.name] = tuple(value) if isinstance(value, list) else value
    return Size(**base)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help=f"tiny end-to-end run ({SMOKE}); default work folder runs/distillation-smoke")
    p.add_argument("--plan", action="store_true", help="print the sizes and the time estimate, run nothing")
    p.add_argument("--report", action="store_true",
                   help="write the results of the units finished so far (a study running or stopped part-way); run nothing")
    p.add_argument("--work", default="", help="work folder (default runs/distillation, or runs/distillation-smoke)")
    p.add_argument("--out", default="", help="results prefix: <out>.json, <out>.md, <out>_<measure>.png (default <work>/results)")
    p.add_argument("--rates", default="", help="timings.jsonl of another run (e.g. a smoke run) for the estimates")
    for f in dataclasses.fields(Size):
        if isinstance(f.default, tuple):
            p.add_argument("--" + f.name.replace("_", "-"), type=float, nargs="+", default=None)
        else:
            p.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    p.add_argument("overrides", nargs="*", help="key=value overrides of every stage and run (e.g. prune.fraction=0.3)")
    args = p.parse_args(argv)
    size = parse_size(args)
    work = Path(args.work or ("runs/distillation-smoke" if args.smoke else "runs/distillation")).resolve()
    rates = Path(args.rates) if args.rates else None
    if args.plan:
        print(json.dumps(dataclasses.asdict(size)))
        print_study_estimate(size, Clock(work / "timings.jsonl", rates))
        return
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    study = Study(size, work, rates, args.overrides)
    out = Path(args.out) if args.out else work / "results"
    if args.report:
        if not (work / "plan.json").is_file():
            raise SystemExit(f"{work}: no plan.json yet (the data stages have not finished); nothing to report")
        write_results(study, study.plan(), None, out)
        return
    enable_compile_cache(work / "xla_cache")
    print(json.dumps(dataclasses.asdict(size)), flush=True)
    print_study_estimate(size, study.clock)
    plan = study.run()
    write_results(study, plan, time.perf_counter() - start, out)


if __name__ == "__main__":
    main()
