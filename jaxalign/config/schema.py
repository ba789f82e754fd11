"""The typed config: plain dataclasses whose defaults are the one base config.

Recipes in ``configs/`` hold only what differs from these defaults, and every
field can be overridden on the command line as ``section.key=value`` (see
``jaxalign.config.loader``). Each field carries a docstring (the string literal
under it); ``jaxalign.config.reference`` turns them into ``--help-config`` and
the README's config reference.

Fields with a fixed set of values are plain ``str`` fields listed in
``CHOICES``; ``validate`` refuses other values with the allowed list and the
closest match. ``validate`` only checks what the config alone decides
(values, ranges, combinations); whether a dataset has precomputed teacher
log-probs and the like is checked where the data is read.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from jaxalign.config.presets import MODEL_PRESETS
from jaxalign.data.config import FORMATS, TASKS, TRUNCATIONS, DataConfig
from jaxalign.data.errors import DataError
from jaxalign.models.decoder import LAYER_LOOPS
from jaxalign.models.prune import STRATEGIES as PRUNE_STRATEGIES
from jaxalign.ops.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS

__all__ = [
    "CHOICES",
    "LOSS_DATA_TASK",
    "STAGES",
    "CheckpointConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "GenerateConfig",
    "GenerateModel",
    "LoggingConfig",
    "LossConfig",
    "MeshConfig",
    "ModelSpec",
    "OptimizerConfig",
    "PipelineConfig",
    "PipelineStage",
    "PruneConfig",
    "RDOConfig",
    "ScoreConfig",
    "TrainConfig",
    "validate",
]


class ConfigError(ValueError):
    """A config value, key or file is wrong; the message is one line naming the key (and where it came from)."""


# --------------------------------------------------------------------------- sections


@dataclass
class ModelSpec:
    """A model to load (``path``) or build with random weights (``preset``)."""

    path: str = ""
    """Hugging Face model folder, ``.gguf`` file or hub id; "" = none (each section says what none means)."""

    preset: str = ""
    """Random-init preset for tests and benchmarks (see ``jaxalign.config.presets``); use instead of ``path``."""

    tokenizer: str = ""
    """Tokenizer folder or hub id; "" = the one that comes with ``path``."""

    dtype: str = "float32"
    """Compute dtype of activations and matmuls."""

    param_dtype: str = "float32"
    """Dtype of the stored (master) weights."""

    remat: str = "none"
    """Rematerialisation of each decoder layer in the backward pass: none | full | dots | save_all."""

    attention: str = "auto"
    """Attention implementation (``jaxalign.ops.attention``): auto picks the backend's fastest."""

    layer_loop: str = "scan"
    """Layers under one ``lax.scan`` (compiles like one layer) or unrolled (longer compiles)."""

    def is_set(self) -> bool:
        """True when the spec names a model (a path or a preset)."""
        return bool(self.path or self.preset)


@dataclass
class RDOConfig:
    """RDO: per-pair weights from predicted reward differences (computed offline by the ``score`` stage)."""

    enabled: bool = False
    """Weight each pair's loss by its RDO coefficient (needs an ``rdo_weight`` column; ``score`` writes it)."""

    source: str = "difference_model"
    """Where the reward difference d comes from: a pairwise difference model, a pointwise reward model, or the data's scores."""

    transform: str = "sigmoid"
    """d -> weight: sigmoid = σ(d/τ), linear = clip(d, 0, clip), exp = exp(d/τ)."""

    temperature: float = 1.0
    """τ of the sigmoid and exp transforms."""

    clip: float = 0.0
    """Upper bound on a weight before normalisation; 0 = none."""

    normalize: bool = True
    """Rescale the weights to mean 1 over the dataset (keeps the effective learning rate)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    """The scoring model (difference or reward model) the ``score`` stage runs; unused for source=dataset."""


@dataclass
class LossConfig:
    """The training objective and its coefficients."""

    name: str = "dpo"
    """Objective: sft | dpo | dadpo | kto | rrhf | reward_model | difference_model."""

    beta: float = 0.1
    """β of DPO, KTO and the IPO/hinge variants (inverse strength of the KL penalty to the reference)."""

    loss_type: str = "sigmoid"
    """DPO variant: sigmoid (DPO/cDPO) | ipo | hinge | robust."""

    label_smoothing: float = 0.0
    """ε: assumed probability that a preference label is flipped (sigmoid = cDPO, robust); must be < 0.5."""

    beta_ref: float = 0.1
    """daDPO β₁: weight of the KL to the reference."""

    beta_teacher: float = 0.1
    """daDPO β₂: weight of the KL to the teacher (0 = exactly DPO with β = beta_ref)."""

    kd_weight: float = 0.0
    """α: weight of the token-level distillation term against the teacher (0 = off; needs a teacher model)."""

    kd_divergence: str = "forward_kl"
    """Token-level divergence: forward_kl = KL(teacher‖policy) | reverse_kl = KL(policy‖teacher) | jsd."""

    kd_temperature: float = 1.0
    """Softmax temperature of both distributions in the distillation term."""

    kd_top_k: int = 0
    """Restrict the distillation term to the teacher's top-k tokens; 0 = the full vocabulary."""

    kd_jsd_lambda: float = 0.5
    """λ of the generalised JSD, in (0, 1)."""

    kd_on: str = "chosen"
    """Responses the distillation term runs on: chosen | rejected | both."""

    nll_weight: float = 0.0
    """γ: weight of an NLL (SFT) term on the chosen responses added to the preference loss."""

    router_aux_weight: float = 0.0
    """Weight of the policy's mixture-of-experts router load-balancing loss (transformers' `aux_loss`, logged as
    `router_aux_loss`) added to the loss of the LM-head objectives (sft, dpo, dadpo, rrhf, kto); 0 for dense models."""

    kto_desirable_weight: float = 1.0
    """KTO λ_D: weight of desirable examples."""

    kto_undesirable_weight: float = 1.0
    """KTO λ_U: weight of undesirable examples."""

    rrhf_nll_weight: float = 1.0
    """RRHF: weight of the NLL of the best response next to the ranking term."""

    difference_label_type: str = "binary"
    """Difference-model labels: binary (chosen ≻ rejected) | soft (P(chosen ≻ rejected)) | graded (a score difference)."""

    chunk_size: int = 256
    """Positions per chunk of the LM head and log-softmax: scored (response) positions packed across the rows
    of a batch shard (the vocab-parallel path: sequence positions per row); never full [batch, seq, vocab] logits."""

    rdo: RDOConfig = field(default_factory=RDOConfig)
    """RDO reward-difference weights of the pairs."""


@dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule."""

    name: str = "adamw"
    """adamw | adafactor."""

    lr: float = 5e-7
    """Peak learning rate."""

    weight_decay: float = 0.0
    """Decoupled weight decay."""

    b1: float = 0.9
    """Adam β₁ (Adafactor: momentum; 0 = none)."""

    b2: float = 0.999
    """Adam β₂ (Adafactor: decay rate of the second-moment estimate)."""

    eps: float = 1e-8
    """Adam ε."""

    schedule: str = "cosine"
    """Decay after warmup: cosine | linear | constant."""

    warmup_steps: int = 0
    """Linear warmup from 0 to ``lr`` over this many optimizer steps."""

    min_lr_ratio: float = 0.0
    """Final learning rate as a fraction of ``lr`` (cosine and linear)."""

    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this; 0 = no clipping."""

    grad_accum_steps: int = 1
    """Micro-batches per optimizer step; ``data.batch_size`` is split into this many."""

    freeze_embeddings: bool = False
    """Keep the token embeddings (and a tied head) fixed."""

    trainable: str = ""
    """Regex over parameter names (e.g. 'score' = only a scalar head, 'layers' = the decoder layers): only
    matching parameters train, the others get no gradient (their backward pass is skipped); "" = all."""


@dataclass
class TrainConfig:
    """Length of the run, outputs and run control."""

    steps: int = 1000
    """Optimizer steps to run (ignored when ``epochs`` > 0)."""

    epochs: int = 0
    """Passes over the data; 0 = run ``steps`` steps."""

    seed: int = 0
    """Seed of parameter initialisation (presets, new heads) and dropout-free training randomness."""

    output_dir: str = "runs/default"
    """Folder for checkpoints, logs, the resolved config and the exported model."""

    log_every: int = 10
    """Log metrics every N optimizer steps."""

    export_hf: bool = True
    """At the end, export the policy as a Hugging Face folder (``{output_dir}/hf``)."""

    stop_on_nonfinite: bool = True
    """Stop (keeping the last good checkpoint) when the loss or the gradient norm is NaN or infinite."""


@dataclass
class MeshConfig:
    """Device mesh: the batch is sharded over data×fsdp, parameters over fsdp and tensor."""

    data: int = -1
    """Data-parallel size; -1 = the devices the other axes leave."""

    fsdp: int = 1
    """Fully-sharded data-parallel size (parameters and optimizer state sharded)."""

    tensor: int = 1
    """Tensor-parallel size (attention heads, MLP width and vocabulary sharded)."""

    multihost: str = "auto"
    """jax.distributed.initialize: auto (when a cluster is detected) | off | on."""


@dataclass
class CheckpointConfig:
    """Orbax checkpoints (atomic, resumable, saved on preemption)."""

    every: int = 0
    """Save every N optimizer steps; 0 = only at the end and on preemption."""

    keep: int = 3
    """Number of most recent checkpoints kept."""

    async_save: bool = True
    """Write checkpoints in the background while training continues."""

    resume: bool = True
    """Resume from the latest checkpoint in ``dir`` when there is one."""

    dir: str = ""
    """Checkpoint folder; "" = ``{train.output_dir}/checkpoints``."""

    allow_config_change: bool = False
    """Resume even when the config differs from the checkpoint's in more than run length, logging,
    evaluation, checkpointing and mesh layout (or the training data changed); otherwise such a resume is refused."""


@dataclass
class LoggingConfig:
    """Where metrics go (all under ``train.output_dir``)."""

    jsonl: bool = True
    """Append metrics to ``metrics.jsonl``."""

    tensorboard: bool = True
    """Write TensorBoard event files (needs tensorboardX)."""

    progress_bar: bool = True
    """Show a tqdm progress bar on process 0."""

    plot: bool = True
    """Save loss/reward plots at the end (needs matplotlib)."""


@dataclass
class GenerateModel(ModelSpec):
    """A model of the ``generate`` stage: a ``ModelSpec`` with a name."""

    name: str = ""
    """Name of the model's output column(s) and of its rows' ``model`` field."""


@dataclass
class EvalConfig:
    """Held-out evaluation: during training (``every``, ``batches``) and the ``eval`` stage (the rest)."""

    every: int = 0
    """Evaluate every N optimizer steps; 0 = only at the end (when ``eval_data`` is set)."""

    batches: int = 0
    """Batches per evaluation; 0 = the whole held-out split."""

    batch_size: int = 0
    """Evaluation batch size; 0 = ``data.batch_size``."""

    models: List[GenerateModel] = field(default_factory=list)
    """``eval`` stage: the policies to evaluate, one table row each; [] = ``model`` (named "model")."""

    prompts: str = ""
    """``eval`` stage: held-out prompts for the sample-based metrics (KL to the teacher on the teacher's
    responses, teacher log-likelihood of the policy's samples, win rate); "" = only preference accuracy."""

    limit: int = 0
    """Use only the first N held-out prompts; 0 = all."""

    max_new_tokens: int = 128
    """Tokens per sampled response (teacher and policies)."""

    temperature: float = 0.7
    """Sampling temperature of the evaluation samples; 0 = greedy."""

    top_p: float = 1.0
    """Nucleus sampling mass of the evaluation samples; 1 = off."""

    seed: int = 1234
    """Seed of the evaluation samples (the same for every policy)."""

    judge: ModelSpec = field(default_factory=ModelSpec)
    """Reward or difference model that decides the win rate against the teacher; "" = no win rate."""

    judge_kind: str = "reward_model"
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

    mode: str = "samples"
    """samples: one response column per model | pairs: preference rows, chosen from the first model, rejected from the second."""

    max_new_tokens: int = 512
    """Maximum generated tokens per response."""

    temperature: float = 0.7
    """Sampling temperature; 0 = greedy."""

    top_p: float = 1.0
    """Nucleus sampling mass; 1 = off."""

    top_k: int = 0
    """Sample from the k most likely tokens; 0 = off."""

    batch_size: int = 32
    """Prompts per generation batch."""

    seed: int = 0
    """Sampling seed; batch i uses seed + i, so a resumed run samples what an uninterrupted one would."""

    limit: int = 0
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

    rdo_weights: bool = False
    """Write reward differences and RDO weights with the ``loss.rdo`` settings (source, transform, model)."""

    batch_size: int = 0
    """Rows per scoring batch; 0 = ``data.batch_size``."""


@dataclass
class PruneConfig:
    """The ``prune`` stage: a smaller student from a checkpoint by removing decoder layers, channels or heads."""

    source: str = ""
    """Checkpoint to prune (HF folder, ``.gguf`` file, ``bundled:NAME`` or hub id); "" = ``teacher.path``."""

    output: str = ""
    """HF folder to write the pruned student to."""

    fraction: float = 0.2
    """Fraction of the decoder layers to remove (the first and last layer are always kept); 0 = none."""

    strategy: str = "uniform"
    """Which layers go: uniform (spread over the depth) | last (the deepest ones before the final layer) |
    importance (the ones whose skipping changes the next-token distributions least on the calibration prompts)."""

    hidden_fraction: float = 0.0
    """Fraction of the hidden channels to remove (the least important on the calibration prompts)."""

    mlp_fraction: float = 0.0
    """Fraction of the MLP channels to remove in every layer."""

    heads_fraction: float = 0.0
    """Fraction of the attention heads to remove in every layer, in whole KV groups."""

    params_fraction: float = 0.0
    """Remove this fraction of the parameters by width, picking the hidden/MLP/heads mix that changes the output least."""

    calibration: str = "asset:prompts_train.jsonl"
    """Prompts file for the importance pass (any ``generate.prompts`` file)."""

    calibration_size: int = 32
    """Prompts of ``prune.calibration`` to measure importance on."""

    calibration_batch_size: int = 8
    """Prompts per calibration batch."""


@dataclass
class PipelineStage:
    """One step of ``jaxalign pipeline``: a stage command with its own ``key=value`` overrides."""

    name: str = ""
    """Label shown in progress and in the timing table."""

    run: str = "train"
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


@dataclass
class Config:
    """Everything a jaxalign run reads: one object per stage of the pipeline."""

    model: ModelSpec = field(default_factory=ModelSpec)
    """The policy (the model being trained)."""

    reference: ModelSpec = field(default_factory=ModelSpec)
    """Frozen reference; path "" and preset "" = the policy's initial weights."""

    teacher: ModelSpec = field(default_factory=ModelSpec)
    """Frozen teacher for daDPO and distillation; path "" and preset "" = no teacher."""

    data: DataConfig = field(default_factory=DataConfig)
    """Training data and batching."""

    eval_data: str = ""
    """Held-out split to evaluate on (same sources as ``data.path``); "" = no evaluation."""

    eval: EvalConfig = field(default_factory=EvalConfig)
    """When and how much to evaluate."""

    loss: LossConfig = field(default_factory=LossConfig)
    """Objective."""

    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer and schedule."""

    train: TrainConfig = field(default_factory=TrainConfig)
    """Run length and outputs."""

    mesh: MeshConfig = field(default_factory=MeshConfig)
    """Device mesh."""

    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpointing."""

    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Metric sinks."""

    generate: GenerateConfig = field(default_factory=GenerateConfig)
    """``generate`` stage."""

    score: ScoreConfig = field(default_factory=ScoreConfig)
    """``score`` stage."""

    prune: PruneConfig = field(default_factory=PruneConfig)
    """``prune`` stage."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    """``jaxalign pipeline``: the stages of a recipe."""

    @property
    def checkpoint_dir(self) -> str:
        """``checkpoint.dir`` with its default (``{train.output_dir}/checkpoints``) applied."""
        return self.checkpoint.dir or f"{self.train.output_dir.rstrip('/')}/checkpoints"

    @property
    def export_dir(self) -> str:
        """Where ``train.export_hf`` writes the Hugging Face folder: ``{train.output_dir}/hf``."""
        return f"{self.train.output_dir.rstrip('/')}/hf"

    @property
    def eval_batch_size(self) -> int:
        """``eval.batch_size`` with its default (``data.batch_size``) applied."""
        return self.eval.batch_size or self.data.batch_size

    @property
    def score_batch_size(self) -> int:
        """``score.batch_size`` with its default (``data.batch_size``) applied."""
        return self.score.batch_size or self.data.batch_size


# --------------------------------------------------------------------------- choices

MODEL_DTYPES = ("float32", "bfloat16")
REMAT_POLICIES = ("none", "full", "dots", "save_all")
LOSS_NAMES = ("sft", "dpo", "dadpo", "kto", "rrhf", "reward_model", "difference_model")
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")
KD_DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")
KD_ON = ("chosen", "rejected", "both")
DIFFERENCE_LABEL_TYPES = ("binary", "soft", "graded")
RDO_SOURCES = ("difference_model", "reward_model", "dataset")
RDO_TRANSFORMS = ("sigmoid", "linear", "exp")
OPTIMIZERS = ("adamw", "adafactor")
SCHEDULES = ("cosine", "linear", "constant")
MULTIHOST = ("auto", "off", "on")
GENERATE_MODES = ("samples", "pairs")
STAGES = ("prune", "train", "generate", "score", "eval")
JUDGE_KINDS = ("reward_model", "difference_model")

_MODEL_CHOICES = {"dtype": MODEL_DTYPES, "param_dtype": MODEL_DTYPES, "remat": REMAT_POLICIES,
                  "attention": ATTENTION_IMPLEMENTATIONS, "layer_loop": LAYER_LOOPS}

#: class -> {field: allowed values}; every fixed-choice ``str`` field of the schema.
CHOICES: Dict[type, Dict[str, Tuple[str, ...]]] = {
    ModelSpec: _MODEL_CHOICES,
    GenerateModel: _MODEL_CHOICES,
    DataConfig: {
        "format": tuple(FORMATS),
        "task": tuple(TASKS),
        "truncation": tuple(TRUNCATIONS),
        "on_bad_row": ("error", "skip"),
    },
    LossConfig: {
        "name": LOSS_NAMES,
        "loss_type": DPO_LOSS_TYPES,
        "kd_divergence": KD_DIVERGENCES,
        "kd_on": KD_ON,
        "difference_label_type": DIFFERENCE_LABEL_TYPES,
    },
    RDOConfig: {"source": RDO_SOURCES, "transform": RDO_TRANSFORMS},
    OptimizerConfig: {"name": OPTIMIZERS, "schedule": SCHEDULES},
    MeshConfig: {"multihost": MULTIHOST},
    GenerateConfig: {"mode": GENERATE_MODES},
    EvalConfig: {"judge_kind": JUDGE_KINDS},
    PruneConfig: {"strategy": PRUNE_STRATEGIES},
    PipelineStage: {"run": STAGES},
}

#: loss.name -> the data.task its batches need.
LOSS_DATA_TASK = {
    "sft": "sft",
    "dpo": "preference",
    "dadpo": "preference",
    "rrhf": "preference",
    "reward_model": "preference",
    "kto": "kto",
    "difference_model": "pairwise",
}

#: Losses that can take RDO per-pair weights.
RDO_LOSSES = ("dpo", "dadpo", "kto", "rrhf")


# --------------------------------------------------------------------------- validation


def closest(value: Any, allowed, cutoff: float = 0.5) -> Optional[str]:
    """The allowed value closest to ``value`` (difflib), or None."""
    found = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=cutoff)
    return found[0] if found else None


def check_choice(key: str, value: Any, allowed) -> None:
    """Refuse ``value`` unless it is one of ``allowed``; the message lists them and the closest match."""
    if value in allowed:
        return
    near = closest(value, allowed)
    hint = f"; did you mean {near!r}?" if near else ""
    raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}{hint}")


def _check_choices(obj: Any, prefix: str) -> None:
    """Check every fixed-choice field of ``obj`` and, recursively, of its sections."""
    choices = CHOICES.get(type(obj), {})
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if f.name in choices:
            check_choice(key, value, choices[f.name])
        elif dataclasses.is_dataclass(value):
            _check_choices(value, key + ".")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_choices(item, f"{key}[{i}].")


def _number(key: str, value: Any, *, low=None, high=None, low_open=False, high_open=False, integer=False) -> None:
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        raise ConfigError(f"{key}={value!r} must be {kind}")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
        raise ConfigError(f"{key}={value!r} must be {' and '.join(p for p in (lo, hi) if p)}")


def _check_model(key: str, spec: ModelSpec, *, required: bool = False, what: str = "") -> None:
    if spec.path and spec.preset:
        raise ConfigError(f"{key}.path and {key}.preset are both set; give one (a checkpoint or a random-init preset)")
    if spec.preset:
        check_choice(f"{key}.preset", spec.preset, tuple(MODEL_PRESETS))
    if required and not spec.is_set():
        raise ConfigError(f"{key}.path (or {key}.preset) must be set{what}")


def validate(config: Config, stage: Optional[str] = None) -> Config:
    """Check values and cross-field constraints the config alone decides; returns ``config``.

    ``stage`` (train | generate | score | eval) adds what that stage needs
    (e.g. ``data.path`` to train). Raises ``ConfigError`` naming the key.
    """
    if stage is not None:
        check_choice("stage", stage, STAGES)
    _check_choices(config, "")

    # models
    model_optional = (
        (stage == "generate" and bool(config.generate.models))
        or (stage == "eval" and bool(config.eval.models))
        or stage == "prune"
    )
    _check_model(
        "model", config.model, required=not model_optional, what=" (a Hugging Face folder, .gguf file, hub id or preset)"
    )
    _check_model("reference", config.reference)
    _check_model("teacher", config.teacher)
    _check_model("loss.rdo.model", config.loss.rdo.model)
    names = set()
    for i, m in enumerate(config.generate.models):
        _check_model(f"generate.models[{i}]", m, required=True)
        if not m.name:
            raise ConfigError(f"generate.models[{i}].name must be set (it names the model's output)")
        if m.name in names:
            raise ConfigError(f"generate.models[{i}].name={m.name!r} is used twice")
        names.add(m.name)

    # data
    try:
        config.data.validate()
    except DataError as e:
        raise ConfigError(str(e)) from None
    loss = config.loss
    task = LOSS_DATA_TASK[loss.name]
    if config.data.task != task:
        raise ConfigError(
            f"loss.name={loss.name!r} trains on data.task={task!r} batches, but data.task={config.data.task!r}; "
            f"set data.task={task}"
        )

    # loss
    _number("loss.beta", loss.beta, low=0, low_open=True)
    _number("loss.label_smoothing", loss.label_smoothing, low=0, high=0.5, high_open=True)
    if loss.label_smoothing > 0 and loss.loss_type not in ("sigmoid", "robust"):
        raise ConfigError(
            f"loss.label_smoothing={loss.label_smoothing} is only used by loss.loss_type sigmoid or robust, "
            f"not {loss.loss_type!r}"
        )
    _number("loss.beta_ref", loss.beta_ref, low=0, low_open=True)
    _number("loss.beta_teacher", loss.beta_teacher, low=0)
    _number("loss.kd_weight", loss.kd_weight, low=0)
    _number("loss.kd_temperature", loss.kd_temperature, low=0, low_open=True)
    _number("loss.kd_top_k", loss.kd_top_k, low=0, integer=True)
    if loss.kd_divergence == "jsd":
        _number("loss.kd_jsd_lambda", loss.kd_jsd_lambda, low=0, high=1, low_open=True, high_open=True)
    if loss.kd_weight > 0 and not config.teacher.is_set():
        raise ConfigError(
            f"loss.kd_weight={loss.kd_weight} needs the teacher's token distributions: set teacher.path "
            "(they cannot come from precomputed log-probs)"
        )
    _number("loss.nll_weight", loss.nll_weight, low=0)
    _number("loss.router_aux_weight", loss.router_aux_weight, low=0)
    _number("loss.kto_desirable_weight", loss.kto_desirable_weight, low=0)
    _number("loss.kto_undesirable_weight", loss.kto_undesirable_weight, low=0)
    _number("loss.rrhf_nll_weight", loss.rrhf_nll_weight, low=0)
    _number("loss.chunk_size", loss.chunk_size, low=1, integer=True)
    rdo = loss.rdo
    _number("loss.rdo.temperature", rdo.temperature, low=0, low_open=True)
    _number("loss.rdo.clip", rdo.clip, low=0)
    if rdo.enabled and loss.name not in RDO_LOSSES:
        raise ConfigError(
            f"loss.rdo.enabled=true weights preference pairs; loss.name={loss.name!r} does not take RDO weights "
            f"(it works with {', '.join(RDO_LOSSES)})"
        )

    # optimizer
    opt = config.optimizer
    _number("optimizer.lr", opt.lr, low=0, low_open=True)
    _number("optimizer.weight_decay", opt.weight_decay, low=0)
    _number("optimizer.b1", opt.b1, low=0, high=1, high_open=True)
    _number("optimizer.b2", opt.b2, low=0, high=1, high_open=True)
    _number("optimizer.eps", opt.eps, low=0, low_open=True)
    _number("optimizer.warmup_steps", opt.warmup_steps, low=0, integer=True)
    _number("optimizer.min_lr_ratio", opt.min_lr_ratio, low=0, high=1)
    _number("optimizer.max_grad_norm", opt.max_grad_norm, low=0)
    _number("optimizer.grad_accum_steps", opt.grad_accum_steps, low=1, integer=True)
    if config.data.batch_size % opt.grad_accum_steps:
        raise ConfigError(
            f"data.batch_size={config.data.batch_size} must divide by optimizer.grad_accum_steps={opt.grad_accum_steps}"
        )

    # train, eval, checkpoint
    tr = config.train
    _number("train.epochs", tr.epochs, low=0, integer=True)
    if tr.epochs == 0:
        _number("train.steps", tr.steps, low=1, integer=True)
        if opt.warmup_steps >= tr.steps and opt.warmup_steps > 0:
            raise ConfigError(
                f"optimizer.warmup_steps={opt.warmup_steps} must be < train.steps={tr.steps}"
            )
    _number("train.log_every", tr.log_every, low=1, integer=True)
    if not tr.output_dir:
        raise ConfigError("train.output_dir must be set")
    _number("eval.every", config.eval.every, low=0, integer=True)
    _number("eval.batches", config.eval.batches, low=0, integer=True)
    _number("eval.batch_size", config.eval.batch_size, low=0, integer=True)
    _number("checkpoint.every", config.checkpoint.every, low=0, integer=True)
    _number("checkpoint.keep", config.checkpoint.keep, low=1, integer=True)

    # mesh
    mesh = config.mesh
    axes = {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}
    for axis, size in axes.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size != -1 and size < 1):
            raise ConfigError(f"mesh.{axis}={size!r} must be a positive integer or -1 (= the remaining devices)")
    free = [a for a, s in axes.items() if s == -1]
    if len(free) > 1:
        raise ConfigError(f"only one mesh axis may be -1 (the remaining devices), got {', '.join('mesh.' + a for a in free)}")

    # generate, score
    gen = config.generate
    _number("generate.max_new_tokens", gen.max_new_tokens, low=1, integer=True)
    _number("generate.temperature", gen.temperature, low=0)
    _number("generate.top_p", gen.top_p, low=0, high=1, low_open=True)
    _number("generate.top_k", gen.top_k, low=0, integer=True)
    _number("generate.batch_size", gen.batch_size, low=1, integer=True)
    if gen.mode == "pairs" and gen.models and len(gen.models) != 2:
        raise ConfigError(
            f"generate.mode='pairs' takes exactly two generate.models (chosen, rejected), got {len(gen.models)}"
        )
    _number("score.batch_size", config.score.batch_size, low=0, integer=True)
    _number("generate.limit", gen.limit, low=0, integer=True)
    ev = config.eval
    _number("eval.limit", ev.limit, low=0, integer=True)
    _number("eval.max_new_tokens", ev.max_new_tokens, low=1, integer=True)
    _number("eval.temperature", ev.temperature, low=0)
    _number("eval.top_p", ev.top_p, low=0, high=1, low_open=True)
    _check_model("eval.judge", ev.judge)

    if stage is not None:
        _check_stage(config, stage)
    return config


def _check_stage(config: Config, stage: str) -> None:
    if stage == "train":
        if not config.data.path and not config.data.data_files:
            raise ConfigError("data.path must be set to train (e.g. data.path=prefs.jsonl on the command line)")
    elif stage == "eval":
        ev = config.eval
        if not (config.eval_data or ev.prompts):
            raise ConfigError(
                "eval has nothing to do: set eval_data (held-out preference pairs) and/or eval.prompts (held-out prompts)"
            )
        if ev.prompts and not config.teacher.is_set():
            raise ConfigError("eval.prompts compares policies with the teacher: set teacher.path")
        names = set()
        for i, m in enumerate(ev.models):
            _check_model(f"eval.models[{i}]", m, required=True)
            if not m.name or m.name in names:
                raise ConfigError(f"eval.models[{i}].name={m.name!r} must be set and unique (it names the table row)")
            names.add(m.name)
    elif stage == "prune":
        pr = config.prune
        if not (pr.source or config.teacher.path):
            raise ConfigError("prune.source (or teacher.path) must be set: the checkpoint to prune")
        if not pr.output:
            raise ConfigError("prune.output must be set (the HF folder to write)")
        _number("prune.fraction", pr.fraction, low=0, high=1, low_open=False, high_open=True)
        for key in ("hidden_fraction", "mlp_fraction", "heads_fraction", "params_fraction"):
            _number(f"prune.{key}", getattr(pr, key), low=0, high=1, low_open=False, high_open=True)
        if not (pr.fraction or pr.hidden_fraction or pr.mlp_fraction or pr.heads_fraction or pr.params_fraction):
            raise ConfigError("prune: nothing to remove; set prune.fraction or a width fraction")
        if pr.calibration_size < 1 or pr.calibration_batch_size < 1:
            raise ConfigError("prune.calibration_size and prune.calibration_batch_size must be at least 1")
    elif stage == "generate":
        gen = config.generate
        if not gen.output:
            raise ConfigError("generate.output must be set (a .jsonl or .parquet file to write)")
        if not (gen.prompts or config.data.path):
            raise ConfigError("generate.prompts (or data.path) must be set")
        if gen.mode == "pairs" and not gen.models and not config.teacher.is_set():
            raise ConfigError(
                "generate.mode='pairs' with no generate.models samples chosen from the teacher: set teacher.path"
            )
    elif stage == "score":
        sc = config.score
        if not sc.output:
            raise ConfigError("score.output must be set (a .jsonl or .parquet file to write)")
        if not (sc.input or config.data.path):
            raise ConfigError("score.input (or data.path) must be set")
        if not (sc.reference_logps or sc.teacher_logps or sc.rdo_weights):
            raise ConfigError("score has nothing to do: set score.reference_logps, score.teacher_logps or score.rdo_weights")
        if sc.teacher_logps and not config.teacher.is_set():
            raise ConfigError("score.teacher_logps=true needs teacher.path")
        rdo = config.loss.rdo
        if sc.rdo_weights and rdo.source != "dataset" and not rdo.model.is_set():
            raise ConfigError(
                f"score.rdo_weights=true with loss.rdo.source={rdo.source!r} needs loss.rdo.model.path (the scoring model)"
            )
