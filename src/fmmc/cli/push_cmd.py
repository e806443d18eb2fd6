"""``fmmc push MODEL REPO_ID [--private] [--revision BRANCH] [--token T] [--eval DIR ...]``: share a model.

    fmmc push runs/a me/mug-materials                         # a run folder (its model/) or a model folder
    fmmc push runs/a me/mug-materials --eval runs/eval-fmd    # the card's model-index gets that eval's metrics
    fmmc push runs/a me/mug-materials --private --revision v2 # a new private repo; branch v2 (created)

The model is loaded first (a folder that is not a complete fmmc model is refused), its card ``README.md`` is
(re)written in the folder (a README you wrote yourself is kept; ``--overwrite-card`` replaces it), then the
folder is uploaded with ``huggingface_hub`` (``create_repo`` + ``upload_folder``) to ``HF_ENDPOINT`` (default
the public hub). ``MaterialClassifier.from_pretrained("REPO_ID")`` loads it back.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("push", help="upload a trained model (with its model card) to the Hugging Face hub",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_push_options(p, "model folder (from `fmmc train --out`, or its model/ folder)")
    p.add_argument("--eval", action="append", default=[], metavar="DIR",
                   help="an `fmmc eval --out` folder whose metrics go into the card's model-index (repeatable)")
    p.add_argument("--license", help="the card's licence (default apache-2.0, fmmc's; the base models' apply too)")
    p.add_argument("--dataset", action="append", default=[], metavar="ID",
                   help="hub id of a dataset the model was trained on, for the card (repeatable)")
    p.add_argument("--overwrite-card", action="store_true", help="replace a README.md that fmmc did not write")
    p.set_defaults(func=run)


def add_push_options(p: argparse.ArgumentParser, what: str) -> None:
    """What every push takes (``fmmc push``, ``fmmc synth push``)."""
    p.add_argument("source", metavar="MODEL" if "model" in what else "DATASET", help=what)
    p.add_argument("repo_id", metavar="REPO_ID", help="hub repo, ORG/NAME (created if missing)")
    p.add_argument("--private", action="store_true", help="make a new repo private (an existing one keeps its setting)")
    p.add_argument("--revision", help="branch to push to (created from main if missing; default main)")
    p.add_argument("--token", help="hub token with write access (default: `hf auth login`'s, or $HF_TOKEN)")
    p.add_argument("--message", help="commit message")


def run(args: argparse.Namespace) -> int:
    from fmmc.model.classifier import MaterialClassifier
    from fmmc.model.hub_push import check_can_push, push_folder
    from fmmc.model.locate import model_dir

    check_can_push(f"{args.source} to {args.repo_id}")  # before loading anything
    if not Path(args.source).expanduser().is_dir():
        raise ValueError(f"{args.source}: no such model folder (push a folder `fmmc train --out` wrote, or its model/)")
    folder = model_dir(args.source)
    model = MaterialClassifier.from_pretrained(folder)  # refuses a folder that is not a complete model
    if not model.write_card(folder, overwrite=args.overwrite_card, eval_results=args.eval, repo_id=args.repo_id,
                            license=args.license, datasets=args.dataset):
        print(f"kept {folder / 'README.md'} (not written by fmmc; --overwrite-card replaces it)")
    url = push_folder(folder, args.repo_id, private=args.private or None, revision=args.revision, token=args.token,
                      commit_message=args.message or "Upload fmmc material classifier")
    print(f"pushed {folder} -> {args.repo_id}: {url}")
    return 0
