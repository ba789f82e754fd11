"""Config sections of a training run: optimizer, run length, mesh, checkpoints, logging."""

from __future__ import annotations

from dataclasses import dataclass

from jaxalign.config.fields import setting

__all__ = ["CheckpointConfig", "LoggingConfig", "MeshConfig", "OptimizerConfig", "TrainConfig"]


@dataclass
class OptimizerConfig:
    """Optimizer and learning-rate schedule."""

    name: str = setting("adamw", choices=("adamw", "adafactor"))
    """adamw | adafactor."""

    lr: float = setting(5e-7, gt=0)
    """Peak learning rate."""

    weight_decay: float = setting(0.0, ge=0)
    """Decoupled weight decay."""

    b1: float = setting(0.9, ge=0, lt=1)
    """Adam β₁ (Adafactor: momentum; 0 = none)."""

    b2: float = setting(0.999, ge=0, lt=1)
    """Adam β₂ (Adafactor: decay rate of the second-moment estimate)."""

    eps: float = setting(1e-8, gt=0)
    """Adam ε."""

    schedule: str = setting("cosine", choices=("cosine", "linear", "constant"))
    """Decay after warmup: cosine | linear | constant."""

    warmup_steps: int = setting(0, ge=0, integer=True)
    """Linear warmup from 0 to ``lr`` over this many optimizer steps."""

    min_lr_ratio: float = setting(0.0, ge=0, le=1)
    """Final learning rate as a fraction of ``lr`` (cosine and linear)."""

    max_grad_norm: float = setting(1.0, ge=0)
    """Clip the global gradient norm to this; 0 = no clipping."""

    grad_accum_steps: int = setting(1, ge=1, integer=True)
    """Micro-batches per optimizer step; ``data.batch_size`` is split into this many."""

    freeze_embeddings: bool = False
    """Keep the token embeddings (and a tied head) fixed."""

    trainable: str = ""
    """Regex over parameter names (e.g. 'score' = only a scalar head, 'layers' = the decoder layers): only
    matching parameters train, the others get no gradient (their backward pass is skipped); "" = all."""


@dataclass
class TrainConfig:
    """Length of the run, outputs and run control."""

    steps: int = setting(1000, integer=True)
    """Optimizer steps to run (ignored when ``epochs`` > 0)."""

    epochs: int = setting(0, ge=0, integer=True)
    """Passes over the data; 0 = run ``steps`` steps."""

    seed: int = 0
    """Seed of parameter initialisation (presets, new heads) and dropout-free training randomness."""

    output_dir: str = "runs/default"
    """Folder for checkpoints, logs, the resolved config and the exported model."""

    log_every: int = setting(10, ge=1, integer=True)
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

    multihost: str = setting("auto", choices=("auto", "off", "on"))
    """jax.distributed.initialize: auto (when a cluster is detected) | off | on."""


@dataclass
class CheckpointConfig:
    """Orbax checkpoints (atomic, resumable, saved on preemption)."""

    every: int = setting(0, ge=0, integer=True)
    """Save every N optimizer steps; 0 = only at the end and on preemption."""

    keep: int = setting(3, ge=1, integer=True)
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
