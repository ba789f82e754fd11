"""`jaxalign COMMAND ...`: one subcommand per module in jaxalign.cli."""

from __future__ import annotations

import argparse
import logging
import os
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
    from jaxalign import __version__

    parser = argparse.ArgumentParser(prog="jaxalign", description="Align and distil language models in JAX.")
    parser.add_argument("--version", action="version", version=f"jaxalign {__version__}")
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


#: Set to 1 to get the full traceback of an error instead of its one-line message.
TRACEBACK_ENV = "JAXALIGN_TRACEBACK"
#: Exceptions whose message is written for users (it names the key, file or row); others get their type prefixed.
_USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, RuntimeError)


def error_line(e: BaseException) -> str:
    """The one-line message of ``e``: its first line (detail lines follow it in ``error_text``), with the
    exception type prefixed unless it is one of jaxalign's own user-facing kinds."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    first = lines[0].strip() if lines else ""
    if isinstance(e, OSError) and e.filename is not None and not isinstance(e, (FileNotFoundError, FileExistsError)):
        first = f"{e.filename}: {e.strerror}"  # PermissionError, IsADirectoryError, NotADirectoryError, ...
    elif not isinstance(e, _USER_ERRORS) or type(e).__module__.split(".")[0] not in ("jaxalign", "builtins"):
        first = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return first


def main(argv: list[str] | None = None) -> int:
    """Run one command; every error ends as ``jaxalign COMMAND: error: <one line>`` on stderr and exit 2
    (details of a multi-row data error follow on the next lines; ``JAXALIGN_TRACEBACK=1`` shows the traceback)."""
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except KeyboardInterrupt:
        print(f"jaxalign {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `jaxalign train --help-config | head`: the reader left; not an error
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return 0
    except Exception as e:  # noqa: BLE001 - the CLI's one place that turns errors into messages
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        detail = [line for line in str(e).splitlines()[1:] if line.strip()] if isinstance(e, ValueError) else []
        print("\n".join([f"jaxalign {args.command}: error: {error_line(e)}", *detail]), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
