"""Config sections of the pipeline stages: ``eval``, ``generate``, ``score``, ``prune`` and ``pipeline``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from jaxalign.config.fields import setting
from jaxalign.config.model import GenerateModel, ModelSpec
from jaxalign.models.prune import STRATEGIES as PRUNE_STRATEGIES

__all__ = ["EvalConfig", "GenerateConfig", "PipelineConfig", "PipelineStage", "PruneConfig", "STAGES", "ScoreConfig"]

STAGES = ("prune", "train", "generate", "score", "eval")
GENERATE_MODES = ("samples", "pairs")
JUDGE_KINDS = ("reward_model", "difference_model")


@dataclass
class EvalConfig:
    """Held-out evaluation: during training (``every``, ``batches``) and the ``eval`` stage (the rest)."""

    every: int = setting(0, ge=0, integer=True)
    """Evaluate every N optimizer steps; 0 = only at the end (when ``eval_data`` is set)."""

    batches: int = setting(0, ge=0, integer=True)
    """Batches per evaluation; 0 = the whole held-out split."""

    batch_size: int = setting(0, ge=0, integer=True)
    """Evaluation batch size; 0 = ``data.batch_size``."""

    models: List[GenerateModel] = field(default_factory=list)
    """``eval`` stage: the policies to evaluate, one table row each; [] = ``model`` (named "model")."""

    prompts: str = ""
    """``eval`` stage: held-out prompts for the sample-based metrics (KL to the teacher on the teacher's
    responses, teacher log-likelihood of the policy's samples, win rate); "" = only preference accuracy."""

    limit: int = setting(0, ge=0, integer=True)
    """Use only the first N held-out prompts; 0 = all."""

    max_new_tokens: int = setting(128, ge=1, integer=True)
    """Tokens per sampled response (teacher and policies)."""

    temperature: float = setting(0.7, ge=0)
    """Sampling temperature of the evaluation samples; 0 = greedy."""

    top_p: float = setting(1.0, gt=0, le=1)
    """Nucleus sampling mass of the evaluation samples; 1 = off."""

    seed: int = 1234
    """Seed of the evaluation samples (the same for every policy)."""

    judge: ModelSpec = field(default_factory=ModelSpec)
    """Reward or difference model that decides the win rate against the teacher; "" = no win rate."""

    judge_kind: str = setting("reward_model", choices=JUDGE_KINDS)
    """What the judge is: reward_model (scores each response) | difference_model (scores the pair)."""

    output: str = ""
    """Where the ``eval`` stage writes its results (JSON); "" = ``{train.output_dir}/eval.json``."""


@dataclass
class GenerateConfig:
    """The ``generate`` stage: sample responses with a KV cache (dSFT data, dDPO/daDPO pairs)."""

    prompts: str = ""
    """Prompt dataset (same sources as ``data.path``); "" = ``data.path``."""

    output: str = ""
    """Where to write the generated rows (``.jsonl`` or ``.parquet``)."""

    models: List[GenerateModel] = field(default_factory=list)
    """Models to sample from; [] = samples: [model], pairs: [teacher, model] (first = chosen, second = rejected)."""

    mode: str = setting("samples", choices=GENERATE_MODES)
    """samples: one response column per model | pairs: preference rows, chosen from the first model, rejected from the second."""

    max_new_tokens: int = setting(512, ge=1, integer=True)
    """Maximum generated tokens per response."""

    temperature: float = setting(0.7, ge=0)
    """Sampling temperature; 0 = greedy."""

    top_p: float = setting(1.0, gt=0, le=1)
    """Nucleus sampling mass; 1 = off."""

    top_k: int = setting(0, ge=0, integer=True)
    """Sample from the k most likely tokens; 0 = off."""

    batch_size: int = setting(32, ge=1, integer=True)
    """Prompts per generation batch."""

    seed: int = 0
    """Sampling seed; batch i uses seed + i, so a resumed run samples what an uninterrupted one would."""

    limit: int = setting(0, ge=0, integer=True)
    """Use only the first N prompts; 0 = all."""


@dataclass
class ScoreConfig:
    """The ``score`` stage: one pass over a dataset that writes precomputed columns."""

    input: str = ""
    """Dataset to score; "" = ``data.path``."""

    output: str = ""
    """Where to write the dataset with the new columns (``.jsonl`` or ``.parquet``)."""

    reference_logps: bool = True
    """Write the reference's sequence log-probs (then training does not load the reference)."""

    teacher_logps: bool = False
    """Write the teacher's sequence log-probs (needs ``teacher``; then daDPO does not load the teacher)."""

    teacher_top_k: int = setting(0, ge=0, integer=True)
    """Also write the teacher's k most likely next tokens (ids, temperature-1 log-probs) and the residual log-mass at
    every response token of both sides to ``<output stem>.teacher_topk.parquet`` beside the output, for token-level
    distillation without the teacher (``loss.kd_cache``); needs ``teacher``; 0 = off."""

    rdo_weights: bool = False
    """Write reward differences and RDO weights with the ``loss.rdo`` settings (source, transform, model)."""

    batch_size: int = setting(0, ge=0, integer=True)
    """Rows per scoring batch; 0 = ``data.batch_size``."""


@dataclass
class PruneConfig:
    """The ``prune`` stage: a smaller student from a checkpoint by removing decoder layers, channels or heads."""

    source: str = ""
    """Checkpoint to prune (HF folder, ``.gguf`` file, ``bundled:NAME`` or hub id); "" = ``teacher.path``."""

    output: str = ""
    """HF folder to write the pruned student to."""

    fraction: float = setting(0.2, ge=0, lt=1)
    """Fraction of the decoder layers to remove (the first and last layer are always kept); 0 = none."""

    strategy: str = setting("uniform", choices=PRUNE_STRATEGIES)
    """Which layers go: uniform (spread over the depth) | last (the deepest ones before the final layer) |
    importance (the ones whose skipping changes the next-token distributions least on the calibration prompts)."""

    hidden_fraction: float = setting(0.0, ge=0, lt=1)
    """Fraction of the hidden channels to remove (the least important on the calibration prompts)."""

    mlp_fraction: float = setting(0.0, ge=0, lt=1)
    """Fraction of the MLP channels to remove in every layer."""

    heads_fraction: float = setting(0.0, ge=0, lt=1)
    """Fraction of the attention heads to remove in every layer, in whole KV groups."""

    params_fraction: float = setting(0.0, ge=0, lt=1)
    """Remove this fraction of the parameters by width, picking the hidden/MLP/heads mix that changes the output least."""

    calibration: str = "asset:prompts_train.jsonl"
    """Prompts file for the importance pass (any ``generate.prompts`` file)."""

    calibration_size: int = setting(32, ge=1, integer=True)
    """Prompts of ``prune.calibration`` to measure importance on."""

    calibration_batch_size: int = setting(8, ge=1, integer=True)
    """Prompts per calibration batch."""


@dataclass
class PipelineStage:
    """One step of ``jaxalign pipeline``: a stage command with its own ``key=value`` overrides."""

    name: str = ""
    """Label shown in progress and in the timing table."""

    run: str = setting("train", choices=STAGES)
    """The stage: prune | train | generate | score | eval."""

    overrides: List[str] = field(default_factory=list)
    """``key=value`` overrides applied on top of the recipe for this stage (``${...}`` interpolation works)."""


@dataclass
class PipelineConfig:
    """``jaxalign pipeline``: stages run in order; a stage whose output exists is skipped."""

    stages: List[PipelineStage] = field(default_factory=list)
    """The stages, in order."""

    report: str = ""
    """Markdown report with the stage timings and the eval table; "" = ``{train.output_dir}/report.md``."""
