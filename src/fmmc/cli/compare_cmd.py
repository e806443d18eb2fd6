"""``fmmc compare RUN_DIR RUN_DIR... [--metrics acc,macc,miou]``: deltas between result folders.

    fmmc compare runs/eval-fmd runs/clip-fmd            # two `fmmc eval` folders
    fmmc compare runs/paper-seed0 runs/paper-seed1      # two `fmmc reproduce` folders, cell by cell

The first folder is the reference; the others show their value and the difference to it.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="print metric deltas between eval or reproduce result folders",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="result folders (the first is the reference)")
    p.add_argument("--metrics", default="acc,macc,miou", help="comma-separated: acc, macc, miou, top5, ece")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON (values, deltas, warning)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from fmmc.evaluation.compare import METRICS, compare_json, compare_text, load_run

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    bad = [m for m in metrics if m not in METRICS]
    if bad:
        raise ValueError(f"--metrics {bad}: choose from {', '.join(METRICS)}")
    runs = [load_run(r) for r in args.runs]
    print(json.dumps(compare_json(runs, metrics), indent=1) if args.json else compare_text(runs, metrics))
    return 0
