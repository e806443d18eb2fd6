"""``fmmc train --data DATASET|folder:DIR --out RUN [--config FILE] [key=value ...]``."""

from __future__ import annotations

import argparse

from fmmc.cli.options import add_allow_outside, add_num_workers, add_train_flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the two-stream classifier on a labelled dataset",
                       description="Train the head on frozen backbone features (the paper) or fine-tune (mode=full). "
                                   "Settings: defaults < --config FILE < flags < key=value overrides "
                                   "(any TrainConfig field, e.g. lr=1e-3 streams=vision).")
    p.add_argument("--data", help="dataset folder with metadata.jsonl, or folder:DIR (DIR/<class>/*.jpg, one "
                                  "whole-image region per image, labelled by its folder; as `fmmc eval` reads it)")
    p.add_argument("--out", help="run directory (model in OUT/model)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a finished `fmmc train` run in --out (a stopped one is resumed without it)")
    add_train_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", help="key=value TrainConfig overrides")
    add_allow_outside(p)
    add_num_workers(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmmc.cli.options import train_overrides
    from fmmc.core.config import load_config
    from fmmc.train.config import TrainConfig
    from fmmc.train.trainer import train

    flags = (("data", "data"), ("out", "out"), ("backbone", "backbone"), ("text_encoder", "text_encoder"),
             ("describer", "describer"), ("streams", "streams"), ("epochs", "epochs"))
    cfg = load_config(TrainConfig, args.config, train_overrides(args, flags))
    run_dir = train(cfg, overwrite=args.overwrite)
    import json

    summary = json.loads((run_dir / "summary.json").read_text())
    acc = summary.get("val_acc")
    recipe = summary.get("recipe") or {}
    if "auto" in (recipe.get("name"), recipe.get("asked")):
        print(recipe["why"])  # what recipe=auto chose, and why
    print(f"model: {run_dir / 'model'}  (train {summary['n_train']}, val {summary['n_val']}"
          + (f", val acc {acc:.3f}" if acc is not None else "") + ")")
    return 0
