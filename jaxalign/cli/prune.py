"""Drop decoder layers from an HF checkpoint to build a smaller student (depth pruning)."""

from __future__ import annotations

import argparse

HELP = "remove decoder layers (a list or a fraction) and write an HF folder"


def add_parser(p: argparse.ArgumentParser):
    p.add_argument("source", help="HF folder, .gguf file or hub id")
    p.add_argument("out_dir")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--layers", help="comma-separated layer indices to drop, e.g. 5,9,13")
    group.add_argument("--fraction", type=float, help="fraction of layers to drop, e.g. 0.2")
    p.add_argument("--strategy", default="uniform", choices=["uniform", "last"], help="which layers --fraction drops")
    p.add_argument("--overwrite", action="store_true")


def run(args) -> int:
    from jaxalign.models.resolve import resolve_model_path
    from jaxalign.models.prune import prune_checkpoint

    drop = [int(x) for x in args.layers.split(",")] if args.layers else None
    out, dropped = prune_checkpoint(resolve_model_path(args.source), args.out_dir, drop=drop, fraction=args.fraction,
                                    strategy=args.strategy, overwrite=args.overwrite)
    print(f"dropped layers {dropped}; wrote {out}")
    return 0
