"""The thin training driver: set up from a `Config`, loop, checkpoint, log, export.

All math lives in the pure, jitted steps (`jaxalign.train.step`); this module
does the side effects: loading, data, the loop, signals, files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxalign.config.loader import load_config, to_yaml
from jaxalign.config.schema import Config, ConfigError
from jaxalign.data import DataError, prepare
from jaxalign.models import save_pretrained
from jaxalign.objectives import ObjectiveContext, get_objective, needs_model
from jaxalign.parallel import distributed
from jaxalign.parallel.mesh import make_mesh
from jaxalign.models.lora import has_lora, merge_lora
from jaxalign.train.build import build_model, build_model_config, build_policy, build_tokenizer, check_lora
from jaxalign.train.checkpointing import Checkpointer
from jaxalign.train.observability import MetricsLogger, format_metrics, plot_metrics, summary
from jaxalign.train.optimizer import build_optimizer, frozen_mask, init_optimizer_state
from jaxalign.train.preemption import PreemptionGuard
from jaxalign.train.provenance import source_digest
from jaxalign.train.step import GraphDefs, make_eval_step, make_loss_fn, make_train_step, policy_model

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; names the step, the rows of its batch and the last
    good checkpoint."""


@dataclasses.dataclass
class TrainResult:
    steps: int
    losses: list[float]  # the loss of every step run in this call, in order
    final_metrics: dict
    eval_metrics: dict
    output_dir: Path
    export_dir: Path | None
    preempted: bool = False
    compiles: int = 0


def _tokens(batch: dict) -> int:
    return int(sum((v != 0).sum() for k, v in batch.items() if k.endswith("segment_ids")))


def _check_batch_divisible(config: Config, mesh) -> None:
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    micro = config.data.batch_size // max(config.optimizer.grad_accum_steps, 1)
    if micro % shards:
        raise ConfigError(
            f"data.batch_size={config.data.batch_size} (per micro-batch {micro}) is not divisible by the batch "
            f"shards mesh.data x mesh.fsdp = {mesh.shape['data']} x {mesh.shape['fsdp']} = {shards}"
        )


def _check_columns(config: Config, spec, columns: set[str]) -> None:
    """Refuse, before any work, data that lacks what the objective needs."""
    path = config.data.path
    if config.loss.rdo.enabled and "rdo_weight" not in columns:
        raise DataError(f"{path}: loss.rdo.enabled needs an 'rdo_weight' column; write it with `jaxalign score`")
    for model in ("ref", "teacher"):
        pair = {f"{model}_chosen_logps", f"{model}_rejected_logps"}
        if len(pair & columns) == 1:
            raise DataError(f"{path}: column {sorted(pair - columns)[0]!r} is missing (its pair {sorted(pair & columns)[0]!r} is present)")
    if spec.task == "pairwise" and config.loss.difference_label_type != "binary":
        missing = [c for c in ("score_chosen", "score_rejected") if c not in columns]
        if missing:
            raise DataError(f"{path}: loss.difference_label_type={config.loss.difference_label_type!r} needs column(s) {missing}")
    if spec.head == "score" and config.data.packing:
        raise ConfigError(f"data.packing is not supported for loss.name={config.loss.name!r} (one score per row); set data.packing=false")


def _check_inputs_fit_model(config: Config, data, model_config, *, split: str = "data.path") -> None:
    """Refuse, before the first step, rows the model cannot read: longer than its context
    (``max_position_embeddings``: positions past it were never trained) or with token ids outside its
    vocabulary (a tokenizer that does not belong to the model). Names the row and the key."""
    ex = data.examples
    limit, vocab = model_config.max_position_embeddings, model_config.vocab_size
    for i in range(len(ex)):
        n = data.collator.example_length(i)
        if n > limit:
            raise DataError(f"{data.describe_row(int(ex.row_id[i]))}: {n} tokens exceed the model's context "
                            f"(max_position_embeddings={limit} in model.path's config.json); set data.max_length<={limit}")
    for i in range(len(ex)):
        seqs = [ex.prompt[i], ex.chosen[i]] + ([ex.rejected[i]] if ex.rejected is not None else [])
        top = max((int(a.max()) for a in seqs if len(a)), default=-1)
        if top >= vocab:
            raise DataError(f"{data.describe_row(int(ex.row_id[i]))}: token id {top} is outside the model's vocabulary "
                            f"(vocab_size={vocab}); model.tokenizer does not belong to model.path")


def _check_enough_rows(config: Config, data) -> None:
    if config.data.drop_remainder and len(data) < config.data.batch_size:
        raise DataError(f"{config.data.path}: {len(data)} training rows are fewer than one batch "
                        f"(data.batch_size={config.data.batch_size}); lower data.batch_size or add rows")


#: Written into the export folder: what made it (read by the pipeline to decide whether to skip training).
EXPORT_PROVENANCE = "jaxalign_provenance.json"
#: Files an export writes; anything else in an existing ``hf/`` is the user's, and is not replaced.
_EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                 "model-*.safetensors", "tokenizer*", "special_tokens_map.json", "vocab.json", "merges.txt",
                 "chat_template.*", "added_tokens.json", EXPORT_PROVENANCE)


def check_export_dir(folder: Path) -> None:
    """Refuse, before training, an export folder that holds files an export would not write (it is replaced whole)."""
    if folder.exists() and not folder.is_dir():
        raise DataError(f"train.output_dir: {folder} (the export folder) is a file")
    if folder.is_dir():
        ours = {p for pat in _EXPORT_FILES for p in folder.glob(pat)}
        foreign = sorted(p.name for p in folder.iterdir() if p not in ours)
        if foreign:
            raise DataError(f"{folder} holds files an export would delete ({', '.join(foreign[:3])}); move them, "
                            f"choose another train.output_dir, or set train.export_hf=false")


#: Config keys a resume may change (run length, logging, evaluation cadence, outputs, layout).
RESUME_ALLOWED = ("train.steps", "train.epochs", "train.log_every", "train.export_hf", "train.output_dir",
                  "train.stop_on_nonfinite", "logging.", "eval.", "eval_data", "checkpoint.", "mesh.", "generate.",
                  "score.", "prune.", "pipeline.", "data.ignore_provenance")


def run_provenance(config: Config) -> dict:
    """What a training run's values depend on besides its config: the training data's content and the
    fingerprints of the model folders it reads (``jaxalign.train.provenance``); saved in every
    checkpoint's meta and in the export."""
    from jaxalign.train.provenance import spec_fingerprint

    record = {"data.source": source_digest(config.data.path, split=config.data.split, data_files=config.data.data_files),
              "model": spec_fingerprint(config.model, seed=config.train.seed)}
    for key in ("reference", "teacher"):
        spec = getattr(config, key)
        if spec.is_set():
            record[key] = spec_fingerprint(spec, seed=config.train.seed)
    return record


#: What a changed provenance entry means, for the resume error.
_PROVENANCE_NAMES = {"data.source": "the content of data.path", "model": "the model at model.path",
                     "reference": "the model at reference.path", "teacher": "the model at teacher.path"}


def config_changes(recorded: dict, current: dict, *, ignore=()) -> list[tuple[str, object, object]]:
    """``provenance.diff`` of a recorded and the current flattened config, where a key the record lacks
    (a setting added to jaxalign after it was written) at its default is no change."""
    from jaxalign.train.provenance import diff, flatten

    defaults = flatten(yaml.safe_load(to_yaml(load_config(check=False))))
    return [(k, a, b) for k, a, b in diff(recorded, current, ignore=ignore)
            if k in recorded or diff({k: b}, {k: defaults.get(k)})]


def check_resume(config: Config, yaml_text: str, provenance: dict) -> None:
    """Refuse to resume a checkpoint whose run had another config (outside ``RESUME_ALLOWED``), other
    training data or other model files, unless ``checkpoint.allow_config_change``. Reads only small
    files of the newest committed step, so it runs before any model loads."""
    from jaxalign.train.checkpointing import committed_step_files
    from jaxalign.train.provenance import describe_diff, flatten

    if not config.checkpoint.resume or config.checkpoint.allow_config_change:
        return
    found = committed_step_files(config.checkpoint_dir)
    if found is None:
        return
    step, saved_yaml, meta = found
    hint = (f"use another train.output_dir to start a new run, or set checkpoint.allow_config_change=true to "
            f"continue from step {step} anyway")
    if saved_yaml is not None:
        changes = config_changes(flatten(yaml.safe_load(saved_yaml) or {}), flatten(yaml.safe_load(yaml_text)),
                                 ignore=RESUME_ALLOWED)
        if changes:
            raise ConfigError(f"resume from {config.checkpoint_dir} (step {step}): the config changed "
                              f"({describe_diff(changes)}); {hint}")
    recorded = (meta or {}).get("provenance") or {}
    for key, value in recorded.items():
        if provenance.get(key) != value:
            what = _PROVENANCE_NAMES.get(key, key)
            raise ConfigError(f"resume from {config.checkpoint_dir} (step {step}): {what} changed since the checkpoint "
                              f"was written; {hint}")


class Trainer:
    """Holds what a run needs; `run()` trains, `evaluate()` scores the held-out split."""

    def __init__(self, config: Config):
        self.config = config
        distributed.initialize(config.mesh.multihost)
        self.mesh = make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
        _check_batch_divisible(config, self.mesh)
        self.spec = get_objective(config.loss.name)
        data_cfg = dataclasses.replace(config.data, task=self.spec.task)
        self.tokenizer = build_tokenizer(config.model, key="model")
        self.data = prepare(data_cfg.path, self.tokenizer, data_cfg)
        self.eval_data = prepare(config.eval_data, self.tokenizer, dataclasses.replace(data_cfg, shuffle=False)) if config.eval_data else None
        columns = set(self.data.examples.extras)
        _check_columns(config, self.spec, columns)
        _check_enough_rows(config, self.data)
        model_config = build_model_config(config.model, key="model")
        check_lora(config.model.lora, model_config)
        _check_inputs_fit_model(config, self.data, model_config)
        if self.eval_data is not None:
            _check_inputs_fit_model(config, self.eval_data, model_config)
        from jaxalign.pipeline.score import attach_kd_cache, check_cached_columns

        check_cached_columns(config, columns, reference=config.reference if config.reference.is_set() else config.model,
                             teacher=config.teacher if config.teacher.is_set() else None)
        attach_kd_cache(config, self.spec, self.data, model_config.vocab_size)  # loss.kd_cache: KD without the teacher
        self.yaml_text = to_yaml(config)
        self.provenance = run_provenance(config)
        check_resume(config, self.yaml_text, self.provenance)
        if config.train.export_hf:
            check_export_dir(Path(config.export_dir))
        ctx = ObjectiveContext(config.loss, mesh=self.mesh if config.mesh.tensor > 1 else None,
                               use_rdo_weights=config.loss.rdo.enabled)
        with jax.set_mesh(self.mesh):
            built = build_policy(config, head=self.spec.head, mesh=self.mesh, seed=config.train.seed)
            policy, graphdef, params = built.model, built.graphdef, built.params
            frozen, graphdefs = ({"policy": built.base} if built.lora else {}), {"policy": graphdef}
            if needs_model(self.spec, "reference", config.loss, columns):
                if config.reference.path or config.reference.preset:
                    ref = build_model(config.reference, key="reference", mesh=self.mesh, seed=config.train.seed)
                    graphdefs["reference"], frozen["reference"] = nnx.split(ref)
                elif built.lora:  # the base model: the policy with its adapters disabled, no second copy
                    graphdefs["reference_is_base"] = True
                else:  # the policy's initial weights, in their own buffers (the policy's are donated)
                    graphdefs["reference"], frozen["reference"] = graphdef, jax.tree.map(jnp.copy, params)
            if needs_model(self.spec, "teacher", config.loss, columns):
                teacher = build_model(config.teacher, key="teacher", mesh=self.mesh, seed=config.train.seed)
                tv, sv = teacher.config.vocab_size, policy.config.vocab_size
                # Sequence log-probs only gather target ids, so one tokenizer's embedding tables padded to
                # different sizes (Qwen2.5-1.5B: 151936, -7B: 152064) are fine; full distributions are not.
                if tv < sv or (tv != sv and config.loss.kd_weight > 0):
                    raise ConfigError(
                        f"teacher vocabulary ({tv}) differs from the student's ({sv}): teacher and student must "
                        "share a tokenizer" + (" and, for token-level distillation (loss.kd_weight), its size"
                                                if tv >= sv else "")
                    )
                graphdefs["teacher"], frozen["teacher"] = nnx.split(teacher)
            self.graphdefs = GraphDefs(**graphdefs)
            self.frozen = frozen
            self.total_steps = self._total_steps()
            optimizer_config = built.optimizer_config(config.optimizer)
            self.tx, self.schedule = build_optimizer(optimizer_config, self.total_steps, params)
            replicated = NamedSharding(self.mesh, PartitionSpec())
            self.state = {
                "step": jax.device_put(jnp.zeros((), jnp.int32), replicated),
                "params": params,
                "opt_state": init_optimizer_state(self.tx, params, replicated),
                "rng": jax.device_put(jax.random.key_data(jax.random.key(config.train.seed)), replicated),
            }
        loss_fn = make_loss_fn(self.spec, ctx, self.graphdefs)
        self.train_step = make_train_step(loss_fn, self.tx, self.schedule, grad_accum_steps=config.optimizer.grad_accum_steps,
                                          state_shardings=jax.tree.map(lambda x: x.sharding, self.state),
                                          frozen_leaves=frozen_mask(params, optimizer_config))
        self.eval_step = make_eval_step(loss_fn)
        self.output_dir = Path(config.train.output_dir)
        self.is_main = jax.process_index() == 0

    def _total_steps(self) -> int:
        c = self.config
        if c.train.epochs > 0:
            per_epoch = len(self.data) // c.data.batch_size if c.data.drop_remainder else math.ceil(len(self.data) / c.data.batch_size)
            return c.train.epochs * per_epoch
        return c.train.steps

    def _batcher(self, data, *, num_epochs=None):
        return data.batcher(process_index=jax.process_index(), process_count=jax.process_count(), num_epochs=num_epochs)

    def _global(self, batch: dict) -> dict:
        arrays = {k: v for k, v in batch.items() if k != "row_id"}
        return distributed.global_batch(arrays, self.mesh)

    def evaluate(self) -> dict:
        """Mean metrics over the held-out split (or `eval.batches` of it)."""
        if self.eval_data is None:
            return {}
        totals, n = {}, 0
        for i, batch in enumerate(self._batcher(self.eval_data, num_epochs=1)):
            if self.config.eval.batches and i >= self.config.eval.batches:
                break
            metrics = jax.device_get(self.eval_step(self.state["params"], self.frozen, self._global(batch)))
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            n += 1
        return {k: v / max(n, 1) for k, v in totals.items()}

    def export(self) -> Path:
        """Write the policy to ``{output_dir}/hf`` with ``jaxalign_provenance.json`` (config, steps, data digest);
        LoRA adapters are merged into the weights (a plain HF folder)."""
        from jaxalign.train.provenance import flatten, write_record

        model = policy_model(self.graphdefs.policy, self.state["params"], self.frozen)
        if has_lora(model):
            model = merge_lora(model)
        out = save_pretrained(model, self.tokenizer, self.output_dir / "hf", overwrite=True)
        write_record(Path(out) / EXPORT_PROVENANCE, {"config": flatten(yaml.safe_load(self.yaml_text)),
                                                     "steps": self.total_steps, **self.provenance})
        return out

    def run(self) -> TrainResult:
        c = self.config
        yaml_text = self.yaml_text
        if self.is_main:
            print(yaml_text)
            self.output_dir.mkdir(parents=True, exist_ok=True)
        checkpoints = Checkpointer(c.checkpoint_dir, keep=c.checkpoint.keep, async_save=c.checkpoint.async_save,
                                   save_every=c.checkpoint.every)
        batches = self._batcher(self.data)
        start = 0
        if c.checkpoint.resume and checkpoints.latest_step() is not None:
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), self.state)
            self.state, meta = checkpoints.restore(None, abstract)
            batches.load_state_dict(meta["data"])
            start = int(meta["step"])
            log.info("resumed from step %d (%s)", start, checkpoints.step_dir(start))
        logger = MetricsLogger(self.output_dir, total_steps=self.total_steps, start_step=start, jsonl=c.logging.jsonl,
                               tensorboard=c.logging.tensorboard, progress_bar=c.logging.progress_bar, is_main_process=self.is_main)
        losses, last_metrics, eval_metrics, preempted = [], {}, {}, False
        pending = None  # (step, loss, grad norm, row ids): checked one step late so the host never waits on the device
        tokens = 0
        it = iter(batches)

        def check(pending_item):
            step, loss, grad_norm, rows = pending_item
            value, norm = float(loss), float(grad_norm)
            losses.append(value)
            if not (math.isfinite(value) and math.isfinite(norm)) and c.train.stop_on_nonfinite:
                described = ", ".join(self.data.describe_row(r) for r in rows[:8] if r >= 0)
                what = f"loss {value}" if not math.isfinite(value) else f"gradient norm {norm} (loss {value})"
                raise NonFiniteLossError(
                    f"non-finite {what} at step {step + 1}; batch rows: {described}; last good checkpoint: "
                    f"{checkpoints.step_dir(checkpoints.latest_step()) if checkpoints.latest_step() is not None else 'none'}"
                )

        try:
            with PreemptionGuard() as guard, jax.set_mesh(self.mesh):  # the decoder pins activations to it
                for step in range(start, self.total_steps):
                    batch = next(it)
                    tokens += _tokens(batch)
                    self.state, metrics = self.train_step(self.state, self.frozen, self._global(batch))
                    if pending is not None:
                        check(pending)
                    pending = (step, metrics["loss"], metrics["grad_norm"], batch["row_id"].reshape(-1))
                    done = step + 1
                    if done % c.train.log_every == 0 or done == self.total_steps:
                        last_metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                        logger.log(done, last_metrics, tokens=tokens)
                        tokens = 0
                    if c.eval.every and done % c.eval.every == 0 and done != self.total_steps:
                        with logger.pause():
                            eval_metrics = self.evaluate()
                        logger.log(done, eval_metrics, split="eval")
                    meta = {"step": done, "data": batches.state_dict(), "provenance": self.provenance}
                    if guard.should_stop(done):
                        check(pending)
                        pending = None
                        checkpoints.save(done, self.state, meta, yaml_text, force=True)
                        checkpoints.wait()
                        log.warning("stopped by %s at step %d; checkpoint saved", guard.signal_name, done)
                        preempted = True
                        break
                    if c.checkpoint.every and done % c.checkpoint.every == 0:
                        check(pending)
                        pending = None
                        with logger.pause():
                            checkpoints.save(done, self.state, meta, yaml_text)
                if pending is not None:
                    check(pending)
                if not preempted:
                    done = self.total_steps
                    if start < done:
                        checkpoints.save(done, self.state, {"step": done, "data": batches.state_dict(), "provenance": self.provenance}, yaml_text, force=True)
                    if self.eval_data is not None:
                        eval_metrics = self.evaluate()
                        logger.log(done, eval_metrics, split="eval")
        finally:
            checkpoints.wait()
            checkpoints.close()
            logger.close()
        export_dir = self.export() if c.train.export_hf and not preempted else None
        if self.is_main and c.logging.jsonl:
            jsonl = self.output_dir / "metrics.jsonl"
            if c.logging.plot:
                plot_metrics(jsonl, self.output_dir / "metrics.png")
            print(summary(jsonl, title=f"jaxalign {c.loss.name}", extra={"output": str(self.output_dir), "export": str(export_dir)}))
        return TrainResult(steps=start + len(losses), losses=losses, final_metrics=last_metrics, eval_metrics=eval_metrics,
                           output_dir=self.output_dir, export_dir=export_dir, preempted=preempted,
                           compiles=self.train_step._cache_size())


def train(config: Config) -> TrainResult:
    """Train under the exclusive lock of ``train.output_dir`` (a second run on it is refused)."""
    from jaxalign.train.locks import output_lock

    distributed.initialize(config.mesh.multihost)  # before anything (process_index) starts the backend
    if jax.process_index() != 0:
        return Trainer(config).run()
    with output_lock(config.train.output_dir, key="train.output_dir", directory=True):
        return Trainer(config).run()


__all__ = ["NonFiniteLossError", "TrainResult", "Trainer", "train", "format_metrics"]
