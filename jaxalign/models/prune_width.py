"""Width pruning: remove the least important hidden channels, MLP channels and attention heads, the same
number in every layer, so the result is a plain HF config (smaller `hidden_size`, `intermediate_size`,
`num_attention_heads` / `num_key_value_heads`; `head_dim` unchanged and written explicitly).

- MLP channels and heads are chosen per layer (each layer keeps its own most important ones, in their
  original order); hidden channels once for the whole model (the residual stream, embeddings, norms
  and LM head share them).
- Heads go in whole KV groups: removing KV head g removes it and the G = H / K query heads that read
  it (under MHA, G = 1: single heads), so GQA's `head h reads KV head h // G` layout stays valid and
  the importance of a group is the sum of its query heads'. A fraction that does not remove whole
  groups is refused.
- RoPE is untouched (head_dim and frequencies do not change); per-head q/k norms (Qwen3, Gemma 3)
  stay as they are; norms over the hidden channels are sliced and rescaled by sqrt(D / D'), because
  an RMS norm divides by the root mean square over all D channels: with the removed channels at
  zero, the pruned model computes exactly what the unpruned one did; for that the norm epsilon is
  scaled by D / D' too (one config value: per-head q/k norms, over head_dim, then use the larger
  epsilon as well, a change far below their inputs' mean square).
- Embeddings and the LM head are sliced along the hidden axis; tied embeddings stay tied. A family
  whose embedding scale depends on the hidden size (Gemma: sqrt(D)) gets its embeddings rescaled to
  the old scale, and, when tied, the final norm the inverse, so the logits are unchanged.

Which axis of each parameter is which comes from `param_roles.axis_roles`. Mixture-of-experts
families are refused (their expert stacks and router are not sliced here); depth pruning works for them.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxalign.models.config import ConfigError, ModelConfig
from jaxalign.models.decoder import Decoder, ScalarHeadModel
from jaxalign.models.importance import Importance
from jaxalign.models.layers.norms import rms_norm_plus_one
from jaxalign.models.param_roles import HIDDEN, KV, MLP, Q, axis_roles, is_norm


@dataclasses.dataclass(frozen=True)
class WidthCounts:
    """How many of each to remove (per layer for mlp channels and KV groups; hidden once)."""

    hidden: int = 0
    mlp: int = 0
    kv_groups: int = 0

    @property
    def empty(self) -> bool:
        return not (self.hidden or self.mlp or self.kv_groups)


@dataclasses.dataclass(frozen=True)
class WidthPlan:
    """Kept indices, sorted: hidden `[D']`, mlp `[L, F']`, kv_groups `[L, K']` (None: keep all)."""

    hidden: np.ndarray | None = None
    mlp: np.ndarray | None = None
    kv_groups: np.ndarray | None = None


def check_width_supported(config: ModelConfig) -> None:
    specs = config.family.layer_params(config)
    experts = sorted(n for n, s in specs.items() if len(s.shape) > 2)
    if experts:
        raise ConfigError(f"width pruning of {config.model_type} (mixture of experts: {', '.join(experts)}) is not "
                          "supported; prune its depth instead (--fraction / --layers)")


def width_counts(config: ModelConfig, *, hidden_fraction: float = 0.0, mlp_fraction: float = 0.0,
                 heads_fraction: float = 0.0) -> WidthCounts:
    """What each fraction removes; a one-line ConfigError naming the fraction when it is out of [0, 1),
    removes everything of a kind, or (heads) does not remove whole KV groups."""
    for name, f in (("hidden_fraction", hidden_fraction), ("mlp_fraction", mlp_fraction), ("heads_fraction", heads_fraction)):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
            raise ConfigError(f"{name}={f!r} must be in [0, 1)")
    if hidden_fraction or mlp_fraction or heads_fraction:
        check_width_supported(config)
    D, F, H, K = config.hidden_size, config.intermediate_size, config.num_heads, config.num_kv_heads
    hidden, mlp = int(round(hidden_fraction * D)), int(round(mlp_fraction * F))
    for name, f, n, total in (("hidden_fraction", hidden_fraction, hidden, D), ("mlp_fraction", mlp_fraction, mlp, F)):
        if f and not 1 <= n < total:
            raise ConfigError(f"{name}={f} of {total} channels removes {n}; it must remove 1..{total - 1}")
    groups = 0
    if heads_fraction:
        G = H // K
        groups, heads = int(round(heads_fraction * K)), int(round(heads_fraction * H))
        if heads != groups * G or not 1 <= groups < K:
            raise ConfigError(f"heads_fraction={heads_fraction} of {H} heads removes {heads}: heads go in whole KV "
                              f"groups of {G} ({K} groups), so give a multiple of 1/{K} below 1")
    return WidthCounts(hidden=hidden, mlp=mlp, kv_groups=groups)


def pruned_config(config: ModelConfig, counts: WidthCounts) -> ModelConfig:
    """The config after removing `counts`; `rms_norm_eps` grows as the hidden size shrinks (x D/D'), so a norm
    over the D' kept channels equals the old one over D channels with the removed ones at zero exactly."""
    G = config.num_heads // config.num_kv_heads
    K = config.num_kv_heads - counts.kv_groups
    D = config.hidden_size - counts.hidden
    return config.replace(hidden_size=D, intermediate_size=config.intermediate_size - counts.mlp, num_heads=K * G,
                          num_kv_heads=K, rms_norm_eps=config.rms_norm_eps * config.hidden_size / D)


def _top(scores: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the `keep` largest entries along the last axis, in their original order (ties: lower index)."""
    order = np.argsort(-scores, axis=-1, kind="stable")[..., :keep]
    return np.sort(order, axis=-1)


def plan_width(config: ModelConfig, importance: Importance, counts: WidthCounts) -> WidthPlan:
    """Keep the most important channels and groups (`Importance` from `calibrate` on this model)."""
    hidden = _top(importance.hidden.sum(0), config.hidden_size - counts.hidden) if counts.hidden else None
    mlp = _top(importance.mlp, config.intermediate_size - counts.mlp) if counts.mlp else None
    groups = (_top(importance.kv_groups(config.num_kv_heads), config.num_kv_heads - counts.kv_groups)
              if counts.kv_groups else None)
    return WidthPlan(hidden=hidden, mlp=mlp, kv_groups=groups)


def _head_columns(groups: np.ndarray, per_group: int, head_dim: int) -> np.ndarray:
    """`[L, K']` kept groups -> `[L, K' * per_group * head_dim]` kept columns of a head-major axis."""
    heads = (groups[..., None] * per_group + np.arange(per_group)).reshape(groups.shape[0], -1)
    return (heads[..., None] * head_dim + np.arange(head_dim)).reshape(groups.shape[0], -1)


def _take(value: np.ndarray, axis: int, index: np.ndarray) -> np.ndarray:
    """Slice `value` along `axis` by `index`: `[n]` for every layer alike, `[L, n]` per layer (axis > 0)."""
    if index.ndim == 1:
        return np.take(value, index, axis=axis)
    shape = [1] * value.ndim
    shape[0], shape[axis] = index.shape
    return np.take_along_axis(value, index.reshape(shape), axis=axis)


def _rescale_norm(w: np.ndarray, factor: float, plus_one: bool) -> np.ndarray:
    """Norm weights whose effective scale is multiplied by `factor` (Gemma's is 1 + w)."""
    return ((1.0 + w) * factor - 1.0) if plus_one else w * factor


def prune_width(model: Decoder | ScalarHeadModel, plan: WidthPlan):
    """A new model with only the channels and KV groups `plan` keeps (see the module docstring)."""
    decoder = model.decoder if isinstance(model, ScalarHeadModel) else model
    config = decoder.config
    check_width_supported(config)
    family = config.family
    D, H, K, Dh = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
    G = H // K
    counts = WidthCounts(hidden=0 if plan.hidden is None else D - len(plan.hidden),
                         mlp=0 if plan.mlp is None else config.intermediate_size - plan.mlp.shape[1],
                         kv_groups=0 if plan.kv_groups is None else K - plan.kv_groups.shape[1])
    new_config = pruned_config(config, counts)
    plus_one = family.final_norm is rms_norm_plus_one
    norm_factor = float(np.sqrt(D / new_config.hidden_size))
    old_scale, new_scale = family.embed_scale(config), family.embed_scale(new_config)
    embed_factor = 1.0 if old_scale is None else float(old_scale) / float(new_scale)
    roles = axis_roles(config)
    index = {HIDDEN: plan.hidden, MLP: plan.mlp,
             Q: None if plan.kv_groups is None else _head_columns(plan.kv_groups, G, Dh),
             KV: None if plan.kv_groups is None else _head_columns(plan.kv_groups, 1, Dh)}

    def new_value(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
        name = path[-1]
        if "layers" in path:
            for axis, role in enumerate(roles[name], start=1):
                if role is not None and index[role] is not None:
                    value = _take(value, axis, index[role])
            return _rescale_norm(value, norm_factor, plus_one) if is_norm(name) and roles[name] == (HIDDEN,) else value
        if plan.hidden is None:
            return value
        if name == "embed":  # [V, D]
            return _take(value, 1, plan.hidden) * embed_factor
        if name == "final_norm":  # [D]; tied: the embedding's rescale is undone here
            factor = norm_factor / (embed_factor if config.tie_word_embeddings else 1.0)
            return _rescale_norm(_take(value, 0, plan.hidden), factor, plus_one)
        if name in ("lm_head", "score"):  # [D, V], [D, 1]
            return _take(value, 0, plan.hidden)
        raise ConfigError(f"width pruning does not know how to slice parameter {'.'.join(path)}")

    graphdef, state = nnx.split(model)
    flat = []
    for path, v in nnx.to_flat_state(state):
        keys = tuple(str(p) for p in path)
        value = np.asarray(v[...])
        flat.append((path, v.replace(jnp.asarray(new_value(keys, value).astype(value.dtype)))))
    pruned = nnx.merge(graphdef, nnx.from_flat_state(flat))
    for module in (pruned, getattr(pruned, "decoder", None)):
        if module is not None:
            module.config = new_config
    return pruned
