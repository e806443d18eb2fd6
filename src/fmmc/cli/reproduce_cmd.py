"""``fmmc reproduce CONFIG [--out DIR] [--only TABLE,...] [--dry-run] [--fail-fast] [key=value ...]``.

Runs the paper's experiment grid from a YAML file (main table, streams, backbone x training mode, masks,
data scale; in paper.yaml also FMD under both protocols: in-domain, a head trained on 10 random halves of
FMD, beside cross-domain) and writes every table beside the published numbers and their sources::

    fmmc reproduce configs/paper.yaml --out runs/paper             # real checkpoints and datasets
    fmmc reproduce configs/offline.yaml --out runs/offline         # minutes on CPU, generated data
    fmmc reproduce configs/paper.yaml --only main,streams train.epochs=50

Re-running after a crash or Ctrl-C skips every finished cell (``DIR/cells/<cell>.json``).
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="run the paper's experiment grid from a YAML config (resumable)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="grid YAML (configs/paper.yaml, configs/offline.yaml)")
    p.add_argument("--out", help="output folder (default: the config's `out`)")
    p.add_argument("--only", help="comma-separated table ids to run (default: all)")
    p.add_argument("--dry-run", action="store_true", help="print the cells and trainings, run nothing")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing cell (default: go on)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.epochs=50 eval.n_boot=200")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmmc.evaluation.grid import load_grid_config, plan

    cfg = load_grid_config(args.config, args.overrides, out=args.out)
    only = [s.strip() for s in args.only.split(",")] if args.only else None
    if args.dry_run:
        cells = plan(cfg)
        models = {c.model_id for c in cells}
        for c in cells:
            if only is None or any(p[0] in only for p in c.places):
                places = "; ".join(f"{t}/{r}/{col}" for t, r, col in c.places)
                print(f"{c.cell_id}\t{places}")
        print(f"{len(cells)} cells, {len(models)} models ({sum(c.train is not None for c in cells)} cells need training)")
        return 0
    from fmmc.evaluation.report.tables import tables_text
    from fmmc.evaluation.reproduce import run_grid

    result = run_grid(cfg, fail_fast=args.fail_fast, progress=not args.quiet, only=only,
                      echo=lambda line: print(line, flush=True))
    print()
    print(tables_text(result, cfg))
    skipped = len(result.results) - len(result.ran)
    print(f"{len(result.ran)} cell(s) run, {skipped} already finished, {len(result.failed)} failed; "
          f"report: {result.out / 'report.md'}")
    for cell, err in result.failed.items():
        print(f"  failed {cell}: {err[:300]}")
    return 1 if result.failed else 0
