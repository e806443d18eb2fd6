"""``fmmc eval MODEL --data SPEC --out DIR`` (cross-domain) or ``fmmc eval DATA --protocol splits:N --out DIR``.

MODEL is a trained model directory (or hub id) or a zero-shot baseline::

    fmmc eval runs/demo/model --data fmd:/data/fmd --out runs/eval-fmd
    fmmc eval zeroshot:clip:openai/clip-vit-base-patch32 --data "dms:/data/dms?images=/data/dms/images" --out runs/clip-dms
    fmmc eval zeroshot:vlm:openai:gpt-4o --data folder:/data/google-test --out runs/gpt4o-google

Writes metrics.json, predictions.jsonl, confusion.png, reliability.png and report.md to DIR (all or
nothing) and prints a summary table.

In-domain protocol (texture papers on FMD): train a head on each of N random 50/50 splits of the test
set itself and score the other half; mean and std over the splits. Training options as `fmmc train`
(--config FILE, flags, key=value TrainConfig overrides)::

    fmmc eval fmd:/data/fmd --protocol splits:10 --backbone hf:facebook/dinov2-base --streams vision --out runs/fmd-splits
    fmmc eval fmd:/data/fmd --splits runs/fmd-splits/splits.json --backbone hf:facebook/dinov2-base \\
        --streams vision --out runs/fmd-splits-again          # exactly the same splits

Writes metrics.json (mean, std, every split), splits.json (the region ids of each half), report.md and
splits/NN/ (each split's eval folder) to DIR.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from fmmc.cli.options import add_allow_outside, add_num_workers, add_train_flags

if TYPE_CHECKING:
    from fmmc.evaluation.evaluate import EvalSettings

TRAIN_FLAGS = (("backbone", "backbone"), ("text_encoder", "text_encoder"), ("streams", "streams"),
               ("epochs", "epochs"))


def add_parser(sub: argparse._SubParsersAction) -> None:
    from fmmc.evaluation.protocols import PROTOCOL_HELP

    p = sub.add_parser("eval", help="evaluate a model or a zero-shot baseline on a test set (FMD, DMS, folder, "
                                    "dataset), or a head trained on random halves of it (--protocol splits:N)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model dir / hub id, or zeroshot:clip:<id> / zeroshot:vlm:openai:<model>; with "
                                 "--protocol splits:N (or --splits FILE): the test set spec itself")
    p.add_argument("--data", help="test set spec: fmd:/path, dms:/path?images=/rgb&min_area=0.01, folder:/path, "
                                  "jsonl:/path (cross protocol; required there)")
    p.add_argument("--out", required=True, help="result folder, written when the evaluation completes (a new or empty "
                                                "folder; an earlier eval result only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `fmmc eval` result in --out")
    p.add_argument("--protocol", default="cross", help=PROTOCOL_HELP)
    p.add_argument("--splits", metavar="FILE", help="rerun the splits of an earlier run (its splits.json)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the random splits (splits:N)")
    p.add_argument("--split", help="split to use (DMS labels/<split>, metadata.jsonl 'split'); default: test when present")
    p.add_argument("--classes", choices=["restrict", "all"], default="restrict",
                   help="restrict predictions to the test set's classes (default, as the paper) or allow all")
    p.add_argument("--describer", help="describer spec for the test regions (replaces the model's own); splits:N: "
                                       "the training config's describer")
    p.add_argument("--cache-dir", help="feature/description/mask cache root (default ~/.cache/fmmc or $FMMC_CACHE)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs (0: none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    g = p.add_argument_group("training, for --protocol splits:N (as `fmmc train`)")
    add_train_flags(g, describer=False)  # --describer is above: it describes the test regions too
    g.add_argument("overrides", nargs="*", help="key=value TrainConfig overrides (splits:N), e.g. lr=1e-3")
    add_allow_outside(p)
    add_num_workers(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmmc.cli.main import CLIError
    from fmmc.evaluation.evaluate import EvalSettings
    from fmmc.evaluation.protocols import parse_protocol

    settings = EvalSettings(classes=args.classes, split=args.split, n_boot=args.bootstrap, seed=args.seed,
                            progress=not args.quiet, plots=not args.no_plots)
    protocol = parse_protocol("splits:1" if args.splits and args.protocol == "cross" else args.protocol)
    if protocol.kind == "splits":
        return _run_splits(args, settings)
    training = [f"--{f.replace('_', '-')}" for f, _ in TRAIN_FLAGS + (("config", "config"),) if getattr(args, f)]
    if args.overrides or training:
        raise CLIError(f"{', '.join(training + args.overrides)} set(s) training, which only the in-domain "
                       "protocol does; add --protocol splits:N, or train with `fmmc train` and evaluate the model")
    if not args.data:
        raise CLIError("--data SPEC is required (the test set the model is evaluated on); or give "
                       "--protocol splits:N to train on halves of a test set")
    from fmmc.evaluation.evaluate import run_eval
    from fmmc.evaluation.report.markdown import console_summary

    metrics = run_eval(args.model, args.data, args.out, settings, cache_dir=args.cache_dir,
                       describer=args.describer, device=args.device, overwrite=args.overwrite,
                       allow_outside_root=args.allow_outside_paths, num_workers=args.num_workers)
    print(console_summary(metrics, out=args.out))
    return 0


def _run_splits(args: argparse.Namespace, settings: EvalSettings) -> int:
    from fmmc.cli.main import CLIError
    from fmmc.cli.options import train_overrides
    from fmmc.core.config import load_config
    from fmmc.evaluation.in_domain import run_splits
    from fmmc.evaluation.report.markdown import splits_console
    from fmmc.train.config import TrainConfig

    if args.data:
        raise CLIError(f"with --protocol {args.protocol} the test set is the first argument "
                       f"({args.model!r}); drop --data {args.data}")
    overrides = train_overrides(args, TRAIN_FLAGS + (("describer", "describer"),), first=(f"device={args.device}",))
    cfg = load_config(TrainConfig, args.config, overrides)
    protocol = None if args.splits and args.protocol == "cross" else args.protocol
    metrics = run_splits(args.model, args.out, cfg, protocol, seed=args.split_seed, splits_file=args.splits,
                         settings=settings, cache_dir=args.cache_dir, overwrite=args.overwrite,
                         allow_outside_root=args.allow_outside_paths, echo=None if args.quiet else print)
    print(splits_console(metrics, out=args.out))
    return 0
