"""Convert checkpoints: GGUF -> HF folder, HF -> HF (dtype change), with an optional check against transformers."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "gguf -> hf, hf -> hf (dtype change); --verify checks against transformers"


def add_parser(p: argparse.ArgumentParser):
    p.add_argument("source", help="a .gguf file, an HF folder, or a hub id")
    p.add_argument("out_dir", help="HF folder to write")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="stored dtype")
    p.add_argument("--max-shard-size", type=float, default=5.0, help="GB per safetensors shard (default 5)")
    p.add_argument("--overwrite", action="store_true", help="replace out_dir if it exists")
    p.add_argument("--verify", action="store_true", help="compare logits and greedy text with transformers (needs torch)")
    p.add_argument("--atol", type=float, default=1e-3, help="--verify tolerance on logits (default 1e-3)")


def run(args) -> int:
    from jaxalign.cli._stage import check_model_output
    from jaxalign.models.pretrained import load_pretrained, save_pretrained
    from jaxalign.models.resolve import resolve_model_path

    source = Path(args.source)
    if source.suffix == ".gguf":
        from jaxalign.models.gguf_import import gguf_to_hf

        if not source.is_file():
            raise FileNotFoundError(f"{source}: GGUF file not found")
        check_model_output(source, args.out_dir, overwrite=args.overwrite)
        gguf_to_hf(source, args.out_dir, dtype=args.dtype, overwrite=args.overwrite)
    else:
        folder = resolve_model_path(args.source)
        check_model_output(folder, args.out_dir, overwrite=args.overwrite)
        model, tokenizer = load_pretrained(folder, dtype=args.dtype)
        save_pretrained(model, tokenizer, args.out_dir, max_shard_size=int(args.max_shard_size * 1024**3), overwrite=args.overwrite)
        source = folder
    print(f"wrote {args.out_dir}")
    if args.verify:
        from jaxalign.models.verify import verify_conversion

        report = verify_conversion(args.out_dir, source)
        print(report.summary())
        if not report.ok(args.atol):
            print(f"verification FAILED (atol {args.atol})")
            return 1
        print("verification passed")
    return 0
