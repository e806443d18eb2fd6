"""Markdown for evaluation reports and console summaries (formatting only; no numbers are computed here)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import yaml


def fmt(v: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; missing or NaN values as an en dash."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{float(v):.{digits}f}"


def pair(miou: Any, macc: Any, digits: int = 2) -> str:
    """The paper's ``mIoU|mAcc`` cell."""
    return f"{fmt(miou, digits)}|{fmt(macc, digits)}"


def with_ci(v: Any, ci: Sequence[Any] | None, digits: int = 3) -> str:
    if not ci or ci[0] is None:
        return fmt(v, digits)
    return f"{fmt(v, digits)} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one of l/r/c per column (default: first left, rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table for the console."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = []
    for k, r in enumerate(cells):
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


SUMMARY_HEADERS = ("regions", "classes", "acc [95% CI]", "mAcc [95% CI]", "mIoU", "top-3", "top-5", "ECE", "no answer")


def summary_row(m: dict[str, Any]) -> list[str]:
    ci = m.get("ci95", {})
    return [str(m["n"]), str(len(m["classes_present"])), with_ci(m["acc"], ci.get("acc")),
            with_ci(m["macc"], ci.get("macc")), fmt(m["miou"]), fmt(m.get("top3")), fmt(m.get("top5")),
            fmt(m["ece"]), str(m.get("abstained", 0))]


def console_summary(m: dict[str, Any], out: Any = None) -> str:
    lines = [f"{m.get('model', '')} on {m.get('data', '')} (classes: {m.get('classes_mode')})",
             text_table(SUMMARY_HEADERS, [summary_row(m)])]
    per = m.get("per_class", {})
    rows = [[c, v["support"], fmt(v["precision"]), fmt(v["recall"]), fmt(v["iou"])] for c, v in per.items() if v["support"]]
    lines += ["", text_table(("class", "support", "precision", "recall", "IoU"), rows)]
    if out is not None:
        lines.append(f"\nwritten to {out}")
    return "\n".join(lines)


def eval_report(ev: Any, figures: dict[str, str], meta: dict[str, Any]) -> str:
    """``report.md`` of one evaluation."""
    m = ev.metrics
    parts = [f"# Evaluation: `{m.get('model')}` on `{m.get('data')}`", ""]
    scored = m["scored_classes"]
    mode = ("restricted to the test set's classes" if m["classes_mode"] == "restrict"
            else "choosing among all the model's classes")
    parts += [f"{m['n']} regions, {len(m['classes_present'])} classes present; predictions {mode} "
              f"({len(scored)} candidates). Mean metrics average over the classes present in the test set. "
              f"95% CIs: percentile bootstrap, {m['ci95']['n_boot']} resamples, seed {m['ci95']['seed']}.", ""]
    parts += [md_table(SUMMARY_HEADERS, [summary_row(m)]), ""]
    notes = list(ev.test_set.notes)
    if m.get("failed"):
        notes.append(f"{m['failed']} region(s) failed (unreadable image or mask, failed request) and count as wrong")
    if m.get("unparsed"):
        notes.append(f"{m['unparsed']} answer(s) could not be mapped to a class and count as wrong")
    if notes:
        parts += ["**Notes**", ""] + [f"- {n}" for n in notes] + [""]
    per = m["per_class"]
    rows = [[c, v["support"], v["tp"], fmt(v["precision"]), fmt(v["recall"]), fmt(v["iou"])] for c, v in per.items()]
    parts += ["## Per class", "", md_table(("class", "support", "correct", "precision", "recall (acc)", "IoU"), rows), ""]
    if any(v["support"] == 0 for v in per.values()):
        parts += ["Classes with support 0 were predicted but are absent from the test set; they are left out of "
                  "mAcc and mIoU.", ""]
    if "confusion" in figures:
        parts += ["## Confusion matrix", "", f"![confusion matrix]({figures['confusion']})", ""]
    if "reliability" in figures:
        parts += ["## Calibration", "", f"Expected calibration error ({m['calibration']['bins']} equal-width bins): "
                  f"{fmt(m['ece'])}.", "", f"![reliability diagram]({figures['reliability']})", ""]
    bad = [r for r in ev.rows if r.get("abstained")][:20]
    if bad:
        parts += ["## Regions without an answer (first 20)", "",
                  md_table(("region", "true", "reason"),
                           [[r["id"], r["true"], _reason(r)] for r in bad], "lll"), ""]
    resolved = {"model": m.get("model"), "data": m.get("data"), **meta}
    parts += ["## Resolved configuration", "", "```yaml", yaml.safe_dump(_plain(resolved), sort_keys=False).rstrip(),
              "```", ""]
    return "\n".join(parts)


def _reason(row: dict[str, Any]) -> str:
    if "error" in row:
        return str(row["error"])[:160]
    answer = str(row.get("answer", "")).replace("\n", " ")[:100]
    return f"{row.get('parsed_by', 'no answer')}: {answer!r}"


def _plain(obj: Any) -> Any:
    """JSON-safe plain data (what metrics.json holds), for the YAML dump."""
    import json

    from fmmc.core.io import dumps

    return json.loads(dumps(obj))


def mean_pm(mean: Any, std: Any, digits: int = 3) -> str:
    """``mean ± std`` (the std left out when there is none: a single split)."""
    return fmt(mean, digits) if std is None else f"{fmt(mean, digits)} ± {fmt(std, digits)}"


SPLITS_HEADERS = ("split", "seed", "train", "test", "acc", "mAcc", "mIoU")


def _splits_rows(m: dict[str, Any], link: bool) -> list[list[str]]:
    rows = []
    for p in m["per_split"]:
        row = [f"{p['split']:02d}", str(p["seed"]), str(p["n_train"]), str(p["n_test"]), fmt(p["acc"]),
               fmt(p["macc"]), fmt(p["miou"])]
        if link:
            row.append(f"[report](splits/{p['split']:02d}/report.md)")
        rows.append(row)
    return rows


def splits_console(m: dict[str, Any], out: Any = None) -> str:
    """The console summary of an in-domain (``splits:N``) evaluation."""
    mean, std = m["mean"], m["std"]
    lines = [f"{m.get('model', '')} trained and tested on halves of {m.get('data', '')} ({m['protocol']}, seed "
             f"{m['split_seed']}, classes: {m.get('classes_mode')})",
             text_table(SPLITS_HEADERS, _splits_rows(m, link=False)), "",
             f"mean ± std over {m['n_splits']} splits: acc {mean_pm(mean.get('acc'), std.get('acc'))}  "
             f"mAcc {mean_pm(mean.get('macc'), std.get('macc'))}  mIoU {mean_pm(mean.get('miou'), std.get('miou'))}"]
    if out is not None:
        lines.append(f"\nwritten to {out} (splits.json reruns these splits: --splits {out}/splits.json)")
    return "\n".join(lines)


def splits_report(m: dict[str, Any], meta: dict[str, Any]) -> str:
    """``report.md`` of an in-domain (``splits:N``) evaluation."""
    mean, std = m["mean"], m["std"]
    parts = [f"# In-domain evaluation: `{m.get('model')}` on halves of `{m.get('data')}`", "",
             f"Protocol `{m['protocol']}` (texture papers' in-domain protocol): {m['n_splits']} random 50/50 splits of "
             f"the {m['n']} regions, stratified by class, seed {m['split_seed']} (`splits.json`); for each, a head is "
             "trained on one half (its validation split drawn from that half) and scored on the other. Mean ± "
             "sample standard deviation over the splits. This is not the paper's protocol (trained on synthetic "
             "images only, never on this test set); see docs/evaluation.md, \"Two protocols\".", "",
             md_table(("", "acc", "mAcc", "mIoU", "top-3", "top-5", "ECE"),
                      [["mean ± std"] + [mean_pm(mean.get(k), std.get(k)) for k in
                                         ("acc", "macc", "miou", "top3", "top5", "ece")]]), "",
             "## Splits", "", md_table(SPLITS_HEADERS + ("details",), _splits_rows(m, link=True), "lrrrrrrl"), "",
             "Rerun exactly these splits: `fmmc eval DATA --splits splits.json` with the same training options.", ""]
    resolved = {"model": m.get("model"), "data": m.get("data"), **meta}
    parts += ["## Resolved configuration", "", "```yaml", yaml.safe_dump(_plain(resolved), sort_keys=False).rstrip(),
              "```", ""]
    return "\n".join(parts)
