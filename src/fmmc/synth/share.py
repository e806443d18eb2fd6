"""Share an fmmc dataset on the Hugging Face hub (``fmmc synth push DATASET REPO_ID``).

    >>> push_dataset("runs/synth/dataset", "me/synth-materials", private=True)   # doctest: +SKIP

The folder is read with fmmc's own loader first (a folder that is not a valid fmmc dataset, or names files
outside itself, is refused before anything is sent). Its card is the ``README.md`` that ``fmmc synth build``
wrote; a dataset without one (``fmmc convert``, a hand-made one) gets one written with
``huggingface_hub.DatasetCard`` (a README already there is never replaced). On the hub it loads with
``datasets.load_dataset("ORG/NAME")`` as an ``imagefolder`` (docs/dataset-format.md).
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
CARD_NAME = "README.md"


def dataset_card(root: Path, regions: list[Any]) -> Any:
    """A ``huggingface_hub.DatasetCard`` for an fmmc dataset without one: counts per class and split."""
    from huggingface_hub import DatasetCard

    from fmmc.synth.card import card_data, loading_section, md_table, size_category

    counts = Counter((str(r.label), r.split or "unsplit") for r in regions)
    splits = sorted({s for _, s in counts}, key=lambda s: (s != "train", s))
    labels = sorted({c for c, _ in counts})
    rows = [[c, *(counts[(c, s)] for s in splits), sum(counts[(c, s)] for s in splits)] for c in labels]
    masks = sum(r.mask is not None for r in regions)
    body = [
        f"# {root.name} (fmmc dataset)", "",
        f"{len(regions)} labelled regions ({masks} with a mask) in {len(labels)} classes; the label holds for the "
        "region (mask, box, or the whole image). Files: `metadata.jsonl` (fmmc format, `fmmc validate .`) and the "
        "images and masks it names.", "",
        *loading_section(),
        "## Regions per class and split", "", md_table(["class", *splits, "total"], rows), "",
    ]
    front = card_data(f"{root.name} (fmmc)", size_category(len(regions)), [], license="other").to_yaml()
    return DatasetCard("\n".join(["---", front, "---", "", *body]))


def push_dataset(root: str | Path, repo_id: str, *, private: bool | None = None, revision: str | None = None,
                 token: str | None = None, commit_message: str | None = None) -> tuple[str, bool]:
    """Upload dataset folder ``root`` to hub dataset repo ``repo_id``; returns (commit URL, whether a card
    was written now). See the module docstring."""
    from fmmc.data.dataset import load_dataset
    from fmmc.model.hub_push import check_can_push, push_folder

    root = Path(root)
    check_can_push(f"{root} to {repo_id}")
    if not (root / "metadata.jsonl").is_file():
        raise ValueError(f"{root}: not an fmmc dataset (no metadata.jsonl); `fmmc convert` or `fmmc synth build` "
                         "writes one")
    regions = load_dataset(root)  # refuses a damaged dataset or one naming files outside the folder
    wrote = False
    if not (root / CARD_NAME).exists():
        from fmmc.core.io import write_text_atomic

        write_text_atomic(root / CARD_NAME, str(dataset_card(root, regions)))
        log.info("%s: wrote a dataset card (edit it and push again to change it)", root / CARD_NAME)
        wrote = True
    url = push_folder(root, repo_id, repo_type="dataset", private=private, revision=revision, token=token,
                      commit_message=commit_message or "Upload fmmc dataset")
    return url, wrote
