"""The ``eval`` stage: held-out metrics of one or more policies, as a table and JSON.

Per policy (``eval.models``, default ``model``):

- ``preference_accuracy`` (with ``eval_data``): share of held-out pairs whose
  implicit reward margin ``(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))``
  is positive (ties count ½); the reference is ``reference`` (default ``model``).
- ``kl_to_teacher`` (with ``eval.prompts``): forward KL(teacher ‖ policy) per
  response token, over the full vocabulary, on the teacher's own samples.
- ``teacher_logp_per_token``: the teacher's log-likelihood per token of the
  policy's own samples (higher = more teacher-like).
- ``win_rate_vs_teacher`` (with ``eval.judge``): share of prompts where the judge
  prefers the policy's sample to the teacher's (reward model: higher score;
  difference model: positive antisymmetrised difference; ties ½).

With ``eval.judge`` and ``eval_data`` the judge's own held-out accuracy is
reported too. All samples use the same prompts and seed for every policy.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
from flax import nnx

from jaxalign.config.schema import Config, ConfigError
from jaxalign.data import DataError, prepare
from jaxalign.generation.sampler import SamplingParams
from jaxalign.io.atomic import write_json_atomic
from jaxalign.losses import antisymmetric_difference
from jaxalign.parallel import distributed
from jaxalign.parallel.mesh import make_mesh
from jaxalign.pipeline.generate import PolicySampler, named
from jaxalign.pipeline.rows import load_prompts, load_table, write_rows_atomic
from jaxalign.pipeline.scoring import make_pair_differences, make_pair_logps, make_pair_rewards, make_sft_logps, make_token_kl
from jaxalign.train.build import build_model, build_tokenizer
from jaxalign.train.provenance import write_sidecar

log = logging.getLogger(__name__)

__all__ = ["METRICS", "eval_output_path", "format_table", "run_eval"]

#: Metric key -> column title of the table.
METRICS = {
    "preference_accuracy": "pref. acc.",
    "kl_to_teacher": "KL(teacher||model)/tok",
    "teacher_logp_per_token": "teacher logp/tok of samples",
    "win_rate_vs_teacher": "win rate vs teacher",
}


def eval_output_path(config: Config) -> Path:
    return Path(config.eval.output or f"{config.train.output_dir.rstrip('/')}/eval.json")


def eval_provenance(config: Config) -> dict:
    """What decides ``eval.json``: every evaluated model, the teacher, the reference, the judge (fingerprints),
    the held-out data's content and the sampling settings."""
    from jaxalign.train.provenance import source_digest, spec_fingerprint

    ev = config.eval
    record = {"kind": "eval", "eval.limit": ev.limit, "eval.max_new_tokens": ev.max_new_tokens,
              "eval.temperature": ev.temperature, "eval.top_p": ev.top_p, "eval.seed": ev.seed,
              "eval.judge_kind": ev.judge_kind, "judge": spec_fingerprint(ev.judge), "teacher": spec_fingerprint(config.teacher),
              "reference": spec_fingerprint(config.reference if config.reference.is_set() else config.model),
              "eval.prompts": source_digest(ev.prompts) if ev.prompts else None,
              "eval_data": source_digest(config.eval_data) if config.eval_data else None}
    for m in list(ev.models) or [named(config.model, "model")]:
        record[f"model[{m.name}]"] = spec_fingerprint(m)
    return record


def check_judge(config: Config) -> None:
    """Refuse, before any model loads, a judge that cannot judge: a random preset, a plain language model
    (its scalar head would be random, so its win rate would be noise) or a folder without a tokenizer."""
    from jaxalign.models.resolve import resolve_model_path

    j = config.eval.judge
    if not j.is_set():
        return
    if j.preset:
        raise ConfigError(f"eval.judge.preset={j.preset!r} is a random model; a judge must be a trained reward or "
                          "difference model (an HF *ForSequenceClassification folder, e.g. from loss.name=reward_model)")
    folder = resolve_model_path(j.path)
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"eval.judge.path={j.path}: cannot read {folder / 'config.json'} ({e})") from None
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise ConfigError(f"eval.judge.path={j.path} is a language model ({', '.join(map(str, architectures)) or 'no architectures'}), "
                          "not a trained scalar-head model; train a judge with loss.name=reward_model (or difference_model)")
    build_tokenizer(j, key="eval.judge")


class _Batches:
    """Fixed-shape batches over prepared rows in order (the last padded with empty rows)."""

    def __init__(self, data, batch_size: int, mesh, keys: Sequence[str]):
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        self.data, self.size, self.mesh, self.keys = data, -(-batch_size // shards) * shards, mesh, tuple(keys)

    def __iter__(self):
        units = list(self.data.units)
        for lo in range(0, len(units), self.size):
            chunk = units[lo:lo + self.size]
            host = self.data.collate(chunk + [None] * (self.size - len(chunk)))
            yield len(chunk), host, distributed.global_batch({k: host[k] for k in self.keys}, self.mesh)


def _seq_keys(prefix: str = "") -> tuple[str, ...]:
    return tuple(f"{prefix}{k}" for k in ("input_ids", "positions", "segment_ids", "loss_mask"))


_PAIR_KEYS = _seq_keys("chosen_") + _seq_keys("rejected_")
_PAIRWISE_KEYS = tuple(f"{d}_{k}" for d in ("fwd", "bwd") for k in ("input_ids", "positions", "segment_ids", "last_index"))


class Evaluator:
    """Holds the tokenizer, data settings, mesh and teacher of one ``eval`` run."""

    def __init__(self, config: Config):
        self.config = config
        self.ev = config.eval
        self.mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
        self.batch_size = config.eval_batch_size
        base = config.model if config.model.is_set() else (self.ev.models[0] if self.ev.models else config.model)
        self.tokenizer = build_tokenizer(base, key="model")
        self.data_cfg = dataclasses.replace(config.data, shuffle=False, drop_remainder=False, packing=False)
        self.sampling = SamplingParams(self.ev.temperature, 0, self.ev.top_p)

    def _sampler(self, spec, key: str) -> PolicySampler:
        return PolicySampler(spec, key=key, chat_setting=self.config.data.use_chat_template,
                             add_bos=self.config.data.add_bos, max_new_tokens=self.ev.max_new_tokens, sampling=self.sampling)

    def _prepare(self, rows: list[dict], task: str, tokenizer=None, on_bad_row: str = "skip"):
        cfg = dataclasses.replace(self.data_cfg, task=task, format="auto", on_bad_row=on_bad_row, path="")
        return prepare(rows, tokenizer or self.tokenizer, cfg)

    def _load(self, spec, key: str, head: str = "lm"):
        with jax.set_mesh(self.mesh):
            return nnx.split(build_model(spec, key=key, head=head, mesh=self.mesh))

    def samples(self, sampler: PolicySampler, prompts: list[dict], encoded: list[list[int]]) -> list[str]:
        """The sampler's responses to every prompt (batch b seeded with ``eval.seed + b``)."""
        sampler.load(self.mesh)
        texts, size = [], self.batch_size
        with jax.set_mesh(self.mesh):
            for b, lo in enumerate(range(0, len(prompts), size)):
                out, _ = sampler.sample(encoded[lo:lo + size], seed=self.ev.seed + b, batch_size=size)
                texts.extend(out)
        return texts

    # ----------------------------------------------------------------- metrics

    def sft_rows(self, sampler: PolicySampler, prompts: list[dict], texts: list[str]) -> list[dict]:
        return [{"prompt": sampler.prompt_field(p), "response": sampler.as_message(p, t)} for p, t in zip(prompts, texts)]

    def pair_rows(self, sampler: PolicySampler, prompts, chosen: list[str], rejected: list[str]) -> list[dict]:
        return [{"prompt": sampler.prompt_field(p), "chosen": sampler.as_message(p, c), "rejected": sampler.as_message(p, r)}
                for p, c, r in zip(prompts, chosen, rejected)]

    def sequence_logp_per_token(self, model, rows: list[dict]) -> float:
        """Σ log p / Σ tokens of the responses in ``rows`` under ``model`` (graphdef, state)."""
        data = self._prepare(rows, "sft")
        fn = make_sft_logps(model[0], self.config.loss.chunk_size)
        total = count = 0.0
        with jax.set_mesh(self.mesh):
            for n, _, batch in _Batches(data, self.batch_size, self.mesh, _seq_keys()):
                lp, tok = jax.device_get(fn(model[1], batch))
                total += float(np.sum(lp[:n]))
                count += float(np.sum(tok[:n]))
        return total / max(count, 1.0)

    def kl_per_token(self, policy, teacher, rows: list[dict]) -> float:
        data = self._prepare(rows, "sft")
        fn = make_token_kl(policy[0], teacher[0], self.config.loss.chunk_size)
        total = count = 0.0
        with jax.set_mesh(self.mesh):
            for n, _, batch in _Batches(data, self.batch_size, self.mesh, _seq_keys()):
                kl, tok = jax.device_get(fn(policy[1], teacher[1], batch))
                total += float(np.sum(kl[:n]))
                count += float(np.sum(tok[:n]))
        return total / max(count, 1.0)

    def preference_accuracy(self, policy, reference, data) -> float:
        fn_p = make_pair_logps(policy[0], self.config.loss.chunk_size)
        fn_r = make_pair_logps(reference[0], self.config.loss.chunk_size)
        wins = []
        with jax.set_mesh(self.mesh):
            for n, _, batch in _Batches(data, self.batch_size, self.mesh, _PAIR_KEYS):
                pc, pr = jax.device_get(fn_p(policy[1], batch))
                rc, rr = jax.device_get(fn_r(reference[1], batch))
                wins.append(_win((pc - rc)[:n] - (pr - rr)[:n]))
        return float(np.mean(np.concatenate(wins)))

    def judge_margins(self, judge, rows: list[dict]) -> np.ndarray:
        """Judge's preference of ``chosen`` over ``rejected`` per row (> 0: chosen wins).

        A response the data pipeline cannot use (an empty sample) is not shown to the
        judge: it loses against a non-empty one (margin ∓inf), and two empty ones tie.
        """
        task = "preference" if self.ev.judge_kind == "reward_model" else "pairwise"
        data = self._prepare(rows, task, self.judge_tokenizer, on_bad_row="skip")
        fn = make_pair_rewards(judge[0]) if task == "preference" else make_pair_differences(judge[0])
        keys = _PAIR_KEYS if task == "preference" else _PAIRWISE_KEYS
        margins = np.array([_empty_margin(r) for r in rows], np.float64)
        with jax.set_mesh(self.mesh):
            for n, host, batch in _Batches(data, self.batch_size, self.mesh, keys):
                a, b = jax.device_get(fn(judge[1], batch))
                margin = a - b if task == "preference" else np.asarray(antisymmetric_difference(a, b))
                margins[host["row_id"][:n, 0]] = np.asarray(margin)[:n]
        return margins

    @property
    def judge_tokenizer(self):
        j = self.ev.judge
        return build_tokenizer(j, key="eval.judge") if (j.tokenizer or j.path) else self.tokenizer


def _is_empty(response: Any) -> bool:
    text = response[-1]["content"] if isinstance(response, list) and response else response
    return not str(text or "").strip()


def _empty_margin(row: dict) -> float:
    """The margin of a row the judge does not see: an empty response loses, two empty ones tie."""
    chosen, rejected = _is_empty(row["chosen"]), _is_empty(row["rejected"])
    return 0.0 if chosen == rejected else (-np.inf if chosen else np.inf)


def _win(margin: np.ndarray) -> np.ndarray:
    """1 where margin > 0, ½ on ties, 0 otherwise."""
    margin = np.asarray(margin, np.float64)
    return np.where(margin > 0, 1.0, np.where(margin == 0, 0.5, 0.0))


def format_table(results: dict) -> str:
    """A Markdown table: one row per model, one column per metric present."""
    rows = results["models"]
    cols = [k for k in METRICS if any(k in m for m in rows.values())]
    head = "| model | " + " | ".join(METRICS[c] for c in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join("" if c not in m else f"{m[c]:.4f}" for c in cols) + " |")
    notes = []
    if results.get("teacher"):
        notes.append(f"teacher: {results['teacher']}")
    if results.get("judge"):
        acc = f"; its held-out accuracy {results['judge_accuracy']:.3f}" if "judge_accuracy" in results else ""
        notes.append(f"judge: {results['judge']} ({results['judge_kind']}{acc})")
    if results.get("prompts"):
        notes.append(f"{results['prompts']} held-out prompts, {results['max_new_tokens']} new tokens, "
                     f"temperature {results['temperature']}, seed {results['seed']}")
    return "\n".join(lines + ([""] + notes if notes else []))


def run_eval(config: Config) -> dict:
    """Evaluate the policies; print the table, write the JSON (``eval.output``); return the results."""
    from jaxalign.train.locks import check_writable

    ev = config.eval
    start = time.perf_counter()
    check_writable(eval_output_path(config), key="eval.output", directory=False)  # before any model loads
    check_judge(config)
    ev_models = list(ev.models) or [named(config.model, "model")]
    evaluator = Evaluator(config)
    results: dict[str, Any] = {"models": {}, "teacher": config.teacher.path or config.teacher.preset,
                               "judge": ev.judge.path or ev.judge.preset, "judge_kind": ev.judge_kind if ev.judge.is_set() else ""}

    pref_data = None
    if config.eval_data:
        cfg = dataclasses.replace(evaluator.data_cfg, task="preference", path=config.eval_data)
        pref_data = prepare(config.eval_data, evaluator.tokenizer, cfg)
        results["eval_data"] = config.eval_data
    prompts, samplers, encoded = [], [], []
    teacher_sampler = None
    if ev.prompts:
        prompts = load_prompts(ev.prompts, limit=ev.limit)
        teacher_sampler = evaluator._sampler(named(config.teacher, "teacher"), "teacher")
        samplers = [evaluator._sampler(m, f"eval.models[{i}]" if ev.models else "model") for i, m in enumerate(ev_models)]
        # every prompt is checked against every context before any weights load
        encoded = [s.encode(prompts, ev.prompts) for s in [teacher_sampler] + samplers]
        results.update(prompts=len(prompts), max_new_tokens=ev.max_new_tokens, temperature=ev.temperature, seed=ev.seed)

    teacher = judge = None
    teacher_texts: list[str] = []
    sample_rows = [{"prompt_id": p["prompt_id"], "prompt": p["prompt"]} for p in prompts]
    if prompts:
        teacher_texts = evaluator.samples(teacher_sampler, prompts, encoded[0])
        teacher = (*nnx.split(teacher_sampler.model),)
        for r, t in zip(sample_rows, teacher_texts):
            r["teacher"] = t
        teacher_self = evaluator.sequence_logp_per_token(teacher, evaluator.sft_rows(teacher_sampler, prompts, teacher_texts))
        results["models"]["teacher"] = {"kl_to_teacher": 0.0, "teacher_logp_per_token": teacher_self}
    if ev.judge.is_set():
        judge = evaluator._load(ev.judge, "eval.judge", head="score")
        if pref_data is not None:
            rows_margin = evaluator.judge_margins(judge, load_table(config.eval_data))
            results["judge_accuracy"] = float(np.mean(_win(rows_margin)))
    reference = None
    if pref_data is not None:
        ref_spec = config.reference if config.reference.is_set() else config.model
        reference = evaluator._load(ref_spec, "reference" if config.reference.is_set() else "model") if ref_spec.is_set() else None

    for i, spec in enumerate(ev_models):
        metrics: dict[str, float] = {}
        sampler = samplers[i] if prompts else None
        if sampler is not None:
            sampler.load(evaluator.mesh)
            policy = nnx.split(sampler.model)
        else:
            policy = evaluator._load(spec, f"eval.models[{i}]" if ev.models else "model")
        if pref_data is not None and reference is not None:
            metrics["preference_accuracy"] = evaluator.preference_accuracy(policy, reference, pref_data)
        if prompts:
            texts = evaluator.samples(sampler, prompts, encoded[i + 1])
            for r, t in zip(sample_rows, texts):
                r[spec.name] = t
            metrics["kl_to_teacher"] = evaluator.kl_per_token(policy, teacher, evaluator.sft_rows(teacher_sampler, prompts, teacher_texts))
            metrics["teacher_logp_per_token"] = evaluator.sequence_logp_per_token(teacher, evaluator.sft_rows(sampler, prompts, texts))
            if judge is not None:
                margins = evaluator.judge_margins(judge, evaluator.pair_rows(sampler, prompts, texts, teacher_texts))
                metrics["win_rate_vs_teacher"] = float(np.mean(_win(margins)))
        results["models"][spec.name] = metrics
        if sampler is not None:
            sampler.model = None  # free the weights before the next policy

    if judge is not None and "teacher" in results["models"]:
        results["models"]["teacher"]["win_rate_vs_teacher"] = 0.5
    results["seconds"] = time.perf_counter() - start
    out = eval_output_path(config)
    if jax.process_index() == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, results)
        write_sidecar(out, eval_provenance(config))
        if sample_rows:
            write_rows_atomic(sample_rows, out.with_name(out.stem + "_samples.jsonl"))
        print(format_table(results))
    log.info("eval: wrote %s (%.1f s)", out, results["seconds"])
    return results
