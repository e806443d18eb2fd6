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
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fmmc", description="Foundation-model material classification (two-stream DINOv2 + language)."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    parser.add_argument("--version", action="version", version=f"fmmc {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"fmmc.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"fmmc.cli.{name}":
                continue  # command not built yet
            raise
        module.add_parser(sub)
    return parser


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
