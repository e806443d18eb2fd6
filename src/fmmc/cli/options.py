"""Options that several commands share, defined once so their names and help read the same everywhere."""

from __future__ import annotations

import argparse

ALLOW_OUTSIDE_HELP = ("trust the dataset: accept absolute paths and ../ that leave its folder (default: an error, "
                      "since datasets come from the internet; also FMMC_ALLOW_OUTSIDE_PATHS=1)")


def add_allow_outside(p: argparse.ArgumentParser) -> None:
    """``--allow-outside-paths`` (:mod:`fmmc.data.confine`)."""
    p.add_argument("--allow-outside-paths", action="store_true", help=ALLOW_OUTSIDE_HELP)
