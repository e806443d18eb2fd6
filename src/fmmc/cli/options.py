"""Options that several commands share, defined once so their names and help read the same everywhere."""

from __future__ import annotations

import argparse
from typing import Any

ALLOW_OUTSIDE_HELP = ("trust the dataset: accept absolute paths and ../ that leave its folder (default: an error, "
                      "since datasets come from the internet; also FMMC_ALLOW_OUTSIDE_PATHS=1)")


def add_allow_outside(p: argparse.ArgumentParser) -> None:
    """``--allow-outside-paths`` (:mod:`fmmc.data.confine`)."""
    p.add_argument("--allow-outside-paths", action="store_true", help=ALLOW_OUTSIDE_HELP)


def add_train_flags(p: Any, describer: bool = True) -> None:
    """The TrainConfig flags of ``fmmc train`` (and ``fmmc eval --protocol splits:N``), read back by
    :func:`train_overrides`: ``--config``, ``--backbone``, ``--text-encoder``, ``--describer``, ``--streams``,
    ``--epochs``."""
    p.add_argument("--config", help="YAML/JSON TrainConfig file")
    p.add_argument("--backbone", help="vision backbone spec (see `fmmc list backbones`)")
    p.add_argument("--text-encoder", help="text encoder spec (see `fmmc list text-encoders`)")
    if describer:
        p.add_argument("--describer", help="describer spec (see `fmmc list describers`)")
    p.add_argument("--streams", choices=["both", "vision", "language"])
    p.add_argument("--epochs", type=int)


def add_num_workers(p: argparse.ArgumentParser) -> None:
    """``--num-workers N``: processes that decode images for feature extraction (:mod:`fmmc.vision.loading`)."""
    p.add_argument("--num-workers", type=int, metavar="N",
                   help="processes decoding images (default: up to 8 with a GPU; on a CPU 0 up to 2 cores, else a "
                        "quarter of them); 0 decodes in this process, one batch ahead in a thread")


def train_overrides(args: argparse.Namespace, flags: tuple[tuple[str, str], ...],
                    first: tuple[str, ...] = ()) -> list[str]:
    """``key=value`` overrides of a ``TrainConfig`` from a command's flags: ``first``, then the flags in
    ``flags`` (attribute, config field) that are set, then the command's own ``key=value`` arguments, then
    ``--quiet``, ``--num-workers`` and ``--allow-outside-paths`` (defaults < --config < flags < key=value)."""
    overrides = [*first, *args.overrides]
    for flag, key in flags:
        val = getattr(args, flag)
        if val is not None:
            overrides.insert(0, f"{key}={val}")
    if getattr(args, "quiet", False):
        overrides.append("progress=false")
    if getattr(args, "num_workers", None) is not None:
        overrides.append(f"num_workers={args.num_workers}")
    if getattr(args, "allow_outside_paths", False):
        overrides.append("allow_outside_paths=true")
    return overrides
