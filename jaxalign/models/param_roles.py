"""Which axis of each per-layer parameter runs over the hidden channels, the MLP channels, the query
heads or the KV heads, derived from the family's own `layer_params` (no per-family table).

A family declares its per-layer `ParamSpec`s as a function of the config; changing one size of the
config (hidden, intermediate, heads, KV heads) and seeing which axes change names the axes that
size governs. Width pruning slices along them; calibration reads which projection inputs are head,
MLP-channel or hidden activations.
"""

from __future__ import annotations

import math

from jaxalign.models.config import ConfigError, ModelConfig

HIDDEN, MLP, Q, KV = "hidden", "mlp", "q", "kv"  # Q / KV axes are heads * head_dim, head-major
ROLES = (HIDDEN, MLP, Q, KV)


def _changed_axes(base: dict, other: dict) -> dict[str, set[int]]:
    return {n: {a for a, (x, y) in enumerate(zip(base[n].shape, other[n].shape)) if x != y} for n in base}


def axis_roles(config: ModelConfig) -> dict[str, tuple[str | None, ...]]:
    """`{param name: role or None per axis}` for the family's per-layer parameters (no layer axis).

    Raises ConfigError when one axis follows two sizes (it could not be sliced for one of them).
    """
    family, c = config.family, config
    base = family.layer_params(c)
    probes = {
        HIDDEN: c.replace(hidden_size=c.hidden_size + 1),
        MLP: c.replace(intermediate_size=c.intermediate_size + 1),
        # doubling the query heads moves the Q axes; doubling both moves Q and KV axes
        Q: c.replace(num_heads=2 * c.num_heads),
        KV: c.replace(num_heads=2 * c.num_heads, num_kv_heads=2 * c.num_kv_heads),
    }
    changed = {role: _changed_axes(base, family.layer_params(cfg)) for role, cfg in probes.items()}
    for name in base:
        changed[KV][name] -= changed[Q][name]
    roles = {}
    for name, spec in base.items():
        axes: list[str | None] = [None] * len(spec.shape)
        for role in ROLES:
            for a in changed[role][name]:
                if axes[a] is not None:
                    raise ConfigError(f"{c.model_type}: axis {a} of layer parameter {name!r} follows both "
                                      f"{axes[a]} and {role} sizes; it cannot be width-pruned")
                axes[a] = role
        roles[name] = tuple(axes)
    return roles


def is_norm(name: str) -> bool:
    """Per-layer norm weights are named `*norm` by every family (attn_norm, mlp_norm, post_*_norm, q_norm)."""
    return name.endswith("norm")


def layer_param_count(config: ModelConfig) -> int:
    return sum(math.prod(s.shape) for s in config.family.layer_params(config).values())
