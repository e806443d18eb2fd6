"""``fmmc validate DATASET``: report every problem of a dataset with its file and line."""

from __future__ import annotations

import argparse

from fmmc.cli.options import add_allow_outside


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a dataset folder (metadata.jsonl, images, masks, labels)")
    p.add_argument("dataset", help="folder with metadata.jsonl")
    p.add_argument("--taxonomy", default="default", help="taxonomy name or file the labels must belong to")
    p.add_argument("--no-files", action="store_true", help="check metadata only, do not open images/masks")
    add_allow_outside(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmmc.data.validate import validate_dataset
    from fmmc.taxonomy import load_taxonomy

    if str(args.dataset).startswith("folder:"):
        raise ValueError(f"{args.dataset}: validate checks a dataset's metadata.jsonl; a folder:DIR tree is read "
                         "directly by train, eval and features (they report its problems), or write one with "
                         f"`fmmc convert {args.dataset} OUT` and validate OUT")
    n, problems = validate_dataset(args.dataset, load_taxonomy(args.taxonomy), check_files=not args.no_files,
                                   allow_outside_root=args.allow_outside_paths)
    for p in problems:
        print(p)
    notes = [] if problems else usage_notes(args.dataset, args.allow_outside_paths)
    for note in notes:
        print(f"note: {note}")
    print(f"{n} regions checked, {len(problems)} problem(s)")
    return 1 if problems else 0


def usage_notes(dataset: str, allow_outside_paths: bool) -> list[str]:
    """What a valid dataset cannot do yet, said before `fmmc train` refuses it: no training regions, and
    lines without a description (which a two-stream model trained with describer=metadata needs)."""
    from collections import Counter

    from fmmc.data.dataset import load_dataset

    regions = load_dataset(dataset, allow_outside_root=allow_outside_paths)
    splits = Counter(r.split or "(none: split automatically)" for r in regions)
    notes = []
    if regions and all(r.split == "test" for r in regions):
        notes.append("every region is split=test: fine for `fmmc eval`; `fmmc train` needs regions of another split")
    missing = [r for r in regions if r.description is None]
    if missing:
        notes.append(f"{len(missing)} of {len(regions)} regions have no 'description' (first: {missing[0].id!r}): "
                     "`fmmc train` with the default two streams and describer=metadata needs one on every line "
                     "(or train with --streams vision, or a describer that writes them)")
    if len(splits) > 1 or notes:
        notes.append("splits: " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))
    return notes
