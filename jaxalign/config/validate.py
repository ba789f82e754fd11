"""``validate``: every field's declared values (``check_fields``), then the checks that relate fields.

``validate`` only checks what the config alone decides (values, ranges,
combinations); whether a dataset has precomputed teacher log-probs and the like
is checked where the data is read.
"""

from __future__ import annotations

from typing import Optional

from jaxalign.config.fields import check_choice, check_fields
from jaxalign.config.presets import MODEL_PRESETS
from jaxalign.config.schema import STAGES, Config, ModelSpec
from jaxalign.data.errors import DataError
from jaxalign.errors import ConfigError

__all__ = ["validate"]


def _check_model(key: str, spec: ModelSpec, *, required: bool = False, what: str = "") -> None:
    if spec.path and spec.preset:
        raise ConfigError(f"{key}.path and {key}.preset are both set; give one (a checkpoint or a random-init preset)")
    if spec.preset:
        check_choice(f"{key}.preset", spec.preset, tuple(MODEL_PRESETS))
    if required and not spec.is_set():
        raise ConfigError(f"{key}.path (or {key}.preset) must be set{what}")


def _check_named_models(key: str, models, *, what: str) -> None:
    names = set()
    for i, m in enumerate(models):
        _check_model(f"{key}[{i}]", m, required=True)
        if not m.name:
            raise ConfigError(f"{key}[{i}].name must be set ({what})")
        if m.name in names:
            raise ConfigError(f"{key}[{i}].name={m.name!r} is used twice")
        names.add(m.name)


def _check_models(config: Config, stage: Optional[str]) -> None:
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
    _check_model("eval.judge", config.eval.judge)
    _check_named_models("generate.models", config.generate.models, what="it names the model's output")


def _check_loss(config: Config) -> None:
    """The objective: its data task, its own relational checks, and what the common terms need."""
    from jaxalign.objectives.registry import get_objective, objective_names, settings_of

    loss = config.loss
    spec = get_objective(loss.name)
    if config.data.task != spec.task:
        raise ConfigError(
            f"loss.name={loss.name!r} trains on data.task={spec.task!r} batches, but data.task={config.data.task!r}; "
            f"set data.task={spec.task}"
        )
    settings = settings_of(loss)
    if settings is not None and hasattr(settings, "check"):
        settings.check()
    if not spec.extra_terms:  # the spec says whether the kd / NLL terms apply: a weight it would ignore is refused
        for key, term in (("kd_weight", "a token-level distillation term"),
                          ("nll_weight", "an NLL term on the chosen responses")):
            if getattr(loss, key) > 0:
                takes = sorted(n for n in objective_names() if get_objective(n).extra_terms)
                raise ConfigError(
                    f"loss.{key}={getattr(loss, key)} adds {term}, which loss.name={loss.name!r} does not take "
                    f"(loss.kd_* and loss.nll_weight work with {', '.join(takes)}); set loss.{key}=0"
                )
    if loss.kd_weight > 0 and spec.extra_terms and not config.teacher.is_set():
        raise ConfigError(
            f"loss.kd_weight={loss.kd_weight} needs the teacher's token distributions: set teacher.path "
            "(they cannot come from precomputed log-probs)"
        )
    if loss.rdo.enabled and not spec.rdo:
        takes = [n for n in objective_names() if get_objective(n).rdo]
        raise ConfigError(
            f"loss.rdo.enabled=true weights preference pairs; loss.name={loss.name!r} does not take RDO weights "
            f"(it works with {', '.join(takes)})"
        )


def _check_run(config: Config) -> None:
    opt, tr = config.optimizer, config.train
    if config.data.batch_size % opt.grad_accum_steps:
        raise ConfigError(
            f"data.batch_size={config.data.batch_size} must divide by optimizer.grad_accum_steps={opt.grad_accum_steps}"
        )
    if tr.epochs == 0:
        if tr.steps < 1:
            raise ConfigError(f"train.steps={tr.steps} must be >= 1 (or set train.epochs)")
        if opt.warmup_steps >= tr.steps and opt.warmup_steps > 0:
            raise ConfigError(f"optimizer.warmup_steps={opt.warmup_steps} must be < train.steps={tr.steps}")
    if not tr.output_dir:
        raise ConfigError("train.output_dir must be set")
    mesh = config.mesh
    axes = {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}
    for axis, size in axes.items():
        if isinstance(size, bool) or not isinstance(size, int) or (size != -1 and size < 1):
            raise ConfigError(f"mesh.{axis}={size!r} must be a positive integer or -1 (= the remaining devices)")
    free = [a for a, s in axes.items() if s == -1]
    if len(free) > 1:
        raise ConfigError(f"only one mesh axis may be -1 (the remaining devices), got {', '.join('mesh.' + a for a in free)}")
    gen = config.generate
    if gen.mode == "pairs" and gen.models and len(gen.models) != 2:
        raise ConfigError(
            f"generate.mode='pairs' takes exactly two generate.models (chosen, rejected), got {len(gen.models)}"
        )


def validate(config: Config, stage: Optional[str] = None) -> Config:
    """Check every field's declared values and the relations between fields; returns ``config``.

    ``stage`` (prune | train | generate | score | eval) adds what that stage needs
    (e.g. ``data.path`` to train). Raises a one-line ``ConfigError`` naming the key.
    """
    if stage is not None:
        check_choice("stage", stage, STAGES)
    check_fields(config)
    _check_models(config, stage)
    try:
        config.data.validate()
    except DataError as e:
        raise ConfigError(str(e)) from None
    _check_loss(config)
    _check_run(config)
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
        _check_named_models("eval.models", ev.models, what="it names the table row")
    elif stage == "prune":
        pr = config.prune
        if not (pr.source or config.teacher.path):
            raise ConfigError("prune.source (or teacher.path) must be set: the checkpoint to prune")
        if not pr.output:
            raise ConfigError("prune.output must be set (the HF folder to write)")
        if not (pr.fraction or pr.hidden_fraction or pr.mlp_fraction or pr.heads_fraction or pr.params_fraction):
            raise ConfigError("prune: nothing to remove; set prune.fraction or a width fraction")
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
