"""Optax optimizer from `OptimizerConfig`: AdamW or Adafactor, warmup + cosine/linear/constant,
global-norm clipping, optional frozen embeddings."""

from __future__ import annotations

import re

import jax
import optax

from jaxalign.config.schema import OptimizerConfig
from jaxalign.parallel.sharding import param_name


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to `cfg.lr`, then cosine/linear decay to `lr * min_lr_ratio` at `total_steps`."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        decay = optax.cosine_decay_schedule(cfg.lr, decay_steps, alpha=cfg.min_lr_ratio)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, end, decay_steps)
    elif cfg.schedule == "constant":
        decay = optax.constant_schedule(cfg.lr)
    else:
        raise ValueError(f"optimizer.schedule={cfg.schedule!r} is not one of cosine, linear, constant")
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


def freeze_labels(params, cfg: OptimizerConfig | None = None) -> object:
    """'freeze' or 'train' per leaf: embeddings frozen with ``freeze_embeddings``; with
    ``trainable`` set, every parameter whose name does not match that regex."""
    pattern = re.compile(cfg.trainable) if cfg is not None and cfg.trainable else None
    embeddings = cfg is None or cfg.freeze_embeddings

    def label(path, _):
        name = param_name(path)
        if embeddings and "embed" in name.split("."):
            return "freeze"
        return "freeze" if pattern is not None and not pattern.search(name) else "train"

    return jax.tree_util.tree_map_with_path(label, params)


def frozen_mask(params, cfg: OptimizerConfig):
    """Bool per leaf (True = frozen), or None when everything trains."""
    if not (cfg.freeze_embeddings or cfg.trainable):
        return None
    return jax.tree.map(lambda lab: lab == "freeze", freeze_labels(params, cfg))


def build_optimizer(cfg: OptimizerConfig, total_steps: int, params=None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(transformation, schedule). Gradient accumulation happens in the train step, not here."""
    schedule = learning_rate_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        core = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    elif cfg.name == "adafactor":
        core = optax.adafactor(schedule, weight_decay_rate=cfg.weight_decay or None)
    else:
        raise ValueError(f"optimizer.name={cfg.name!r} is not one of adamw, adafactor")
    parts = []
    if cfg.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
    parts.append(core)
    tx = optax.chain(*parts)
    if cfg.freeze_embeddings or cfg.trainable:
        if params is None:
            raise ValueError("optimizer.freeze_embeddings / optimizer.trainable need the parameter tree")
        labels = freeze_labels(params, cfg)
        if "train" not in jax.tree.leaves(labels):
            raise ValueError(f"optimizer.trainable={cfg.trainable!r} matches no parameter (names look like "
                             "'decoder.layers.q_proj', 'decoder.embed', 'score')")
        tx = optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, labels)
    return tx, schedule


def optimizer_state_shardings(tx: optax.GradientTransformation, params, replicated):
    """Shardings of `tx.init(params)`: a leaf whose key path ends with a parameter's path and has its
    shape (Adam's moments; masked transforms simply have none for frozen parameters) is sharded like
    that parameter, every other leaf `replicated`. `jax.jit(tx.init)` alone leaves every leaf
    replicated: zeros do not inherit the parameters' layout."""
    by_path = {tuple(path): (p.shape, p.sharding) for path, p in jax.tree_util.tree_flatten_with_path(params)[0]}

    def place(path, leaf):
        for start in range(len(path)):
            found = by_path.get(tuple(path[start:]))
            if found is not None and found[0] == leaf.shape:
                return found[1]
        return replicated

    return jax.tree_util.tree_map_with_path(place, jax.eval_shape(tx.init, params))


def init_optimizer_state(tx: optax.GradientTransformation, params, replicated):
    """`tx.init(params)`, each leaf placed as `optimizer_state_shardings` says."""
    return jax.jit(tx.init, out_shardings=optimizer_state_shardings(tx, params, replicated))(params)
