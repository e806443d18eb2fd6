"""``fmmc eval MODEL --data SPEC --out DIR [--split test] [--classes restrict|all] [--describer SPEC]``.

MODEL is a trained model directory (or hub id) or a zero-shot baseline::

    fmmc eval runs/demo/model --data fmd:/data/fmd --out runs/eval-fmd
    fmmc eval zeroshot:clip:openai/clip-vit-base-patch32 --data "dms:/data/dms?images=/data/dms/images" --out runs/clip-dms
    fmmc eval zeroshot:vlm:openai:gpt-4o --data folder:/data/google-test --out runs/gpt4o-google

Writes metrics.json, predictions.jsonl, confusion.png, reliability.png and report.md to DIR (all or
nothing) and prints a summary table.
"""

from __future__ import annotations

import argparse

from fmmc.cli.options import add_allow_outside, add_num_workers


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model or a zero-shot baseline on a test set (FMD, DMS, folder, dataset)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model dir / hub id, or zeroshot:clip:<id> / zeroshot:vlm:openai:<model>")
    p.add_argument("--data", required=True,
                   help="test set spec: fmd:/path, dms:/path?images=/rgb&min_area=0.01, folder:/path, jsonl:/path")
    p.add_argument("--out", required=True, help="result folder, written when the evaluation completes (a new or empty "
                                                "folder; an earlier eval result only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `fmmc eval` result in --out")
    p.add_argument("--split", help="split to use (DMS labels/<split>, metadata.jsonl 'split'); default: test when present")
    p.add_argument("--classes", choices=["restrict", "all"], default="restrict",
                   help="restrict predictions to the test set's classes (default, as the paper) or allow all")
    p.add_argument("--describer", help="describer spec for the test regions (replaces the model's own)")
    p.add_argument("--cache-dir", help="feature/description/mask cache root (default ~/.cache/fmmc or $FMMC_CACHE)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_allow_outside(p)
    add_num_workers(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmmc.evaluation.evaluate import EvalSettings, run_eval
    from fmmc.evaluation.report.markdown import console_summary

    settings = EvalSettings(classes=args.classes, split=args.split, n_boot=args.bootstrap, seed=args.seed,
                            progress=not args.quiet, plots=not args.no_plots)
    metrics = run_eval(args.model, args.data, args.out, settings, cache_dir=args.cache_dir,
                       describer=args.describer, device=args.device, overwrite=args.overwrite,
                       allow_outside_root=args.allow_outside_paths, num_workers=args.num_workers)
    print(console_summary(metrics, out=args.out))
    return 0
