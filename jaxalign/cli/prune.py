"""Build a smaller student from an HF checkpoint: remove decoder layers (depth) and/or hidden channels, MLP
channels and attention heads (width), by position or by importance measured on calibration prompts."""

from __future__ import annotations

import argparse

HELP = "remove layers, channels or heads (by position or measured importance) and write an HF folder"


def add_parser(p: argparse.ArgumentParser):
    from jaxalign.models.prune import DEFAULT_CALIBRATION, STRATEGIES

    p.add_argument("source", help="HF folder, .gguf file or hub id")
    p.add_argument("out_dir")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--layers", help="comma-separated layer indices to drop, e.g. 5,9,13")
    group.add_argument("--fraction", type=float, help="fraction of layers to drop, e.g. 0.2")
    p.add_argument("--strategy", default="uniform", choices=STRATEGIES,
                   help="which layers --fraction drops (importance: the ones whose skipping changes the output least)")
    p.add_argument("--hidden-fraction", type=float, default=0.0, help="fraction of hidden channels to remove")
    p.add_argument("--mlp-fraction", type=float, default=0.0, help="fraction of MLP channels to remove in every layer")
    p.add_argument("--heads-fraction", type=float, default=0.0,
                   help="fraction of attention heads to remove in every layer, in whole KV groups")
    p.add_argument("--params-fraction", type=float, default=0.0,
                   help="remove this fraction of the parameters by width, with the mix that keeps the output closest")
    p.add_argument("--calibration", default=DEFAULT_CALIBRATION, help="prompts file for the importance pass")
    p.add_argument("--calibration-size", type=int, default=32, help="prompts of --calibration to use")
    p.add_argument("--calibration-batch-size", type=int, default=8)
    p.add_argument("--overwrite", action="store_true")


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--layers={text!r}: give comma-separated layer indices, e.g. 5,9,13") from None


def describe(result) -> str:
    """One line: what was removed, the resulting sizes, where it went."""
    c = result.config
    parts = [f"dropped layers {result.dropped}"] if result.dropped else []
    if result.counts is not None:
        k = result.counts
        parts.append(f"removed {k.hidden} hidden channels, {k.mlp} MLP channels and {k.kv_groups} KV groups per layer")
    parts.append(f"now {c.num_layers} layers, hidden {c.hidden_size}, MLP {c.intermediate_size}, "
                 f"{c.num_heads} heads / {c.num_kv_heads} KV heads, {c.num_params() / 1e6:.1f}M parameters")
    return "; ".join(parts) + (f"; wrote {result.path}" if result.path else "")


def run(args) -> int:
    from jaxalign.cli._stage import check_model_output
    from jaxalign.models.prune import PruneSpec, prune_checkpoint
    from jaxalign.models.resolve import resolve_model_path

    spec = PruneSpec(drop=_layers(args.layers) if args.layers else None, fraction=args.fraction,
                     strategy=args.strategy, hidden_fraction=args.hidden_fraction, mlp_fraction=args.mlp_fraction,
                     heads_fraction=args.heads_fraction, params_fraction=args.params_fraction,
                     calibration=args.calibration, calibration_size=args.calibration_size,
                     calibration_batch_size=args.calibration_batch_size)
    source = resolve_model_path(args.source)
    check_model_output(source, args.out_dir, overwrite=args.overwrite)
    result = prune_checkpoint(source, args.out_dir, spec, overwrite=args.overwrite)
    print(describe(result))
    return 0
