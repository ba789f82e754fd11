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


def _layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--layers={text!r}: give comma-separated layer indices, e.g. 5,9,13") from None


def run(args) -> int:
    from jaxalign.cli._stage import check_model_output
    from jaxalign.models.prune import prune_checkpoint
    from jaxalign.models.resolve import resolve_model_path

    drop = _layers(args.layers) if args.layers else None
    source = resolve_model_path(args.source)
    check_model_output(source, args.out_dir, overwrite=args.overwrite)
    out, dropped = prune_checkpoint(source, args.out_dir, drop=drop, fraction=args.fraction,
                                    strategy=args.strategy, overwrite=args.overwrite)
    print(f"dropped layers {dropped}; wrote {out}")
    return 0
