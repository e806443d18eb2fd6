"""``fmmc`` entry point. ``main(argv)`` returns an exit code, so tests drive the real command end to end.

Each subcommand lives in its own module under ``fmmc.cli`` exposing ``add_parser(subparsers)``, which
registers the parser and sets ``func=run``. Modules are imported here, but heavy libraries are imported
only inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (module under fmmc.cli) in the order `fmmc --help` lists them
COMMANDS = [
    "demo_cmd",
    "train_cmd",
    "features_cmd",
    "predict_cmd",
    "validate_cmd",
    "list_cmd",
    "eval_cmd",
    "reproduce_cmd",
    "compare_cmd",
    "segment_cmd",
    "serve_cmd",
    "synth_cmd",
    "convert_cmd",
]
# commands that run a model: the thread rule (fmmc.core.threads) is applied before they start
MODEL_COMMANDS = {"demo", "train", "features", "predict", "eval", "reproduce", "segment", "serve", "synth"}
THREADS_HELP = ("CPU threads for torch (default: $FMMC_THREADS, else torch's default capped at the CPUs this "
                "process may use); also accepted after the command")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmmc", description="Foundation-model material classification (two-stream DINOv2 + language)."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    parser.add_argument("--version", action="version", version=f"fmmc {_version()}")
    parser.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"fmmc.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"fmmc.cli.{name}":
                continue  # command not built yet
            raise
        module.add_parser(sub)
    for name, command in sub.choices.items():
        if name in MODEL_COMMANDS:
            _add_threads(command)
    return parser


def _add_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads`` after the command (and its stages): SUPPRESS keeps a value given before the command."""
    parser.add_argument("--threads", type=int, metavar="N", default=argparse.SUPPRESS, help=THREADS_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for stage in action.choices.values():
                _add_threads(stage)


def _version() -> str:
    from fmmc import __version__

    return __version__


class CLIError(Exception):
    """An error to show the user as one line, without a traceback."""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.command in MODEL_COMMANDS:
            from fmmc.core.threads import configure_threads

            configure_threads(args.threads)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and the command resumes where it stopped", file=sys.stderr)
        return 130
    except (CLIError, ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        if args.verbose >= 2:
            raise
        print(f"fmmc {args.command}: error: {e}", file=sys.stderr)
        return 1


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
