"""``fmmc list KIND``: every spec the registry knows, one per line, spec first."""

from __future__ import annotations

import argparse

ALIASES = {"backbones": "backbone", "describers": "describer", "text-encoders": "text-encoder",
           "datasets": "dataset", "baselines": "baseline", "llms": "llm"}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("list", help="list the known specs of a component kind (backbones, datasets, llms, ...)")
    p.add_argument("kind", nargs="?",
                   help="backbones, describers, text-encoders, datasets, baselines, llms, ... (omit for all kinds)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmmc.core.registry import REGISTRIES, registry

    if args.kind is None:
        kinds = list(REGISTRIES)
    else:
        kind = ALIASES.get(args.kind, args.kind.rstrip("s") if args.kind.rstrip("s") in REGISTRIES else args.kind)
        kinds = [registry(kind).kind]
    for kind in kinds:
        for spec, help_ in registry(kind).specs():
            line = f"{spec}\t{help_}" if args.kind else f"{spec}\t[{kind}] {help_}"
            print(line)
    return 0
