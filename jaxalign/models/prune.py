"""Depth pruning: drop decoder layers to build a smaller student from a teacher."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from flax import nnx

from jaxalign.models.decoder import Decoder, ScalarHeadModel


def layers_to_drop(num_layers: int, fraction: float, strategy: str = "uniform") -> list[int]:
    """Indices of `round(fraction * num_layers)` layers to remove; the first and last layer always stay.

    uniform: evenly spaced over the inner layers; last: the block just before the final layer.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"fraction={fraction} must be in (0, 1)")
    n = int(round(fraction * num_layers))
    inner = list(range(1, num_layers - 1))
    if n < 1 or n > len(inner):
        raise ValueError(f"fraction={fraction} of {num_layers} layers drops {n}; must drop 1..{len(inner)}")
    if strategy == "uniform":
        picks = np.linspace(0, len(inner) - 1, n + 2)[1:-1] if n < len(inner) else np.arange(len(inner))
        chosen = sorted({inner[int(round(p))] for p in picks})
        if len(chosen) < n:  # rounding merged neighbours (few layers): n distinct, evenly spread picks
            chosen = [inner[(k + 1) * len(inner) // (n + 1)] for k in range(n)]
        return chosen
    if strategy == "last":
        return inner[-n:]
    raise ValueError(f"strategy={strategy!r} is not one of uniform, last")


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


def prune_checkpoint(src, out_dir, *, drop: Sequence[int] | None = None, fraction: float | None = None,
                     strategy: str = "uniform", overwrite: bool = False) -> tuple[Path, list[int]]:
    """Load an HF folder, drop layers (explicit list or fraction), write a new HF folder."""
    from jaxalign.models.pretrained import load_pretrained, save_pretrained

    if (drop is None) == (fraction is None):
        raise ValueError("give exactly one of drop (layer indices) or fraction")
    model, tokenizer = load_pretrained(src)
    if drop is None:
        drop = layers_to_drop(model.config.num_layers, fraction, strategy)
    pruned = prune_layers(model, drop)
    return save_pretrained(pruned, tokenizer, out_dir, overwrite=overwrite), list(drop)
