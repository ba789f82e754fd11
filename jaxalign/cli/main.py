"""`jaxalign COMMAND ...`: one subcommand per module in jaxalign.cli."""

from __future__ import annotations

import argparse
import logging
import sys

from jaxalign.cli import convert, evaluate, generate, pipeline, plan, prune, score, train

COMMANDS = {
    "train": train,
    "generate": generate,
    "score": score,
    "eval": evaluate,
    "pipeline": pipeline,
    "convert": convert,
    "prune": prune,
    "plan": plan,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxalign", description="Align and distil language models in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add_parser(sub.add_parser(name, help=module.HELP, description=module.__doc__))
    return parser


#: Libraries whose INFO lines would bury jaxalign's own progress (Orbax logs every save step
#: through absl; jax reports each accelerator plugin it did not find). Their warnings still show.
QUIET_LOGGERS = ("absl", "jax._src.xla_bridge")


def configure_logging() -> None:
    """jaxalign at INFO, the libraries in ``QUIET_LOGGERS`` at WARNING."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("jaxalign").setLevel(logging.INFO)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError) as e:
        print(f"jaxalign {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
