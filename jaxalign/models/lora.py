"""LoRA: low-rank adapters on a decoder's projections, the base model as their reference, merge.

`add_lora(model, LoraSpec(rank, alpha, dropout, targets))` attaches to every decoder of `model`
(the causal LM, or a reward model's backbone) one `LoraAdapters` module holding, per targeted
projection `w [L, D, F]`, `a [L, D, r]` (uniform ±1/√D, as PEFT's Kaiming init) and `b [L, r, F]`
(zeros, so a fresh adapter changes nothing). The forward adds `(alpha/r)·dropout(x)·a·b` to the
projection (`jaxalign.models.layers.lora`).

Mixture-of-experts families (Mixtral, Qwen3-MoE) also expose their expert stacks `expert_gate`,
`expert_up` `[L, E, D, F]` and `expert_down` `[L, E, F, D]`: each expert gets its own pair,
`a [L, E, in, r]`, `b [L, E, r, out]` (as PEFT adapts each expert's Linear), added per expert in
`layers.moe.expert_linear`. `all-linear` includes them (PEFT's all-linear adapts every expert
Linear); the router is adapted only when named.

- Trained: only `LoraParam`s (`split_trainable` separates them from the frozen base weights, so the
  optimizer state and checkpoints hold only them).
- Reference: `adapters_disabled(model)` is the same weights with the branch absent from the trace
  (no second copy; its forward is the base model's exactly).
- Sharding: `a` shards its input axis like the base weight's input axis, `b` its output axis like
  the base weight's output axis, both their expert axis like the base weight's; the rank axis is
  replicated.
- Export: `merge_lora(model)` is a plain model with `w + (alpha/r)·a·b`, for `save_pretrained`.
- Dropout: active only inside `with lora_dropout(key):` (the train step's policy forward).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import re

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from jaxalign.models.config import ConfigError, ModelConfig
from jaxalign.models.decoder import Decoder
from jaxalign.models.layers.lora import LoraWeight
from jaxalign.models.layers.params import EXPERT_IN_OUT, EXPERT_OUT_IN, ParamSpec
from jaxalign.models.param_roles import is_norm
from jaxalign.parallel.sharding import param_name, state_shardings

__all__ = ["ALL_LINEAR", "LoraAdapters", "LoraParam", "LoraSpec", "add_lora", "adapters_disabled", "decoders",
           "has_lora", "lora_dropout", "merge_lora", "resolve_targets", "split_trainable", "targetable"]

#: `targets` value that adapts every attention and MLP projection (`*_proj`) of the family and, in a
#: mixture, every expert (`expert_*`); not the router.
ALL_LINEAR = "all-linear"

#: Partition names of a mixture's expert stacks `[E, in, out]` (`layers.moe.moe_params`).
_EXPERT_STACKS = (EXPERT_IN_OUT, EXPERT_OUT_IN)


class LoraParam(nnx.Param):
    """An adapter matrix: the only parameters a LoRA run trains (an `nnx.Param`, so plain
    `nnx.Param` filters still see the whole model)."""


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """What `model.lora` asks for: rank r (> 0), alpha (the branch is scaled by alpha/r), dropout
    rate on the branch's input, and the targeted projections (names, or `ALL_LINEAR`)."""

    rank: int
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = (ALL_LINEAR,)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _is_expert_stack(spec: ParamSpec) -> bool:
    return spec.names in _EXPERT_STACKS


def targetable(config: ModelConfig) -> dict[str, ParamSpec]:
    """The per-layer projections of a family an adapter can sit on, in the family's order: its 2-D
    weights `[in, out]` (q/k/v/o, gate/up/down, a mixture's router), each applied through
    `layers.linear`, and a mixture's expert stacks `[E, in, out]` (expert_gate/up/down), applied
    per expert through `layers.moe.expert_linear`."""
    return {n: s for n, s in config.family.layer_params(config).items()
            if (len(s.shape) == 2 and not is_norm(n)) or _is_expert_stack(s)}


def _in_all_linear(name: str, spec: ParamSpec) -> bool:
    return name.endswith("_proj") or _is_expert_stack(spec)


def resolve_targets(config: ModelConfig, targets, *, key: str = "model.lora.targets") -> tuple[str, ...]:
    """The projection names `targets` selects for this family, in the family's order; `ALL_LINEAR`
    is every `*_proj` and every expert stack (`expert_*`; not the router). Raises ConfigError naming
    `key` for an unknown or empty selection."""
    names = (targets,) if isinstance(targets, str) else tuple(targets)
    available = targetable(config)
    if not names:
        raise ConfigError(f"{key} is empty; name projections ({', '.join(available)}) or {ALL_LINEAR!r}")
    chosen = set()
    for name in names:
        if name == ALL_LINEAR:
            chosen.update(n for n, s in available.items() if _in_all_linear(n, s))
        elif name in available:
            chosen.add(name)
        else:
            raise ConfigError(f"{key}: {config.model_type} has no projection {name!r}; choose from "
                              f"{', '.join(available)} or {ALL_LINEAR!r}")
    return tuple(n for n in available if n in chosen)


def check_spec(spec: LoraSpec, *, key: str = "model.lora") -> None:
    """Refuse a rank, alpha or dropout no adapter can have, naming the key."""
    if not isinstance(spec.rank, int) or spec.rank < 1:
        raise ConfigError(f"{key}.rank={spec.rank!r} must be a positive integer (0 turns LoRA off)")
    if not spec.alpha > 0:
        raise ConfigError(f"{key}.alpha={spec.alpha!r} must be > 0")
    if not 0 <= spec.dropout < 1:
        raise ConfigError(f"{key}.dropout={spec.dropout!r} must be in [0, 1)")


class LoraAdapters(nnx.Module):
    """Stacked adapter pairs `{target}_a [L, in, r]`, `{target}_b [L, r, out]` of one decoder
    (an expert stack's: `[L, E, in, r]`, `[L, E, r, out]`, one pair per expert).

    `enabled` (static) decides at trace time whether `wrap` adds them: a disabled copy traces
    exactly the base model's computation.
    """

    def __init__(self, specs: dict[str, ParamSpec], num_layers: int, spec: LoraSpec, *, rngs: nnx.Rngs):
        self.targets = tuple(specs)
        self.rank, self.scale, self.dropout = spec.rank, spec.scale, spec.dropout
        self.enabled = True
        r = spec.rank
        for name, base in specs.items():
            # lead: the expert axis of an expert stack (none for a projection), sharded as the base's
            (*lead, d_in, d_out), (*lead_axes, in_axis, out_axis) = base.shape, base.names
            bound = 1.0 / math.sqrt(d_in)
            a = jax.random.uniform(rngs.params(), (num_layers, *lead, d_in, r), jnp.float32, -bound, bound)
            setattr(self, f"{name}_a", LoraParam(a, out_sharding=(None, *lead_axes, in_axis, None),
                                                 eager_sharding=False))
            setattr(self, f"{name}_b", LoraParam(jnp.zeros((num_layers, *lead, r, d_out), jnp.float32),
                                                 out_sharding=(None, *lead_axes, None, out_axis), eager_sharding=False))

    def pair(self, name: str) -> tuple[jax.Array, jax.Array]:
        return getattr(self, f"{name}_a")[...], getattr(self, f"{name}_b")[...]

    def wrap(self, stacked: dict[str, jax.Array]) -> dict:
        """`stacked` with each target's weight `[L, (E,) in, out]` replaced by a stacked `LoraWeight`
        (per-layer dropout keys `[L, 2]` under `lora_dropout`)."""
        out = dict(stacked)
        key = _DROPOUT_KEY.get() if self.dropout > 0 else None
        for i, name in enumerate(self.targets):
            w = stacked[name]
            keys = None
            if key is not None:
                keys = jax.random.key_data(jax.random.split(jax.random.fold_in(key, i), w.shape[0]))
            a, b = self.pair(name)
            out[name] = LoraWeight(w, a, b, keys, scale=self.scale, dropout=self.dropout)
        return out

    def delta(self, name: str) -> jax.Array:
        """`(alpha/r)·a·b` `[L, (E,) in, out]` in float32 (per layer and expert): what merging adds
        to the target's weight."""
        a, b = self.pair(name)
        return jnp.einsum("...dr,...rf->...df", a.astype(jnp.float32), b.astype(jnp.float32)) * self.scale


# ------------------------------------------------------------------------------------------ dropout
_DROPOUT_KEY: contextvars.ContextVar = contextvars.ContextVar("lora_dropout_key", default=None)


@contextlib.contextmanager
def lora_dropout(key: jax.Array | None):
    """Adapters traced inside apply their dropout with `key` (a typed PRNG key); None or outside
    this context: no dropout (evaluation, the reference, scoring)."""
    token = _DROPOUT_KEY.set(key)
    try:
        yield
    finally:
        _DROPOUT_KEY.reset(token)


# ------------------------------------------------------------------------------------------- models
def decoders(model) -> list[Decoder]:
    """The `Decoder`s of a causal LM (itself) or of a scalar-head model (its backbone)."""
    if isinstance(model, Decoder):
        return [model]
    inner = getattr(model, "decoder", None)
    if isinstance(inner, Decoder):
        return [inner]
    raise TypeError(f"{type(model).__name__} has no decoder to put LoRA adapters on")


def has_lora(model) -> bool:
    return any(d.lora is not None for d in decoders(model))


def add_lora(model, spec: LoraSpec, *, mesh: Mesh | None = None, seed: int = 0):
    """Attach fresh adapters to `model` in place (and return it), each placed by its sharding
    annotation on `mesh`. Raises ConfigError naming `model.lora.*` for a bad spec or target."""
    check_spec(spec)
    for k, dec in enumerate(decoders(model)):
        if dec.lora is not None:
            raise ValueError("model already has LoRA adapters")
        base = targetable(dec.config)
        specs = {n: base[n] for n in resolve_targets(dec.config, spec.targets)}

        def make(specs=specs, L=dec.config.num_layers, k=k):
            return LoraAdapters(specs, L, spec, rngs=nnx.Rngs(jax.random.fold_in(jax.random.key(seed), k)))

        if mesh is None:
            adapters = make()
        else:
            graphdef, abstract = nnx.split(nnx.eval_shape(make))
            state = jax.jit(lambda: nnx.state(make()), out_shardings=state_shardings(abstract, mesh))()
            adapters = nnx.merge(graphdef, state)
        dec.lora = nnx.data(adapters)
    return model


def _set_enabled(model, enabled: bool):
    for dec in decoders(model):
        if dec.lora is not None:
            dec.lora.enabled = enabled
    return model


def adapters_disabled(model):
    """The same model (same arrays, no copy) whose forward leaves the adapters out: the base model.
    A new module object; `model` keeps its adapters on."""
    graphdef, state = nnx.split(model)
    return _set_enabled(nnx.merge(graphdef, state), False)


def merge_lora(model):
    """A plain model (no adapters) whose targeted weights are `w + (alpha/r)·a·b`, cast to the
    weight's dtype and kept on its sharding; `model` is left as it was."""
    graphdef, state = nnx.split(model)
    merged = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))  # fresh Variables, shared arrays
    for dec in decoders(merged):
        adapters = dec.lora
        if adapters is None:
            continue
        for name in adapters.targets:
            var = getattr(dec.layers, name)
            w = var[...]
            new = (w.astype(jnp.float32) + adapters.delta(name)).astype(w.dtype)
            var.set_value(jax.device_put(new, w.sharding) if isinstance(w, jax.Array) else new)
        dec.lora = nnx.data(None)
    return merged


def split_trainable(model, also: str = ""):
    """`(graphdef, trainable, frozen)` of a LoRA model: trainable = the adapters, plus the base
    parameters whose dotted name matches the regex `also` (e.g. `score`, a reward model's fresh
    head); frozen = every other parameter. `nnx.merge(graphdef, trainable, frozen)` rebuilds it."""
    pattern = re.compile(also) if also else None

    def trainable(path, value) -> bool:
        if isinstance(value, LoraParam):
            return True
        return pattern is not None and isinstance(value, nnx.Param) and bool(pattern.search(param_name(path)))

    return nnx.split(model, trainable, ...)
