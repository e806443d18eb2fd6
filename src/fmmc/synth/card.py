"""The dataset card (``README.md``) and per-class contact sheets of a synthetic dataset.

    >>> write_contact_sheets(regions, Path("runs/synth/dataset/contact_sheets"), taxonomy)  # doctest: +SKIP
    >>> write_card(Path("runs/synth/dataset/README.md"), report, classes, config)           # doctest: +SKIP

A contact sheet shows up to ``max_items`` thumbnails of one class (a seeded sample), each with its mask
outlined in the class colour and the object name underneath: the quickest way to eyeball label quality.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml
from PIL import Image, ImageDraw

from fmmc.data.masks import mask_outline
from fmmc.data.records import Region
from fmmc.data.regions import load_region
from fmmc.taxonomy import Taxonomy

if TYPE_CHECKING:
    from huggingface_hub import DatasetCardData

    from fmmc.synth.build import BuildReport

CAPTION_H = 14


def thumbnail(region: Region, size: int, color: tuple[int, int, int]) -> Image.Image:
    """``size`` x ``size`` tile: the image letterboxed on grey, its mask outlined in ``color``."""
    img, region_mask = load_region(region)
    scale = size / max(img.size)
    w, h = max(1, round(img.width * scale)), max(1, round(img.height * scale))
    small = img.resize((w, h), Image.Resampling.BILINEAR)
    if region.mask is not None and region_mask is not None:
        mask = Image.fromarray(region_mask.astype(np.uint8) * 255)
        mask = mask.resize((w, h), Image.Resampling.NEAREST)
        edge = mask_outline(np.asarray(mask) > 0, 3)
        arr = np.asarray(small).copy()
        arr[edge] = color
        small = Image.fromarray(arr)
    tile = Image.new("RGB", (size, size), (40, 40, 40))
    tile.paste(small, ((size - w) // 2, (size - h) // 2))
    return tile


def contact_sheet(regions: list[Region], color: tuple[int, int, int], thumb: int = 128, cols: int = 8) -> Image.Image:
    cols = max(1, min(cols, len(regions)))
    rows = (len(regions) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + CAPTION_H)), (20, 20, 20))
    draw = ImageDraw.Draw(sheet)
    for k, reg in enumerate(regions):
        x, y = (k % cols) * thumb, (k // cols) * (thumb + CAPTION_H)
        sheet.paste(thumbnail(reg, thumb, color), (x, y))
        caption = str(reg.extra.get("submaterial", "")) + " " + str(reg.extra.get("object", reg.id))
        draw.text((x + 2, y + thumb + 1), caption.strip()[: max(4, thumb // 6)], fill=(230, 230, 230))
    return sheet


def write_contact_sheets(regions: list[Region], out: Path, taxonomy: Taxonomy, max_items: int = 48,
                         thumb: int = 128, seed: int = 0) -> list[Path]:
    """One ``<label>.png`` per class under ``out``; ``max_items=0`` writes none."""
    if max_items <= 0:
        return []
    by_label: dict[str, list[Region]] = defaultdict(list)
    for r in regions:
        by_label[str(r.label)].append(r)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, regs in sorted(by_label.items()):
        regs = sorted(regs, key=lambda r: r.id)
        if len(regs) > max_items:
            regs = sorted(random.Random(f"{seed}:{label}:sheet").sample(regs, max_items), key=lambda r: r.id)
        color = taxonomy.color(taxonomy.index(label)) if label in taxonomy else (255, 214, 0)
        path = out / f"{label}.png"
        contact_sheet(regs, color, thumb).save(path)
        paths.append(path)
    return paths


def md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def size_category(n: int) -> str:
    """The hub's ``size_categories`` value for ``n`` regions."""
    return "n<1K" if n < 1000 else "1K<n<10K" if n < 10_000 else "10K<n<100K" if n < 100_000 else "100K<n<1M"


def card_data(pretty_name: str, size: str, tags: list[str], license: str = "other") -> DatasetCardData:
    """The front matter of an fmmc dataset card (``huggingface_hub.DatasetCardData``)."""
    from huggingface_hub import DatasetCardData

    return DatasetCardData(pretty_name=pretty_name, task_categories=["image-classification", "image-segmentation"],
                           size_categories=[size], license=license, tags=["fmmc", "materials", *tags])


def loading_section() -> list[str]:
    """How to load an fmmc dataset with fmmc and with Hugging Face ``datasets`` (docs/dataset-format.md)."""
    return [
        "## Loading", "",
        "```python", "from datasets import load_dataset", "",
        'ds = load_dataset("imagefolder", data_dir="path/to/this/folder")["train"]   # or load_dataset("ORG/REPO")',
        'ds[0]["image"], ds[0]["mask"], ds[0]["label"]   # PIL image, PIL mask (None: whole image), class name',
        'test = ds.filter(lambda r: r["split"] == "test")  # fmmc\'s split is a column; all rows load as "train"',
        "```", "",
        "With fmmc: `fmmc.data.dataset.load_dataset(folder)`, `fmmc validate FOLDER`, `fmmc train --data FOLDER`.", "",
    ]


def write_card(path: Path, report: BuildReport, classes: list[str], config: dict[str, Any] | None = None) -> Path:
    """The dataset card: counts per class and split, rejects per reason, models, warnings, the config."""
    splits = sorted({s for v in report.counts.values() for s in v}, key=lambda s: (s != "train", s))
    rows = [[c, *(report.counts.get(c, {}).get(s, 0) for s in splits), sum(report.counts.get(c, {}).values())]
            for c in classes]
    rows.append(["**total**", *(sum(v.get(s, 0) for v in report.counts.values()) for s in splits), report.total])
    size = size_category(report.total)
    parts = [
        "---",
        card_data("fmmc synthetic material regions", size, ["synthetic"]).to_yaml(),
        "---",
        "",
        "# Synthetic material dataset (fmmc)",
        "",
        "Made by `fmmc synth`: object-material-submaterial triplets -> text-to-image -> the named object grounded "
        "(Grounding DINO) and segmented (SAM) -> one labelled region per image. The material label holds for "
        "the masked object only, not for the whole image. Licence: the text-to-image model's licence governs the "
        "generated images.",
        "",
        *loading_section(),
        "Files: `metadata.jsonl` (fmmc format; `fmmc validate .`), `images/`, `masks/`, `contact_sheets/` "
        "(one sheet per class, masks outlined), `taxonomy.json`, `config.yaml` (the resolved config that "
        "made this), `build_report.json`.",
        "",
        "The `description` field is made from the triplet (see `build.description_template`); it names the "
        "sub-material, which often implies the class: do not use it as a test-time text input.",
        "",
        f"## Regions per class and split ({report.total} in all)",
        "",
        md_table(["class", *splits, "total"], rows),
        "",
        "## Rejected or dropped, by stage and reason",
        "",
        md_table(["stage: reason", "count"], [[k, v] for k, v in report.rejects.items()]) if report.rejects
        else "Nothing was rejected.",
        "",
        "## Models",
        "",
    ]
    for key, title in (("model_id", "text-to-image"), ("grounder", "grounder"), ("segmenter", "segmenter")):
        used = report.models.get(key) or {}
        parts.append(f"- {title}: " + (", ".join(f"`{m}` ({c})" for m, c in used.items()) or "n/a"))
    parts.append("")
    if report.warnings:
        parts += ["## Warnings", "", *(f"- {w}" for w in report.warnings), ""]
    if config is not None:
        parts += ["## Config", "", "```yaml", yaml.safe_dump(config, sort_keys=False).rstrip(), "```", ""]
    path.write_text("\n".join(parts))
    return path
