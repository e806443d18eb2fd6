"""The demo's outputs for people: a mosaic of scenes with their regions outlined, and ``report.md``.

    >>> scene_mosaic([(image_path, mask_path, "true wood\npred wood 0.93")], "out/examples.png")  # doctest: +SKIP
    >>> write_report("out/report.md", metrics)                                                  # doctest: +SKIP

The confusion-matrix plot comes from :func:`fmmc.evaluation.report.plots.confusion_png`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fmmc.data.masks import mask_outline
from fmmc.data.regions import resolve_region

STREAM_NAMES = {"both": "two-stream (vision + language)", "vision": "vision only", "language": "language only"}


def scene_mosaic(items: Sequence[tuple[Path, Path, str]], path: str | Path, cols: int = 4, tile: int = 240) -> Path:
    """A grid of images, each with its region outlined in red and a caption: ``(image, mask, caption)``."""
    n = max(1, len(items))
    rows = math.ceil(n / cols)
    cap = 30
    sheet = Image.new("RGB", (cols * tile, rows * (tile + cap)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (img_path, mask_path, caption) in enumerate(items):
        full, full_mask = resolve_region(img_path, mask_path)  # the one region rule, as the model saw it
        img = full.resize((tile, tile))
        mask = np.asarray(Image.fromarray(full_mask).resize((tile, tile), Image.NEAREST))
        edge = mask_outline(mask, 2)
        arr = np.asarray(img).copy()
        arr[edge] = (255, 0, 0)
        x, y = (k % cols) * tile, (k // cols) * (tile + cap)
        sheet.paste(Image.fromarray(arr), (x, y + cap))
        for line, text in enumerate(caption.split("\n")[:2]):
            draw.text((x + 3, y + 2 + 13 * line), text, fill="black")
    path = Path(path)
    sheet.save(path)
    return path


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def _interval(ci: Sequence[float] | None) -> str:
    return "-" if not ci else f"{ci[0]:.3f} - {ci[1]:.3f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _selection_section(sel: dict[str, Any]) -> list[str]:
    """Which of the profile's candidates was trained, and the validation scores that chose it."""
    if not sel.get("scores"):
        return []
    out = ["## The setting, chosen by validation photos", "",
           f"The profile lists {len(sel['candidates'])} candidate settings. Each trained a two-stream head on scenes of "
           f"{sel['photos']['fit']} of the training photos and was scored on scenes of the other "
           f"{sel['photos']['validation']} training photos ({sel['regions']['validation']} regions; split by photo, "
           "as the test split is). The test photos took no part. Chosen: "
           f"**{sel['chosen']}**, then trained on every training photo."
           + (f" It tied with {', '.join(sel['tied'])} on both validation scores; the earlier listed was kept, so "
              "this validation split does not tell these settings apart." if sel.get("tied") else ""), ""]
    out += [_table(["candidate", "backbone", "train settings", "validation accuracy", "validation mean class accuracy"],
                   [[("**" + n + "**") if n == sel["chosen"] else n, c["backbone"],
                     ", ".join(f"{k}={v}" for k, v in sorted(c["train"].items())),
                     _fmt(sel["scores"][n]["accuracy"]), _fmt(sel["scores"][n]["mean_class_accuracy"])]
                    for n, c in sel["candidates"].items()]), ""]
    return out


def write_report(path: str | Path, r: dict[str, Any]) -> Path:
    """``report.md`` from the demo's result dictionary (the same content as metrics.json, plus configs)."""
    streams = r["streams"]
    main = streams["both"] if "both" in streams else next(iter(streams.values()))
    data = r["data"]
    out = [f"# fmmc demo: material classification on held-out photos ({r['profile']} profile)", ""]
    out += [f"Backbone `{r['models']['backbone']}`, text encoder `{r['models']['text_encoder']}`, describer "
            f"`{r['models']['describer']}`. fmmc {r['fmmc_version']}, {r['machine']}. Written {r['date']}.", ""]
    out += ["## Data", ""]
    out += [f"{len(data['classes'])} classes ({', '.join(data['classes'])}); {data['n_sources']['train']} training photos, "
            f"{data['n_sources']['test']} test photos. Scenes: a blob cut from one photo pasted on a view of a photo "
            f"of another class; each scene gives two regions (object, background). Regions: {data['n_regions']['train']} "
            f"train (a stratified part of them validates), {data['n_regions']['test']} test. "
            "Train and test share no photo, so the test accuracy is generalisation to unseen photos.", ""]
    if data.get("fallback"):
        out += [f"> **{data['fallback']}**", ""]
    if data.get("dropped"):
        out += [f"Classes left out (fewer than two photos available): {', '.join(data['dropped'])}.", ""]
    out += [_table(["class", "train photos", "test photos"],
                   [[c, ", ".join(data["sources"]["train"].get(c, [])), ", ".join(data["sources"]["test"].get(c, []))]
                    for c in data["classes"]]), ""]
    out += ["Licences: " + "; ".join(f"{k} {v['licence']}" for k, v in data["licences"].items()) + ".", ""]
    out += _selection_section(r.get("selection") or {})
    out += ["## Accuracy on the test split (held-out photos)", ""]
    out += [_table(["streams", "accuracy", "95% interval", "mean class accuracy", "top-3 accuracy", "ECE",
                    "test regions"],
                   [[STREAM_NAMES.get(k, k), _fmt(v["accuracy"]), _interval(v.get("ci95", {}).get("acc")),
                     _fmt(v["mean_class_accuracy"]), _fmt(v.get("top3")), _fmt(v.get("ece")), v["n"]]
                    for k, v in streams.items()]), ""]
    out += ["The interval is a percentile bootstrap over test regions; regions of one photo are correlated, so "
            "the real uncertainty (which photos were held out) is wider. ECE: expected calibration error of the "
            "top probability (15 bins); the heads are not temperature-calibrated (see the caveats).", ""]
    out += ["Per class (accuracy = recall of the class):", ""]
    out += [_table(["class", "support"] + [STREAM_NAMES.get(k, k) for k in streams],
                   [[c, main["per_class"][c]["support"]] + [_fmt(streams[k]["per_class"].get(c, {}).get("accuracy"))
                                                             for k in streams]
                    for c in main["per_class"]]), ""]
    out += ["![confusion matrix](confusion.png)", ""]
    if r.get("samples"):
        out += ["## Sample photos", "", "Photos that are not in the dataset, classified by the two-stream model.", ""]
        out += [_table(["photo", "region", "expected", "top 3"],
                       [[s["id"], s["region"], s["expected"], ", ".join(f"{lab} {p:.2f}" for lab, p in s["top"])]
                        for s in r["samples"]]), ""]
    if r.get("examples"):
        out += ["## Test scenes", "", "Test regions (outlined in red) with their true and predicted class.", "",
                "![test scenes](examples.png)", ""]
        out += [_table(["region", "source photo", "true", "top 3"],
                       [[p["id"], p["source"], p["label"], ", ".join(f"{t['label']} {t['prob']:.2f}" for t in p["top"])]
                        for p in r["examples"]]), ""]
    out += ["## Timing", "", _table(["step", "seconds"], [[k, f"{v:.1f}"] for k, v in r["timing"].items()]), ""]
    out += ["## Configs", "", "The demo:", "", "```json", json.dumps(r["config"], indent=1), "```", "",
            "The two-stream training run (`runs/both/train_config.yaml`; the vision-only and language-only runs differ "
            "only in `streams`):", "", "```yaml", r.get("train_config", "").rstrip(), "```", ""]
    out += ["## Caveats", "",
            "- The language stream reads short human-written appearance notes per photo (`sources.yaml`), a stand-in "
            "for a VLM describer: every crop of a photo gets one of its photo's two sentences.",
            "- There are only a few photos per class, so accuracy depends on which photos are held out; "
            "try other `--seed` values for the spread.",
            "- Probabilities are the heads' plain softmax (temperature 1): the validation split shares photos with "
            "training, so a temperature fitted on it would only make them more confident.",
            "- The photos are textures, not scenes of objects; the paper's test sets (FMD, DMS) are much harder.", ""]
    path = Path(path)
    path.write_text("\n".join(out))
    return path
