"""Memory and FLOPs plan of a recipe's train step, compiled ahead of time from config.json files alone.

No weight is loaded or allocated: models are built under ``nnx.eval_shape``, every array of the step
(parameters, optimizer state, frozen reference/teacher, one batch) is a ``jax.ShapeDtypeStruct``
carrying its sharding on the mesh the recipe's ``mesh.*`` keys give for N devices, and the step the
trainer would run (``jaxalign.train.step.make_train_step``) is lowered and compiled for them.

Per device: parameter, optimizer-state and frozen-model bytes are the shard sizes of those arrays;
``temp`` is XLA's temporary buffers (``memory_analysis``). FLOPs per step come from XLA's
``cost_analysis``, which counts a loop body once: the layer scan would be counted as one layer. So
FLOPs are measured on small single-device compiles with the layers *unrolled*: all models at 1
layer, then each architecture at 2 layers; per-layer FLOPs are the differences, and the step's
FLOPs ``F(1) + sum_g (L_g - 1) * (F_g(2) - F(1))`` (the whole batch as one micro-batch: gradient
accumulation changes memory, not FLOPs). The analytic figure ``6·N·tokens + 2·N_frozen·tokens`` is printed next
to it (N: parameters used in matmuls; tokens: chosen + rejected positions).

With ``loss.kd_cache`` and ``loss.kd_weight`` > 0 the batch carries the cached teacher's top-k arrays of the
``loss.kd_on`` sides (``{side}_topk_ids``/``_logps`` ``[B, T, k]``, ``{side}_topk_residual`` ``[B, T]``), k from
the cache's metadata or, before scoring, ``score.teacher_top_k``; the teacher is planned only if
``needs_model`` says the trainer would load it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxalign.config.loss import kd_sides
from jaxalign.config.presets import preset_hf_config
from jaxalign.config.schema import Config, ConfigError, ModelSpec
from jaxalign.data import kd_cache
from jaxalign.data.collate import Collator, Examples
from jaxalign.models import ModelConfig, init_model
from jaxalign.models.lora import LoraSpec, add_lora, split_trainable
from jaxalign.objectives import ObjectiveContext, get_objective, needs_model
from jaxalign.objectives.dadpo import TEACHER_COLUMNS
from jaxalign.objectives.dpo import REFERENCE_COLUMNS
from jaxalign.parallel.distributed import batch_sharding
from jaxalign.parallel.mesh import make_mesh
from jaxalign.parallel.sharding import param_name, param_sharding
from jaxalign.train.build import lora_optimizer_config, lora_spec, lora_trained_base
from jaxalign.train.optimizer import build_optimizer, frozen_mask, optimizer_state_shardings
from jaxalign.train.step import GraphDefs, make_loss_fn, make_train_step

#: Precomputed log-prob columns that stand in for a frozen model (``jaxalign score`` writes them).
CACHED_COLUMNS = {"reference": REFERENCE_COLUMNS, "teacher": TEACHER_COLUMNS}
GIB = 2**30


@dataclasses.dataclass
class TrainPlan:
    devices: int
    mesh: dict[str, int]
    per_device_bytes: dict[str, int]  # params, optimizer, frozen, batch, temp, total
    param_counts: dict[str, int]  # per model in the step: policy, reference, teacher
    flops_per_step: float  # whole step, all devices
    flops_analytic: float  # 6·N·tokens + 2·N_frozen·tokens
    tokens_per_step: int
    xla_argument_bytes: int  # XLA's own per-device argument size, a cross-check of params+optimizer+frozen+batch
    compile_seconds: float
    flops_seconds: float
    settings: dict[str, Any]  # what was planned: batch, length, grad_accum, remat, dtypes, cached models
    suggestions: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------ abstract models and arrays

def _hf_dict(spec: ModelSpec, key: str) -> tuple[dict, str]:
    """The HF config dict a model spec names (its config.json or preset) and where it came from."""
    from jaxalign.models.resolve import resolve_model_path

    if spec.path:
        folder = resolve_model_path(spec.path)
        file = folder / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"{folder}: no config.json ({key}.path)")
        return json.loads(file.read_text()), str(file)
    if spec.preset:
        return preset_hf_config(spec.preset), f"preset {spec.preset!r}"
    raise ConfigError(f"{key}.path or {key}.preset must be set")


def abstract_model(spec: ModelSpec, key: str, *, head: str = "lm", layers: int | None = None,
                   layer_loop: str | None = None, lora: LoraSpec | None = None):
    """``(graphdef, state, ModelConfig)`` of the model ``spec`` names, every leaf abstract (nothing allocated).
    ``layers`` overrides ``num_hidden_layers`` (the FLOPs compiles); ``lora``: with those adapters."""
    hf, source = _hf_dict(spec, key)
    if layers is not None:
        hf = {**hf, "num_hidden_layers": layers}
    config = ModelConfig.from_hf_dict(hf, source=source)
    def make():
        model = init_model(config, dtype=spec.dtype, param_dtype=spec.param_dtype, remat=spec.remat, head=head,
                           attention=spec.attention, layer_loop=layer_loop or spec.layer_loop)
        return model if lora is None else add_lora(model, lora)

    model = nnx.eval_shape(make)
    graphdef, state = nnx.split(model)
    return graphdef, state, config


def place(state, mesh):
    """Abstract state -> the same tree of ``ShapeDtypeStruct``s with each parameter's sharding on ``mesh``."""
    def one(path, v):
        sharding = param_sharding(v, mesh, name=param_name(path))
        return v.replace(jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding))

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ``ShapeDtypeStruct``s (the largest shard per leaf)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = x.sharding.shard_shape(x.shape) if getattr(x, "sharding", None) is not None else x.shape
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def matmul_params(state, config: ModelConfig) -> int:
    """Parameters used in matmuls: all but the input embedding when the LM head is separate."""
    n = count(state)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    return n if tied else n - config.vocab_size * config.hidden_size


def optimizer_state(tx, params, replicated):
    """Abstract optimizer state, sharded as the trainer places it (`optimizer_state_shardings`)."""
    shapes = jax.eval_shape(tx.init, params)
    shardings = optimizer_state_shardings(tx, params, replicated)
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def kd_cache_k(config: Config) -> int | None:
    """k of the cached teacher distributions the run trains from (None without ``loss.kd_cache`` or KD term):
    the cache file's metadata when it exists (the table is not read), else ``score.teacher_top_k`` (planning
    before scoring). ``ConfigError`` when neither gives it, ``loss.kd_top_k`` exceeds it, or the run's other
    settings cannot train from a cache (``kd_cache.check_settings``), as training would refuse."""
    loss = config.loss
    if not loss.kd_cache or loss.kd_weight == 0:
        return None
    kd_cache.check_settings(loss, config.eval_data)
    if Path(loss.kd_cache).is_file():
        k = int(kd_cache.read_record(loss.kd_cache)["k"])
    elif config.score.teacher_top_k > 0:
        k = config.score.teacher_top_k
    else:
        raise ConfigError(f"{kd_cache.CONFIG_KEY}={loss.kd_cache}: no such file yet, so its k is unknown; write it with "
                          "`jaxalign score` first or set score.teacher_top_k=K (the k it will be written with)")
    kd_cache.check_top_k(loss, k)
    return k


def synthetic_batch(config: Config, task: str, rows: int, extras: tuple[str, ...],
                    kd_k: int | None = None) -> dict[str, np.ndarray]:
    """A batch of ``rows`` full-length rows laid out by the data collator (prompt ``max_prompt_length``,
    response the rest of ``max_length``); ``extras`` are float columns such as cached log-probs; ``kd_k``:
    the ``loss.kd_on`` sides also carry cached top-k arrays ``[rows, T, kd_k]`` int32/float32 and the
    residual ``[rows, T]`` float32, as ``Collator.use_topk`` adds them."""
    d = config.data
    prompt_len = d.prompt_limit
    if task == "pairwise":
        pieces = tuple(np.ones(1, np.int32) for _ in range(3))
        response = max((d.max_length - prompt_len - 4) // 2, 1)
    else:
        pieces, response = None, d.max_length - prompt_len
    examples = Examples(prompt=[np.ones(prompt_len, np.int32)] * rows, chosen=[np.ones(response, np.int32)] * rows,
                        rejected=[np.ones(response, np.int32)] * rows if task in ("preference", "pairwise") else None,
                        row_id=np.arange(rows), label=np.ones(rows, bool) if task == "kto" else None,
                        extras={c: np.zeros(rows, np.float32) for c in extras})
    collator = Collator(examples, task, segments_per_row=d.segments_per_row, buckets=[d.max_length], pad_id=0,
                        max_length=d.max_length, eos_id=1, pairwise_ids=pieces)
    batch = collator([(i,) for i in range(rows)])
    batch.pop("row_id")
    for side in kd_sides(config.loss.kd_on) if kd_k else ():
        T = batch[f"{side}_input_ids"].shape[1]
        batch[f"{side}_topk_ids"] = np.zeros((rows, T, kd_k), np.int32)
        batch[f"{side}_topk_logps"] = np.zeros((rows, T, kd_k), np.float32)
        batch[f"{side}_topk_residual"] = np.zeros((rows, T), np.float32)
    return batch


# ------------------------------------------------------------------ the step

@dataclasses.dataclass
class _Step:
    fn: Any
    state: dict
    frozen: dict
    batch: dict
    params_per_model: dict[str, int]
    matmul_per_model: dict[str, int]
    tokens: int


def _build_step(config: Config, mesh, *, cached: tuple[str, ...], rows: int, grad_accum: int,
                layers: dict[str, int] | None = None, layer_loop: str | None = None, kd_k: int | None = None) -> _Step:
    """The trainer's train step over abstract arrays on ``mesh`` (``layers``: per model key, for FLOPs;
    ``kd_k``: the batch carries cached top-k arrays, see ``kd_cache_k``)."""
    spec = get_objective(config.loss.name)
    layers = layers or {}
    columns = tuple(c for which in cached for c in CACHED_COLUMNS[which])
    if config.loss.rdo.enabled:
        columns += ("rdo_weight",)
    cols = set(columns)
    lora = lora_spec(config.model.lora)
    g_pol, s_pol, c_pol = abstract_model(config.model, "model", head=spec.head, layers=layers.get("model"),
                                         layer_loop=layer_loop, lora=lora)
    counts, matmul = {"policy": count(s_pol)}, {"policy": matmul_params(s_pol, c_pol)}
    graphdefs, frozen = {"policy": g_pol}, {}
    if lora is not None:  # as the trainer splits it: the adapters train, the base weights are frozen
        g_pol, s_pol, base = split_trainable(nnx.merge(g_pol, s_pol), lora_trained_base(config, spec.head))
        graphdefs["policy"], frozen["policy"] = g_pol, place(base, mesh)
    params = place(s_pol, mesh)
    if needs_model(spec, "reference", config.loss, cols) and lora is not None and not config.reference.is_set():
        graphdefs["reference_is_base"] = True  # the policy with its adapters disabled: no weights of its own
        counts["reference"], matmul["reference"] = counts["policy"], matmul["policy"]
    elif needs_model(spec, "reference", config.loss, cols):
        if config.reference.path or config.reference.preset:
            g, s, c = abstract_model(config.reference, "reference", layers=layers.get("reference"),
                                     layer_loop=layer_loop)
        else:  # the trainer copies the policy's initial weights
            g, s, c = g_pol, s_pol, c_pol
        graphdefs["reference"], frozen["reference"] = g, place(s, mesh)
        counts["reference"], matmul["reference"] = count(s), matmul_params(s, c)
    if needs_model(spec, "teacher", config.loss, cols):
        g, s, c = abstract_model(config.teacher, "teacher", layers=layers.get("teacher"), layer_loop=layer_loop)
        if c.vocab_size != c_pol.vocab_size and config.loss.kd_weight > 0:
            raise ConfigError(f"teacher vocabulary ({c.vocab_size}) differs from the student's ({c_pol.vocab_size}): "
                              "token-level distillation (loss.kd_weight) compares full distributions")
        # Sequence log-probs only gather target ids, so embedding tables padded to different sizes
        # (Qwen2.5-1.5B: 151936, Qwen2.5-7B: 152064, one tokenizer) are planned as they are.
        graphdefs["teacher"], frozen["teacher"] = g, place(s, mesh)
        counts["teacher"], matmul["teacher"] = count(s), matmul_params(s, c)
    optimizer_config = lora_optimizer_config(config.optimizer) if lora is not None else config.optimizer
    tx, schedule = build_optimizer(optimizer_config, max(config.train.steps, 1), params)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt_state = optimizer_state(tx, params, replicated)
    key_data = jax.eval_shape(lambda: jax.random.key_data(jax.random.key(0)))
    state = {"step": jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), "params": params,
             "opt_state": opt_state, "rng": jax.ShapeDtypeStruct(key_data.shape, key_data.dtype, sharding=replicated)}
    host = synthetic_batch(config, spec.task, rows, columns, kd_k)
    sharding = batch_sharding(mesh)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in host.items()}
    tokens = int(sum(v.size for k, v in host.items() if k.endswith("input_ids")))
    ctx = ObjectiveContext(config.loss, mesh=mesh if mesh.shape["tensor"] > 1 else None,
                           use_rdo_weights=config.loss.rdo.enabled)
    loss_fn = make_loss_fn(spec, ctx, GraphDefs(**graphdefs))
    fn = make_train_step(loss_fn, tx, schedule, grad_accum_steps=grad_accum,
                         state_shardings=jax.tree.map(lambda x: x.sharding, state),
                         frozen_leaves=frozen_mask(params, optimizer_config))
    return _Step(fn, state, frozen, batch, counts, matmul, tokens)


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", 0.0))


def step_flops(config: Config, *, cached: tuple[str, ...], rows: int, kd_k: int | None = None) -> float:
    """FLOPs of one step over ``rows`` rows (as one micro-batch), from unrolled 1- and 2-layer single-device
    compiles (see module doc)."""
    mesh = make_mesh(1, 1, 1, devices=jax.devices()[:1])
    spec = get_objective(config.loss.name)
    cols = {c for which in cached for c in CACHED_COLUMNS[which]}
    groups = {"model": _hf_dict(config.model, "model")[0]["num_hidden_layers"]}
    separate_ref = bool(config.reference.path or config.reference.preset)
    if needs_model(spec, "reference", config.loss, cols) and separate_ref:
        groups["reference"] = _hf_dict(config.reference, "reference")[0]["num_hidden_layers"]
    if needs_model(spec, "teacher", config.loss, cols):
        groups["teacher"] = _hf_dict(config.teacher, "teacher")[0]["num_hidden_layers"]

    def measure(layers):
        with jax.set_mesh(mesh):
            s = _build_step(config, mesh, cached=cached, rows=rows, grad_accum=1, layers=layers, layer_loop="unroll",
                            kd_k=kd_k)
            return _flops(s.fn.lower(s.state, s.frozen, s.batch).compile())

    ones = {g: 1 for g in groups}
    base = measure(ones)
    return base + sum((n - 1) * (measure({**ones, g: 2}) - base) for g, n in groups.items())


def plan_train(config: Config, *, devices: int, cached: tuple[str, ...] = (), flops: bool = True) -> TrainPlan:
    """Compile the recipe's train step for ``devices`` devices from abstract arrays; see the module docstring."""
    for which in cached:
        if which not in CACHED_COLUMNS:
            raise ConfigError(f"plan --cached {which!r}: not one of {', '.join(CACHED_COLUMNS)}")
    available = jax.devices()
    if devices > len(available):
        raise ValueError(f"plan --devices {devices}: only {len(available)} {jax.default_backend()} devices exist "
                         f"in this process (the plan command makes N virtual CPU devices before jax starts)")
    m = config.mesh
    mesh = make_mesh(m.data, m.fsdp, m.tensor, devices=available[:devices])
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    B, accum = config.data.batch_size, config.optimizer.grad_accum_steps
    if (B // accum) % shards:
        raise ConfigError(f"data.batch_size={B} (per micro-batch {B // accum}) is not divisible by the batch shards "
                          f"mesh.data x mesh.fsdp = {shards}")
    kd_k = kd_cache_k(config)
    start = time.perf_counter()
    with jax.set_mesh(mesh):
        step = _build_step(config, mesh, cached=cached, rows=B, grad_accum=accum, kd_k=kd_k)
        compiled = step.fn.lower(step.state, step.frozen, step.batch).compile()
    compile_seconds = time.perf_counter() - start
    mem = compiled.memory_analysis()
    per = {"params": shard_bytes(step.state["params"]),
           "optimizer": shard_bytes(step.state["opt_state"]),
           "frozen": shard_bytes(step.frozen),
           "batch": shard_bytes(step.batch),
           "temp": int(mem.temp_size_in_bytes)}
    per["total"] = sum(per.values())
    start = time.perf_counter()
    measured = step_flops(config, cached=cached, rows=B, kd_k=kd_k) if flops else float("nan")
    flops_seconds = time.perf_counter() - start
    n_frozen = sum(v for k, v in step.matmul_per_model.items() if k != "policy")
    analytic = 6.0 * step.matmul_per_model["policy"] * step.tokens + 2.0 * n_frozen * step.tokens
    settings = {"recipe_loss": config.loss.name, "batch_size": B, "max_length": config.data.max_length,
                "grad_accum_steps": accum, "remat": config.model.remat, "dtype": config.model.dtype,
                "param_dtype": config.model.param_dtype, "optimizer": config.optimizer.name,
                "models_in_step": sorted(step.params_per_model), "cached": sorted(cached),
                "attention": config.model.attention, "kd_cache_k": kd_k}
    return TrainPlan(devices=devices, mesh=dict(mesh.shape), per_device_bytes=per, param_counts=step.params_per_model,
                     flops_per_step=measured, flops_analytic=analytic, tokens_per_step=step.tokens,
                     xla_argument_bytes=int(mem.argument_size_in_bytes), compile_seconds=compile_seconds,
                     flops_seconds=flops_seconds, settings=settings)


# ------------------------------------------------------------------ advice and printing

def suggest(plan: TrainPlan, budget_bytes: float) -> list[str]:
    """What would bring the per-device total under ``budget_bytes``: estimates from the plan's parts
    (re-run the plan with the override to get the compiled figure)."""
    per, s, mesh = plan.per_device_bytes, plan.settings, plan.mesh
    total = per["total"]
    if total <= budget_bytes:
        return []
    out = []

    def fits(x):
        return "fits" if x <= budget_bytes else "still over"

    if s["remat"] != "full":
        out.append(f"model.remat=full: recompute each layer in the backward pass; activations (part of temp "
                   f"{per['temp'] / GIB:.1f} GiB) shrink to one layer's plus the layer inputs")
    for k in (2, 4, 8):
        micro = s["batch_size"] // (s["grad_accum_steps"] * k)
        divides = s["batch_size"] % (s["grad_accum_steps"] * k) == 0
        if micro >= 1 and divides and micro % (mesh["data"] * mesh["fsdp"]) == 0:
            est = total - per["temp"] + per["temp"] / k
            out.append(f"optimizer.grad_accum_steps={s['grad_accum_steps'] * k}: temp scales about 1/{k} "
                       f"-> ~{est / GIB:.1f} GiB per device ({fits(est)})")
            break
    if "teacher" in s["models_in_step"]:
        teacher = _frozen_part(plan, "teacher")
        est = total - teacher
        out.append(f"cache the teacher's log-probs (`jaxalign score` with score.teacher_logps=true, train on its "
                   f"output; plan --cached teacher): drops the teacher's {teacher / GIB:.1f} GiB of weights and its "
                   f"forward's activations -> under ~{est / GIB:.1f} GiB ({fits(est)})")
    if mesh["data"] > 1:
        k = mesh["data"]
        sharded = per["params"] + per["optimizer"] + per["frozen"]
        if mesh["fsdp"] == 1:
            est = total - sharded + sharded / k
            out.append(f"mesh.fsdp={k} mesh.data=1: shard parameters, optimizer state and frozen models over all "
                       f"{k} devices -> ~{est / GIB:.1f} GiB ({fits(est)})")
        else:
            out.append(f"mesh.fsdp={mesh['fsdp'] * mesh['data']} mesh.data=1 (or more devices): parameters, "
                       f"optimizer state and frozen models shard {k}x further")
    else:
        out.append(f"more devices (plan --devices {plan.devices * 2} mesh.fsdp=-1): parameters, optimizer state "
                   "and frozen models shard over twice as many")
    return out


def _frozen_part(plan: TrainPlan, which: str) -> float:
    """Per-device bytes of one frozen model (its share of the frozen total, by parameter count)."""
    frozen = {k: v for k, v in plan.param_counts.items() if k != "policy"}
    if which not in frozen:
        return 0.0
    return plan.per_device_bytes["frozen"] * frozen[which] / sum(frozen.values())


def format_plan(plan: TrainPlan, budget_gb: float | None = None) -> str:
    per, s = plan.per_device_bytes, plan.settings
    lines = [
        f"plan: {s['recipe_loss']} train step, {plan.devices} devices, mesh "
        + " x ".join(f"{k}={v}" for k, v in plan.mesh.items())
        + f"; batch {s['batch_size']} x {s['max_length']} tokens, grad_accum {s['grad_accum_steps']}, "
          f"remat {s['remat']}, {s['dtype']} compute / {s['param_dtype']} weights, {s['optimizer']}",
        "models in the step: " + ", ".join(f"{k} {v / 1e9:.3f}B params" for k, v in plan.param_counts.items())
        + (f"; cached: {', '.join(s['cached'])}" if s["cached"] else ""),
        "per device:",
    ]
    if s.get("kd_cache_k"):
        lines.insert(2, f"cached teacher distributions (loss.kd_cache): top-{s['kd_cache_k']} per position in the batch")
    for k in ("params", "optimizer", "frozen", "batch", "temp", "total"):
        lines.append(f"  {k:<10} {per[k] / GIB:10.2f} GiB")
    lines.append(f"  (XLA's own argument size per device: {plan.xla_argument_bytes / GIB:.2f} GiB)")
    if math.isfinite(plan.flops_per_step):
        lines.append(f"FLOPs per step: {plan.flops_per_step:.4g} (XLA, layers unrolled and counted) vs analytic "
                     f"6·N·tokens + 2·N_frozen·tokens = {plan.flops_analytic:.4g} (ratio "
                     f"{plan.flops_per_step / plan.flops_analytic:.2f}; {plan.tokens_per_step} tokens)")
    lines.append(f"compile {plan.compile_seconds:.0f} s, FLOPs compiles {plan.flops_seconds:.0f} s")
    if budget_gb is not None:
        if per["total"] <= budget_gb * GIB:
            lines.append(f"fits the {budget_gb:g} GiB budget ({per['total'] / GIB:.1f} GiB)")
        else:
            lines.append(f"over the {budget_gb:g} GiB budget ({per['total'] / GIB:.1f} GiB); "
                         "what would fit (estimates):")
            lines += [f"  - {x}" for x in plan.suggestions]
    return "\n".join(lines)
