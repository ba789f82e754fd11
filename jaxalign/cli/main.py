"""`jaxalign COMMAND ...`: one subcommand per module in jaxalign.cli."""

from __future__ import annotations

import argparse
import logging
import sys

from jaxalign.cli import convert, evaluate, generate, pipeline, prune, score, train

COMMANDS = {
    "train": train,
    "generate": generate,
    "score": score,
    "eval": evaluate,
    "pipeline": pipeline,
    "convert": convert,
    "prune": prune,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxalign", description="Align and distil language models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(sub.add_parser(name, help=module.HELP, description=module.__doc__))
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"jaxalign {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
