"""``fmmc`` entry point. ``main(argv)`` returns an exit code, so tests drive the real command end to end.

Each subcommand lives in its own module under ``fmmc.cli`` exposing ``add_parser(subparsers)``, which
registers the parser and sets ``func=run``. Modules are imported here, but heavy libraries are imported
only inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import traceback

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
    "export_cmd",
    "push_cmd",
]
# commands that run a model: the thread rule (fmmc.core.threads) is applied before they start
MODEL_COMMANDS = {"demo", "train", "features", "predict", "eval", "reproduce", "segment", "serve", "synth", "export"}
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
        _add_verbose(command)
    return parser


def _add_verbose(parser: argparse.ArgumentParser) -> None:
    """``-v`` after the command too (SUPPRESS keeps a count given before it)."""
    parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                        help="more logging (-v info, -vv debug)")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for stage in action.choices.values():
                _add_verbose(stage)


# options whose value may start with "-" (a box partly left of or above the image: --box -50,-50,10,10)
NUMERIC_LIST_OPTIONS = ("--box", "--point")


def _join_numeric_values(argv: list[str]) -> list[str]:
    """``--box -50,-50,10,10`` -> ``--box=-50,-50,10,10``: argparse would take ``-50,...`` for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in NUMERIC_LIST_OPTIONS and i + 1 < len(argv) and argv[i + 1][:1] == "-" and argv[i + 1][1:2].isdigit():
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; ``key=value`` overrides may stand anywhere after the command, between its options
    (``fmmc train --data d lr=1e-3 --out r epochs=5``), not only together at the end."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        if isinstance(getattr(args, "overrides", None), list) and all(_OVERRIDE.match(t) for t in extra):
            args.overrides.extend(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _quiet_downloads() -> None:
    """No hub/transformers progress bars (``--quiet``): they are not fmmc's and would clutter the output."""
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:  # pragma: no cover
        pass
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


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
    args = _parse(parser, _join_numeric_values(list(sys.argv[1:] if argv is None else argv)))
    if getattr(args, "quiet", False):
        _quiet_downloads()
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
    except BrokenPipeError:  # `fmmc predict ... | head`: the reader left; not an error of ours
        _silence_stdout()
        return 0
    except OSError as e:  # disk full, read-only, a path that is a file: one line naming the path and the fix
        from fmmc.core.errors import describe_os_error, is_io_fault

        if args.verbose >= 1:
            traceback.print_exc()
        print(f"fmmc {args.command}: error: {describe_os_error(e) if is_io_fault(e) else e}", file=sys.stderr)
        return 1
    except (CLIError, ValueError, ImportError, RuntimeError) as e:
        if args.verbose >= 2:
            raise
        print(f"fmmc {args.command}: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug of ours: still one line (the traceback with -v), and a way to report it
        if args.verbose >= 1:
            traceback.print_exc()
        print(f"fmmc {args.command}: internal error: {type(e).__name__}: {e} (rerun with -v for the traceback "
              "and please report it)", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so Python's exit-time flush raises nothing."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor (tests)
        pass


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":  # `python -m fmmc.cli.main`: run the imported module, so its exception classes are the ones caught
    from fmmc.cli.main import entry as _entry

    _entry()
