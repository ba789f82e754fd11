"""Depth pruning (drop decoder layers) and the `prune` entry point that combines it with width pruning
(`prune_width`) on importance measured by a calibration pass (`importance`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import numpy as np
from flax import nnx

from jaxalign.models.decoder import Decoder, ScalarHeadModel

STRATEGIES = ("uniform", "last", "importance")
DEFAULT_CALIBRATION = "asset:prompts_train.jsonl"


def layers_to_drop(num_layers: int, fraction: float, strategy: str = "uniform", scores: Sequence[float] | None = None) -> list[int]:
    """Indices of `round(fraction * num_layers)` layers to remove; the first and last layer always stay.

    uniform: evenly spaced over the inner layers; last: the block just before the final layer;
    importance: the inner layers with the smallest `scores` `[L]` (e.g. `Importance.skip_kl`: how much
    the output changes when that layer alone is skipped), one shot.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1)")
    n = int(round(fraction * num_layers))
    inner = list(range(1, num_layers - 1))
    if n < 1 or n > len(inner):
        raise ValueError(f"fraction={fraction} of {num_layers} layers drops {n}; must drop 1..{len(inner)}")
    if strategy == "importance":
        if scores is None or len(scores) != num_layers or not np.all(np.isfinite(scores)):
            raise ValueError(f"strategy='importance' needs a finite score per layer ({num_layers}), got {scores!r}")
        return sorted(sorted(inner, key=lambda i: (scores[i], i))[:n])
    if strategy == "uniform":
        picks = np.linspace(0, len(inner) - 1, n + 2)[1:-1] if n < len(inner) else np.arange(len(inner))
        chosen = sorted({inner[int(round(p))] for p in picks})
        if len(chosen) < n:  # rounding merged neighbours (few layers): n distinct, evenly spread picks
            chosen = [inner[(k + 1) * len(inner) // (n + 1)] for k in range(n)]
        return chosen
    if strategy == "last":
        return inner[-n:]
    raise ValueError(f"strategy={strategy!r} is not one of {', '.join(STRATEGIES)}")


def prune_layers(model: Decoder | ScalarHeadModel, drop: Sequence[int]):
    """A new model without the decoder layers listed in `drop` (parameters are sliced, not copied twice)."""
    decoder = model.decoder if isinstance(model, ScalarHeadModel) else model
    L = decoder.config.num_layers
    bad = [i for i in drop if not 0 <= i < L]
    if bad:
        raise ValueError(f"layers {bad} are out of range for a model with {L} layers")
    keep = np.array([i for i in range(L) if i not in set(drop)])
    if len(keep) == 0:
        raise ValueError("cannot drop every layer")
    graphdef, state = nnx.split(model)
    config = decoder.config
    # Each kept layer keeps its kind (a Gemma local/global layer stays local/global, with its window
    # and RoPE base); the pruned config lists them explicitly in `layer_types`.
    types = None if config.layer_types is None else tuple(config.layer_types[i] for i in keep)
    new_config = config.replace(num_layers=len(keep), layer_types=types)

    def slice_layers(path, value):
        return value[keep] if "layers" in [str(p) for p in path] else value

    state = nnx.from_flat_state([(path, v.replace(slice_layers(path, v[...]))) for path, v in nnx.to_flat_state(state)])
    pruned = nnx.merge(graphdef, state)
    for module in (pruned, getattr(pruned, "decoder", None)):
        if module is not None:
            module.config = new_config
    return pruned


@dataclasses.dataclass(frozen=True)
class PruneSpec:
    """What to remove. Depth: `drop` (layer indices) or `fraction` of the layers by `strategy`; width:
    `hidden_fraction` / `mlp_fraction` / `heads_fraction` (see `prune_width`), or `params_fraction`: the
    width mix (hidden, MLP, heads) that removes that fraction of the parameters with the smallest
    KL(unpruned ‖ pruned) on the calibration prompts. Calibration: the first `calibration_size` prompts
    of `calibration` (any prompts file; `asset:` for shipped ones), `calibration_batch_size` per batch."""

    drop: tuple[int, ...] | None = None
    fraction: float | None = None
    strategy: str = "uniform"
    hidden_fraction: float = 0.0
    mlp_fraction: float = 0.0
    heads_fraction: float = 0.0
    params_fraction: float = 0.0
    calibration: str = DEFAULT_CALIBRATION
    calibration_size: int = 32
    calibration_batch_size: int = 8
    calibration_max_tokens: int = 256

    @property
    def width(self) -> bool:
        return bool(self.hidden_fraction or self.mlp_fraction or self.heads_fraction or self.params_fraction)

    @property
    def needs_calibration(self) -> bool:
        return self.width or (self.drop is None and self.fraction is not None and self.strategy == "importance")


@dataclasses.dataclass
class PruneResult:
    path: Path | None
    dropped: list[int]
    config: object  # the pruned ModelConfig
    counts: object = None  # prune_width.WidthCounts, or None (depth only)
    importance: object = None  # importance.Importance, or None (no calibration)
    mixes: list = dataclasses.field(default_factory=list)  # params_fraction: [(WidthCounts, KL/token)] tried


def check_spec(config, spec: PruneSpec) -> None:
    """One-line ValueError (ConfigError) for a spec this model cannot take, before any weights load."""
    from jaxalign.models.prune_width import width_counts

    if spec.strategy not in STRATEGIES:
        raise ValueError(f"strategy={spec.strategy!r} is not one of {', '.join(STRATEGIES)}")
    if spec.drop is not None and spec.fraction is not None:
        raise ValueError("give at most one of drop (layer indices) or fraction")
    if spec.drop is None and spec.fraction is None and not spec.width:
        raise ValueError("nothing to prune: give layers, a layer fraction or a width fraction")
    if spec.drop is not None:
        L = config.num_layers
        bad = [i for i in spec.drop if not 0 <= i < L]
        if bad:
            raise ValueError(f"layers {bad} are out of range for a model with {L} layers")
    if spec.fraction is not None:
        layers_to_drop(config.num_layers, spec.fraction, "uniform")  # range checks only
    if spec.params_fraction:
        if spec.hidden_fraction or spec.mlp_fraction or spec.heads_fraction:
            raise ValueError("params_fraction picks the width mix itself: give it alone, without hidden/mlp/heads fractions")
        if not 0 < spec.params_fraction < 0.9:
            raise ValueError(f"params_fraction={spec.params_fraction} must be in (0, 0.9)")
    width_counts(config, hidden_fraction=spec.hidden_fraction, mlp_fraction=spec.mlp_fraction,
                 heads_fraction=spec.heads_fraction)
    if spec.needs_calibration and (spec.calibration_size < 1 or spec.calibration_batch_size < 1):
        raise ValueError(f"calibration_size={spec.calibration_size} and calibration_batch_size="
                         f"{spec.calibration_batch_size} must be at least 1")


def width_mixes(config, params_fraction: float, *, max_mlp: float = 0.6):
    """Candidate `WidthCounts` that each remove about `params_fraction` of the parameters: a hidden fraction of
    0, half or all of `params_fraction`, with no heads or the fewest whole KV groups, and MLP channels
    making up the rest (at most `max_mlp` of them); candidates more than 25% off the target are left out."""
    from jaxalign.models.prune_width import WidthCounts, pruned_config

    total = config.num_params()
    target = params_fraction * total
    out = []
    for groups in [0] + ([1] if config.num_kv_heads > 1 else []):
        for hidden in sorted({int(round(h * params_fraction * config.hidden_size)) for h in (0.0, 0.5, 1.0)}):
            base = WidthCounts(hidden=hidden, kv_groups=groups)
            kept = pruned_config(config, base).num_params()
            per_channel = kept - pruned_config(config, dataclasses.replace(base, mlp=1)).num_params()
            mlp = max(0, int(round((target - (total - kept)) / per_channel)))
            counts = dataclasses.replace(base, mlp=mlp)
            got = 1 - pruned_config(config, counts).num_params() / total
            if mlp <= max_mlp * config.intermediate_size and abs(got - params_fraction) <= 0.25 * params_fraction \
                    and not counts.empty:
                out.append(counts)
    return out


def calibration_kl(model, pruned, batches, mesh) -> float:
    """KL(model ‖ pruned) per next-token distribution over the real tokens of calibration `batches`."""
    import jax

    from jaxalign.models.importance import on_mesh
    from jaxalign.parallel import distributed
    from jaxalign.pipeline.scoring import make_token_kl

    (tg, ts), (sg, ss) = nnx.split(model), nnx.split(pruned)
    ts, ss = on_mesh(ts, mesh), on_mesh(ss, mesh)
    fn = make_token_kl(sg, tg, 1024)
    total = count = 0.0
    with jax.set_mesh(mesh):
        for host in batches:
            batch = distributed.global_batch({**host, "loss_mask": (host["segment_ids"] > 0).astype(np.int32)}, mesh)
            kl, tok = jax.device_get(fn(ss, ts, batch))
            total, count = total + float(np.sum(kl)), count + float(np.sum(tok))
    return total / max(count, 1.0)


def prune_model(model, tokenizer, spec: PruneSpec, *, mesh=None, show_progress: bool = True) -> tuple[object, PruneResult]:
    """Prune a loaded model by `spec` (calibrating first when it needs importance); returns (pruned, result)."""
    from jaxalign.models.importance import calibrate, calibration_batches, encode_calibration_prompts
    from jaxalign.models.prune_width import plan_width, prune_width, width_counts
    from jaxalign.parallel.mesh import make_mesh

    decoder = model.decoder if isinstance(model, ScalarHeadModel) else model
    config = decoder.config
    check_spec(config, spec)
    importance, mixes, batches = None, [], None
    mesh = mesh if mesh is not None else make_mesh()
    if spec.needs_calibration:
        if tokenizer is None:
            raise ValueError("calibration needs the model's tokenizer (the source folder has none)")
        ids = encode_calibration_prompts(tokenizer, spec.calibration, spec.calibration_size,
                                         max_tokens=spec.calibration_max_tokens)
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        batches = calibration_batches(ids, spec.calibration_batch_size, shards=shards)
        need_skip = spec.drop is None and spec.fraction is not None and spec.strategy == "importance"
        importance = calibrate(decoder, batches, mesh=mesh, skip_kl=need_skip, show_progress=show_progress)
    counts = None
    if spec.params_fraction:
        for candidate in width_mixes(config, spec.params_fraction):
            trial = prune_width(decoder, plan_width(config, importance, candidate))
            mixes.append((candidate, calibration_kl(decoder, trial, batches, mesh)))
        if not mixes:
            raise ValueError(f"params_fraction={spec.params_fraction}: no width mix of this model removes that fraction")
        counts = min(mixes, key=lambda m: m[1])[0]
    elif spec.width:
        counts = width_counts(config, hidden_fraction=spec.hidden_fraction, mlp_fraction=spec.mlp_fraction,
                              heads_fraction=spec.heads_fraction)
    pruned = prune_width(model, plan_width(config, importance, counts)) if counts is not None else model
    if spec.drop is not None:
        dropped = sorted(spec.drop)
    elif spec.fraction is not None:
        scores = None if importance is None else importance.skip_kl
        dropped = layers_to_drop(config.num_layers, spec.fraction, spec.strategy, scores)
    else:
        dropped = []
    if dropped:
        pruned = prune_layers(pruned, dropped)
    new_config = (pruned.decoder if isinstance(pruned, ScalarHeadModel) else pruned).config
    return pruned, PruneResult(path=None, dropped=dropped, config=new_config, counts=counts, importance=importance,
                               mixes=mixes)


def prune_checkpoint(src, out_dir, spec: PruneSpec | None = None, *, drop: Sequence[int] | None = None,
                     fraction: float | None = None, strategy: str = "uniform", overwrite: bool = False,
                     mesh=None, show_progress: bool = True) -> PruneResult:
    """Load an HF folder, prune it by `spec` (or the depth-only `drop` / `fraction` / `strategy`), write a new
    HF folder, with the calibration statistics beside it (`importance.json`) when they were measured.
    Nothing is written when the spec is refused."""
    from jaxalign.models.config import ModelConfig
    from jaxalign.models.pretrained import load_pretrained, save_pretrained

    if spec is None:
        if (drop is None) == (fraction is None):
            raise ValueError("give exactly one of drop (layer indices) or fraction")
        spec = PruneSpec(drop=None if drop is None else tuple(drop), fraction=fraction, strategy=strategy)
    if Path(src, "config.json").is_file():
        check_spec(ModelConfig.from_pretrained(src), spec)  # before any weights load
    model, tokenizer = load_pretrained(src, mesh=mesh)
    pruned, result = prune_model(model, tokenizer, spec, mesh=mesh, show_progress=show_progress)
    result.path = save_pretrained(pruned, tokenizer, out_dir, overwrite=overwrite)
    if result.importance is not None:
        result.importance.save(result.path)
    return result
