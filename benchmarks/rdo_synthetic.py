"""RDO on a synthetic preference task with known graded rewards: difference-model quality, RDO-DPO vs DPO.

Task. A prompt is 5 random upper-case letters (it does not affect the reward). A response is a string of
lower-case letters from GOOD + BAD + NEUTRAL (8 letters by default); its true reward is

    r(y) = #(letters of y in GOOD) - #(letters of y in BAD)

Each response is drawn with its own tilt t ~ U(-1, 1) (P(good letter) = 0.25 + 0.2 t, P(bad) = 0.25 - 0.2 t,
P(neutral) = 0.5), so the true gap r(a) - r(b) of a pair ranges from 0 to ~10. The preference label is
Bradley–Terry sampled on the true gap, P(a ≻ b) = σ((r(a) - r(b)) / bt_scale): large gaps are almost always
labelled right, near-zero gaps are coin flips (label noise exactly where RDO's weighting should help). Every row
carries score_chosen / score_rejected = the true rewards of its chosen / rejected response.

Pipeline (jaxalign's public pieces only: `load_config`, `jaxalign.train.trainer.train`,
`jaxalign.pipeline.score.run_score`, `jaxalign.pipeline.scoring.make_pair_differences`,
`jaxalign.generation.generate_ids`, `jaxalign.models.load_pretrained`):

1. SFT a random-init tiny Llama (``--preset``, byte-level tokenizer) on prompt -> response rows from the generator
   above: the initial policy (and DPO reference), which writes letter strings of the right length.
2. Train the pairwise difference model D(x, a, b) from the SFT policy (loss.name=difference_model,
   difference_label_type=graded: the label is score_chosen - score_rejected, the true gap) on its own pairs.
3. `score` stage on held-out pairs (loss.rdo.source=difference_model): Spearman(rdo_difference, true gap), and
   on the same file with chosen/rejected swapped: max |d(x,a,b) + d(x,b,a)| (antisymmetry; must be <= 1e-5).
   The raw model's asymmetry mean |D(x,a,b) + D(x,b,a)| (`make_pair_differences`) shows what it removes.
4. `score` stage on the DPO training pairs: reference log-probs, rdo_difference and rdo_weight
   (loss.rdo.transform, normalised to mean 1).
5. For each preference family (``--families``, default DPO, KTO and RRHF) and each NLL weight (``--nll-weights``,
   default 0.5 and 0): the family and its RDO variant (loss.rdo.enabled=true: RDO-DPO, RDO-KTO, RDO-RRHF) from the
   SFT policy on that same scored file: same steps, lr, batch (β for DPO and KTO); ``--replicates`` runs each with
   data.seed = 0, 1, ... (the shuffle order), paired across methods. The NLL term is the chosen response's token-mean
   NLL (DPO: loss.nll_weight; RRHF: its own loss.rrhf_nll_weight). KTO's objective has no NLL term, so KTO runs
   only without it; KTO reads each pair as a desirable (chosen) and an undesirable (rejected) example, each with
   its pair's RDO weight. Without NLL, DPO moves probability to an early EOS (every training response has the
   same length, so nothing in the pairs pins the length) and the held-out reward mostly measures that collapse.
6. Held-out true reward of every policy (and of the SFT policy): ``--samples`` samples for each of
   ``--eval-prompts`` held-out prompts with the KV-cache sampler (temperature 1, one fixed seed for all).

Prints a table and writes the figures as JSON (``--out``, default runs/rdo_synthetic/results.json); the work
folder (``--work``, default beside ``--out``) is wiped at the start and keeps every run's data, logs and models.
The XLA compilation cache lives in the work folder too, so each invocation compiles from cold; it lets the
replicates after the first reuse the compiled train steps.

Usage (from the repository root):

    .venv/bin/python benchmarks/rdo_synthetic.py [--out runs/rdo_synthetic/results.json] [--seed 0]
    .venv/bin/python benchmarks/rdo_synthetic.py --min-len 4 --max-len 10     # variable-length responses

Runtime (defaults, 2 CPU cores shared with other jobs, load average ~10, JAX on CPU): 57 min wall (SFT 77 s,
difference model 180 s, held-out scoring 67 s, preference-pair scoring 43 s, 5 x (base + RDO) x 3 replicates with
sampling 3069 s); an earlier DPO-only run (load ~5) took 5 min. Most of each first training run of a loss is XLA
compilation (~30-50 s); later replicates reuse it from the cache. ``--families dpo --nll-weights 0.5`` is the
DPO-only run. ``--fast-compile true`` (jax_disable_most_optimizations) compiles faster but runs steps ~2x slower.
The measured table is in docs/distillation.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

GOOD = "abcd"
BAD = "wxyz"
NEUTRAL = "efghijkl"
PROMPT_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Difference-model layout: [BOS] prompt "=" a "|" b [EOS] (short separators that are not task letters).
PAIRWISE_TEMPLATE = ["data.pairwise_a_prefix='='", "data.pairwise_b_prefix='|'"]


# ----------------------------------------------------------------------------- the task
def true_reward(text: str) -> float:
    """#GOOD letters - #BAD letters (any other character counts 0)."""
    return float(sum(c in GOOD for c in text) - sum(c in BAD for c in text))


def random_prompt(rng: random.Random) -> str:
    return "".join(rng.choice(PROMPT_LETTERS) for _ in range(5))


def random_response(rng: random.Random, min_len: int = 8, max_len: int = 8) -> str:
    t = rng.uniform(-1.0, 1.0)
    p_good, p_bad = 0.25 + 0.2 * t, 0.25 - 0.2 * t
    out = []
    for _ in range(rng.randint(min_len, max_len)):
        u = rng.random()
        pool = GOOD if u < p_good else BAD if u < p_good + p_bad else NEUTRAL
        out.append(rng.choice(pool))
    return "".join(out)


def preference_rows(n: int, seed: int, bt_scale: float, lengths: tuple[int, int] = (8, 8)) -> list[dict]:
    """Pairs of independent responses; the label is Bradley–Terry sampled on the true gap."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt, a, b = random_prompt(rng), random_response(rng, *lengths), random_response(rng, *lengths)
        ra, rb = true_reward(a), true_reward(b)
        p_a = 1.0 / (1.0 + math.exp(-(ra - rb) / bt_scale))
        if rng.random() >= p_a:
            a, b, ra, rb = b, a, rb, ra
        rows.append({"prompt": prompt, "chosen": a, "rejected": b, "score_chosen": ra, "score_rejected": rb})
    return rows


def sft_rows(n: int, seed: int, lengths: tuple[int, int] = (8, 8)) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": random_prompt(rng), "response": random_response(rng, *lengths)} for _ in range(n)]


def swapped(rows: list[dict]) -> list[dict]:
    """The same pairs with chosen and rejected (and their scores) exchanged."""
    return [{**r, "chosen": r["rejected"], "rejected": r["chosen"], "score_chosen": r["score_rejected"],
             "score_rejected": r["score_chosen"]} for r in rows]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_jsonl(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


def byte_tokenizer():
    """The byte-level test tokenizer (every byte one token; its ids fit the presets' 320-token vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   additional_special_tokens=["<|user|>", "<|assistant|>"])


# ----------------------------------------------------------------------------- statistics
def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    try:
        from scipy.stats import spearmanr
    except ImportError:
        def ranks(v):
            v = np.asarray(v, np.float64)
            r = np.empty(len(v))
            r[np.argsort(v, kind="mergesort")] = np.arange(len(v))
            for value in np.unique(v):
                tie = v == value
                r[tie] = r[tie].mean()
            return r

        return float(np.corrcoef(ranks(x), ranks(y))[0, 1])
    return float(spearmanr(x, y).statistic)


def mean_sem(values) -> tuple[float, float]:
    v = np.asarray(values, np.float64)
    return float(v.mean()), (float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0)


# ----------------------------------------------------------------------------- settings and configs
@dataclasses.dataclass
class Settings:
    """Sizes and hyper-parameters of one experiment (each is a command-line flag)."""

    preset: str = "tiny"
    seed: int = 0
    bt_scale: float = 1.5
    min_len: int = 8
    max_len: int = 8
    sft_rows: int = 2048
    sft_steps: int = 150
    sft_lr: float = 3e-3
    dm_rows: int = 2048
    dm_steps: int = 200
    dm_lr: float = 1e-3
    heldout_pairs: int = 256
    dpo_rows: int = 1024
    dpo_steps: int = 100
    dpo_lr: float = 3e-4
    beta: float = 0.1
    families: str = "dpo,kto,rrhf"
    nll_weights: str = "0.5,0"
    rdo_transform: str = "sigmoid"
    rdo_temperature: float = 1.0
    replicates: int = 3
    batch_size: int = 32
    eval_prompts: int = 64
    samples: int = 4
    max_new_tokens: int = 12
    policy_length: int = 24
    pairwise_length: int = 32
    fast_compile: bool = False

    @property
    def lengths(self) -> tuple[int, int]:
        return self.min_len, self.max_len

    @property
    def family_list(self) -> list[str]:
        out = [f.strip() for f in self.families.split(",") if f.strip()]
        bad = [f for f in out if f not in FAMILIES]
        if bad or not out:
            raise ValueError(f"--families {self.families!r}: each must be one of {', '.join(FAMILIES)}")
        return out

    @property
    def nll_list(self) -> list[float]:
        try:
            out = [float(x) for x in self.nll_weights.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--nll-weights {self.nll_weights!r}: a comma-separated list of numbers >= 0") from None
        if not out or any(x < 0 for x in out):
            raise ValueError(f"--nll-weights {self.nll_weights!r}: a comma-separated list of numbers >= 0")
        return out


#: Preference families compared with and without RDO weights: (label, overrides given beta and NLL weight).
#: The NLL term is the chosen response's token-mean NLL: ``loss.nll_weight`` for DPO, RRHF's own
#: ``loss.rrhf_nll_weight``; KTO's objective has none, so KTO runs only without it.
FAMILIES = {
    "dpo": ("DPO", lambda beta, nll: ["loss.name=dpo", f"loss.beta={beta}", f"loss.nll_weight={nll}"]),
    "kto": ("KTO", lambda beta, nll: ["loss.name=kto", f"loss.beta={beta}"]),
    "rrhf": ("RRHF", lambda beta, nll: ["loss.name=rrhf", f"loss.rrhf_nll_weight={nll}"]),
}


def family_nll_weights(s: "Settings", family: str) -> list[float]:
    """The NLL weights ``family`` runs with: all of ``--nll-weights``, except KTO (no NLL term): 0 only."""
    return [0.0] if family == "kto" else s.nll_list


def quiet_overrides(out_dir: Path) -> list[str]:
    return [f"train.output_dir={out_dir}", "logging.tensorboard=false", "logging.progress_bar=false",
            "logging.plot=false", "checkpoint.async_save=false", "checkpoint.resume=false", "mesh.data=1",
            "optimizer.schedule=constant", "train.log_every=10"]


def policy_data(s: Settings, data: Path) -> list[str]:
    """Policy rows fit ``policy_length`` (their bucket); ``data.max_length`` is the score stage's (the pairwise
    layout's), so the reference log-probs it caches carry the data settings training checks them against."""
    return [f"data.path={data}", f"data.batch_size={s.batch_size}", f"data.max_length={s.pairwise_length}",
            "data.max_prompt_length=12", f"data.buckets=[{s.policy_length},{s.pairwise_length}]"]


def difference_model_overrides(s: Settings, out: Path, data: Path, init: list[str], steps: int) -> list[str]:
    """`init`: the model to start from (``model.path=<policy>``, or ``model.preset=... model.tokenizer=...``)."""
    return [*quiet_overrides(out), *init, "loss.name=difference_model", "loss.difference_label_type=graded",
            f"data.path={data}", f"data.batch_size={s.batch_size}", f"data.max_length={s.pairwise_length}",
            "data.max_prompt_length=12", f"data.buckets=[{s.pairwise_length}]", *PAIRWISE_TEMPLATE,
            f"train.steps={steps}", f"optimizer.lr={s.dm_lr}", "optimizer.weight_decay=0.01", f"train.seed={s.seed}"]


def score_overrides(s: Settings, data: Path, output: Path, policy: list[str], dm: Path, reference_logps: bool) -> list[str]:
    """The `score` stage writing rdo_difference / rdo_weight with difference model `dm` (and reference log-probs)."""
    return [*quiet_overrides(Path(output).parent / "score_run"), *policy, f"data.path={data}", f"score.output={output}",
            f"data.batch_size={s.batch_size}", f"data.max_length={s.pairwise_length}", "data.max_prompt_length=12",
            f"data.buckets=[{s.policy_length},{s.pairwise_length}]", *PAIRWISE_TEMPLATE,
            "score.rdo_weights=true", f"score.reference_logps={str(reference_logps).lower()}",
            "loss.rdo.source=difference_model", f"loss.rdo.model.path={dm}",
            f"loss.rdo.transform={s.rdo_transform}", f"loss.rdo.temperature={s.rdo_temperature}"]


def load(overrides: list[str], stage: str):
    from jaxalign.config import load_config

    return load_config(None, overrides, stage=stage)


def run_train(overrides: list[str], log_file: Path | None = None):
    """`jaxalign.train.trainer.train` on the config the overrides give; its console output goes to `log_file`."""
    from jaxalign.train.trainer import train

    config = load(overrides, "train")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = train(config)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        Path(log_file).write_text(buf.getvalue())
    return result


def run_score_stage(overrides: list[str]):
    from jaxalign.pipeline.score import run_score

    return run_score(load(overrides, "score"))


# ----------------------------------------------------------------------------- the stages
def train_sft(s: Settings, work: Path, tokenizer_dir: Path) -> Path:
    data = write_jsonl(work / "data" / "sft.jsonl", sft_rows(s.sft_rows, s.seed + 1, s.lengths))
    out = work / "sft"
    run_train([*quiet_overrides(out), f"model.preset={s.preset}", f"model.tokenizer={tokenizer_dir}", "loss.name=sft",
               *policy_data(s, data), f"train.steps={s.sft_steps}", f"optimizer.lr={s.sft_lr}", f"train.seed={s.seed}"],
              out / "log.txt")
    return out / "hf"


def train_difference_model(s: Settings, work: Path, init: list[str]) -> Path:
    data = write_jsonl(work / "data" / "dm_train.jsonl", preference_rows(s.dm_rows, s.seed + 2, s.bt_scale, s.lengths))
    out = work / "difference_model"
    run_train(difference_model_overrides(s, out, data, init, s.dm_steps), out / "log.txt")
    return out / "hf"


def raw_asymmetry(s: Settings, dm: Path, data: Path, policy: list[str]) -> float:
    """Mean |D(x,a,b) + D(x,b,a)| of the raw model (0 for an exactly antisymmetric D): what d's symmetrisation removes."""
    import jax
    from flax import nnx

    from jaxalign.data import prepare
    from jaxalign.models import load_pretrained
    from jaxalign.pipeline.scoring import make_pair_differences

    cfg = load(score_overrides(s, data, data.parent / "unused.jsonl", policy, dm, False), "score")
    model, tok = load_pretrained(dm, head="score")
    pairs = prepare(str(data), tok, dataclasses.replace(cfg.data, task="pairwise", shuffle=False, drop_remainder=False))
    fn, state = make_pair_differences(nnx.graphdef(model)), nnx.state(model)
    keys = [f"{o}_{k}" for o in ("fwd", "bwd") for k in ("input_ids", "positions", "segment_ids", "last_index")]
    gaps = []
    for lo in range(0, len(pairs.units), s.batch_size):
        units = pairs.units[lo:lo + s.batch_size]
        units = units + [None] * (s.batch_size - len(units))  # one shape: one compile
        batch = pairs.collate(units)
        fwd, bwd = (np.asarray(x) for x in jax.device_get(fn(state, {k: batch[k] for k in keys})))
        real = batch["example_mask"].reshape(-1) > 0
        gaps.extend(np.abs(fwd + bwd)[real].tolist())
    return float(np.mean(gaps))


def difference_model_quality(s: Settings, work: Path, policy: list[str], dm: Path, rows: list[dict]) -> dict:
    """Held-out Spearman(d, true gap) and antisymmetry of d, both through the `score` stage."""
    fwd_in = write_jsonl(work / "data" / "heldout_pairs.jsonl", rows)
    bwd_in = write_jsonl(work / "data" / "heldout_pairs_swapped.jsonl", swapped(rows))
    fwd_out, bwd_out = work / "scored" / "heldout.jsonl", work / "scored" / "heldout_swapped.jsonl"
    run_score_stage(score_overrides(s, fwd_in, fwd_out, policy, dm, reference_logps=False))
    run_score_stage(score_overrides(s, bwd_in, bwd_out, policy, dm, reference_logps=False))
    fwd, bwd = read_jsonl(fwd_out), read_jsonl(bwd_out)
    if [r["chosen"] for r in fwd] != [r["rejected"] for r in bwd]:
        raise RuntimeError("the scored held-out files are not row-aligned")
    d = np.asarray([r["rdo_difference"] for r in fwd], np.float64)
    d_swapped = np.asarray([r["rdo_difference"] for r in bwd], np.float64)
    gap = np.asarray([r["score_chosen"] - r["score_rejected"] for r in fwd], np.float64)
    decided = gap != 0
    return {
        "heldout_pairs": len(rows),
        "spearman": spearman(d, gap),
        "pearson": float(np.corrcoef(d, gap)[0, 1]),
        "sign_accuracy": float(np.mean(np.sign(d[decided]) == np.sign(gap[decided]))),
        "antisymmetry_max_abs": float(np.max(np.abs(d + d_swapped))),
        "raw_asymmetry_mean_abs": raw_asymmetry(s, dm, fwd_in, policy),
        "d_std": float(d.std()),
    }


def train_policy(s: Settings, work: Path, name: str, policy: Path, data: Path, family: str, nll: float, rdo: bool,
                 data_seed: int) -> tuple[Path, dict]:
    """``family`` (dpo / kto / rrhf; RDO-weighted with ``rdo``) from the SFT policy on the scored pairs."""
    out = work / name
    result = run_train([*quiet_overrides(out), f"model.path={policy}", *FAMILIES[family][1](s.beta, nll),
                        f"loss.rdo.enabled={str(rdo).lower()}", *policy_data(s, data), f"data.seed={data_seed}",
                        f"train.steps={s.dpo_steps}", f"optimizer.lr={s.dpo_lr}", f"train.seed={s.seed}"],
                       out / "log.txt")
    return out / "hf", {"final_loss": result.losses[-1], "steps": result.steps}


def variant(family: str, nll: float, rdo: bool) -> str:
    """Key of one trained variant, e.g. ``rdo_kto_nll0``."""
    return f"{'rdo_' if rdo else ''}{family}_nll{nll:g}"


def heldout_prompts(s: Settings) -> list[str]:
    rng = random.Random(s.seed + 4)
    return [random_prompt(rng) for _ in range(s.eval_prompts)]


def policy_reward(s: Settings, policy: Path, prompts: list[str]) -> dict:
    """Mean true reward of `s.samples` samples per prompt (temperature 1, fixed seed), ± standard error."""
    from jaxalign.generation import SamplingParams, generate_ids
    from jaxalign.models import load_pretrained

    model, tok = load_pretrained(policy)
    # laid out as the data pipeline lays out a plain-text prompt: [BOS] + its tokens
    ids = [[tok.bos_token_id] + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    eos = tok.eos_token_id
    new = generate_ids(model, ids * s.samples, max_new_tokens=s.max_new_tokens, sampling=SamplingParams(1.0),
                       seed=s.seed + 5, eos_token_ids=(eos,), pad_token_id=tok.pad_token_id)
    texts = [tok.decode([t for t in toks if t != eos], skip_special_tokens=True) for toks in new]
    rewards = [true_reward(t) for t in texts]
    mean, sem = mean_sem(rewards)
    return {"mean_true_reward": mean, "sem": sem, "samples": len(rewards),
            "mean_length": float(np.mean([len(t) for t in texts])),
            "ended_with_eos": float(np.mean([eos in toks for toks in new])), "examples": texts[:4]}


# ----------------------------------------------------------------------------- driver
def enable_compile_cache(folder: Path, fast_compile: bool = False) -> None:
    """A persistent XLA cache in `folder`; `fast_compile`: jax_disable_most_optimizations (what the unit tests
    use: 2-3x faster compiles of these tiny steps, the same math)."""
    import jax

    jax.config.update("jax_disable_most_optimizations", bool(fast_compile))
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def run(s: Settings, work: Path) -> dict:
    timings, t0 = {}, time.perf_counter()
    clock = [time.perf_counter()]

    def lap(name):
        timings[name] = round(time.perf_counter() - clock[0], 1)
        print(f"[{timings[name]:6.1f} s] {name}", flush=True)
        clock[0] = time.perf_counter()

    if work.exists():
        shutil.rmtree(work)
    enable_compile_cache(work / "xla_cache", s.fast_compile)
    tokenizer_dir = work / "tokenizer"
    byte_tokenizer().save_pretrained(tokenizer_dir)
    sft = train_sft(s, work, tokenizer_dir)
    lap("sft")
    policy = [f"model.path={sft}"]
    dm = train_difference_model(s, work, policy)
    lap("difference model")
    heldout = preference_rows(s.heldout_pairs, s.seed + 3, s.bt_scale, s.lengths)
    quality = difference_model_quality(s, work, policy, dm, heldout)
    lap("difference model on held-out pairs (score both orders)")
    dpo_rows = preference_rows(s.dpo_rows, s.seed + 6, s.bt_scale, s.lengths)
    scored = work / "scored" / "dpo_train.jsonl"
    run_score_stage(score_overrides(s, write_jsonl(work / "data" / "dpo_train.jsonl", dpo_rows), scored, policy, dm,
                                    reference_logps=True))
    lap("score DPO pairs (reference log-probs, rdo_weight)")
    scored_rows = read_jsonl(scored)
    w = np.asarray([r["rdo_weight"] for r in scored_rows])
    gap = np.asarray([r["score_chosen"] - r["score_rejected"] for r in scored_rows])

    prompts = heldout_prompts(s)
    rewards = {"sft": policy_reward(s, sft, prompts)}
    combos = [(f, nll) for f in s.family_list for nll in family_nll_weights(s, f)]
    runs = []
    for k in range(s.replicates):
        row = {"data_seed": k}
        for family, nll in combos:
            for rdo in (False, True):
                key = variant(family, nll, rdo)
                path, info = train_policy(s, work, f"{key}_{k}", sft, scored, family, nll, rdo, data_seed=k)
                row[key] = {**policy_reward(s, path, prompts), **info}
                shutil.rmtree(path.parent / "checkpoints", ignore_errors=True)  # only the export is kept
            base, rdo_ = row[variant(family, nll, False)], row[variant(family, nll, True)]
            print(f"         replicate {k}: {FAMILIES[family][0]} (NLL {nll:g}) {base['mean_true_reward']:+.3f}, "
                  f"RDO-{FAMILIES[family][0]} {rdo_['mean_true_reward']:+.3f}", flush=True)
        runs.append(row)
    lap(f"{len(combos)} x (base + RDO) x {s.replicates} replicates (train + held-out sampling)")
    timings["total"] = round(time.perf_counter() - t0, 1)

    summary, comparisons = {}, []
    for family, nll in combos:
        keys = {rdo: variant(family, nll, rdo) for rdo in (False, True)}
        for key in keys.values():
            m, e = mean_sem([r[key]["mean_true_reward"] for r in runs])
            summary[key] = {"mean_true_reward": m, "sem_over_replicates": e,
                            "mean_length": float(np.mean([r[key]["mean_length"] for r in runs]))}
        diffs = [r[keys[True]]["mean_true_reward"] - r[keys[False]]["mean_true_reward"] for r in runs]
        dm_, de = mean_sem(diffs)
        comparisons.append({"family": family, "nll_weight": nll, "base": keys[False], "rdo": keys[True],
                            "rdo_minus_base": dm_, "sem": de, "wins": int(sum(d > 0 for d in diffs)),
                            "replicates": len(diffs)})
    return {
        "settings": dataclasses.asdict(s),
        "task": {"good": GOOD, "bad": BAD, "neutral": NEUTRAL, "bt_scale": s.bt_scale,
                 "dpo_label_flip_rate": float(np.mean(gap < 0)), "dpo_tie_rate": float(np.mean(gap == 0)),
                 "dpo_abs_gap_mean": float(np.mean(np.abs(gap))), "dpo_abs_gap_max": float(np.max(np.abs(gap)))},
        "difference_model": quality,
        "rdo_weights": {"mean": float(w.mean()), "min": float(w.min()), "max": float(w.max()),
                        "mean_on_flipped_labels": float(w[gap < 0].mean()) if (gap < 0).any() else None,
                        "mean_on_ties": float(w[gap == 0].mean()) if (gap == 0).any() else None,
                        "mean_on_correct_labels": float(w[gap > 0].mean()) if (gap > 0).any() else None,
                        "spearman_with_true_gap": spearman(w, gap)},
        "sft": rewards["sft"],
        "replicates": runs,
        "summary": summary,
        "comparisons": comparisons,
        "seconds": timings,
    }


def table(r: dict) -> str:
    s, q, w = r["settings"], r["difference_model"], r["rdo_weights"]
    t = r["task"]
    lines = [
        f"RDO synthetic benchmark: true reward = #[{t['good']}] - #[{t['bad']}] letters, responses "
        f"{s['min_len']}-{s['max_len']} letters, Bradley–Terry labels (scale {s['bt_scale']})",
        f"model preset {s['preset']}, seed {s['seed']}; preference data: {t['dpo_label_flip_rate']:.1%} labels flipped, "
        f"{t['dpo_tie_rate']:.1%} ties, mean |true gap| {t['dpo_abs_gap_mean']:.2f} (max {t['dpo_abs_gap_max']:.0f})",
        "",
        "| difference model, held-out pairs | value |",
        "|---|---|",
        f"| pairs | {q['heldout_pairs']} |",
        f"| Spearman(d, true gap) | {q['spearman']:.3f} |",
        f"| Pearson(d, true gap) | {q['pearson']:.3f} |",
        f"| sign accuracy vs true gap (non-tied) | {q['sign_accuracy']:.3f} |",
        f"| max abs(d(x,a,b) + d(x,b,a)), antisymmetrised | {q['antisymmetry_max_abs']:.1e} |",
        f"| mean abs(D(x,a,b) + D(x,b,a)), raw model | {q['raw_asymmetry_mean_abs']:.3f} |",
        f"| DPO pairs: mean rdo_weight on flipped / tied / correct labels | {w['mean_on_flipped_labels']:.3f} / "
        f"{w['mean_on_ties'] if w['mean_on_ties'] is not None else float('nan'):.3f} / {w['mean_on_correct_labels']:.3f} |",
        "",
        "| policy | NLL weight | held-out true reward, mean ± s.e. over replicates | mean length | "
        "RDO − base (paired by data.seed) | RDO higher in |",
        "|---|---|---|---|---|---|",
        f"| SFT (initial) | | {r['sft']['mean_true_reward']:+.3f} ± {r['sft']['sem']:.3f} (s.e. over samples) | "
        f"{r['sft']['mean_length']:.1f} | | |",
    ]
    for c in r["comparisons"]:
        label = FAMILIES[c["family"]][0]
        base, rdo = r["summary"][c["base"]], r["summary"][c["rdo"]]
        lines.append(f"| {label} | {c['nll_weight']:g} | {base['mean_true_reward']:+.3f} ± {base['sem_over_replicates']:.3f} | "
                     f"{base['mean_length']:.1f} | | |")
        lines.append(f"| RDO-{label} | {c['nll_weight']:g} | {rdo['mean_true_reward']:+.3f} ± {rdo['sem_over_replicates']:.3f} | "
                     f"{rdo['mean_length']:.1f} | **{c['rdo_minus_base']:+.3f} ± {c['sem']:.3f}** | "
                     f"{c['wins']}/{c['replicates']} |")
    if "kto" in s["families"] and any(x > 0 for x in [float(v) for v in s["nll_weights"].split(",") if v.strip()]):
        lines.append("| KTO, RDO-KTO | > 0 | not run: the KTO objective has no NLL term | | | |")
    lines += [
        "",
        f"steps: SFT {s['sft_steps']}, difference model {s['dm_steps']}, every policy {s['dpo_steps']} "
        f"(batch {s['batch_size']}, lr {s['dpo_lr']} constant, beta {s['beta']} for DPO and KTO; "
        f"rdo {s['rdo_transform']} tau={s['rdo_temperature']}); NLL: loss.nll_weight (DPO), loss.rrhf_nll_weight (RRHF)",
        f"data: SFT {s['sft_rows']} rows, difference model {s['dm_rows']} pairs, preference {s['dpo_rows']} pairs "
        f"(KTO: each pair split into a desirable and an undesirable example), held-out {s['heldout_pairs']} pairs, "
        f"{s['eval_prompts']} held-out prompts x {s['samples']} samples (max {s['max_new_tokens']} new tokens, temperature 1)",
        "wall time (s): " + ", ".join(f"{k} {v}" for k, v in r["seconds"].items()),
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/rdo_synthetic/results.json", help="where the figures go (JSON)")
    parser.add_argument("--work", default="", help="working folder, wiped first (default: beside --out)")
    for f in dataclasses.fields(Settings):
        kind = type(f.default)
        parse = (lambda v: v.lower() in ("1", "true", "yes", "on")) if kind is bool else kind
        parser.add_argument("--" + f.name.replace("_", "-"), type=parse, default=f.default, metavar=kind.__name__.upper())
    args = parser.parse_args(argv)
    s = Settings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)})
    out = Path(args.out)
    # absolute: jaxalign's Checkpointer hands the path to Orbax, which refuses relative checkpoint paths
    result = run(s, (Path(args.work) if args.work else out.parent / "work").resolve())
    text = table(result)
    print("\n" + text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "table": text}, indent=2) + "\n")
    print(f"\nfigures: {out}")
    return result


if __name__ == "__main__":
    main()
