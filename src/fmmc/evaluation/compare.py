"""Deltas between results: ``fmmc compare RUN_DIR...`` (eval folders or reproduce folders).

    >>> runs = [load_run("runs/eval-fmd"), load_run("runs/clip-fmd")]       # doctest: +SKIP
    >>> print(compare_text(runs))                                            # doctest: +SKIP

An eval folder (``metrics.json``) gives one row of numbers; a reproduce folder gives one per cell
(``cells/*.json``), keyed by table/row/column. The first run is the reference: every other run shows its
value and the difference (``+0.031``). Keys missing from a run are shown as an en dash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmmc.evaluation.report.markdown import fmt, text_table

METRICS = ("acc", "macc", "miou", "top5", "ece")


@dataclass
class Run:
    path: Path
    kind: str  # eval | reproduce
    values: dict[str, dict[str, float | None]] = field(default_factory=dict)  # key -> metric -> value


def load_run(path: str | Path) -> Run:
    p = Path(path)
    if (p / "metrics.json").is_file():
        m = json.loads((p / "metrics.json").read_text())
        key = f"{m.get('data', '')}"
        return Run(p, "eval", {key: {k: m.get(k) for k in METRICS}})
    cells = sorted((p / "cells").glob("*.json")) if (p / "cells").is_dir() else []
    if cells:
        values: dict[str, dict[str, float | None]] = {}
        for f in cells:
            rec = json.loads(f.read_text())
            m = rec.get("metrics", {})
            for table, row, col in rec.get("places", []):
                values[f"{table} / {row} / {col}"] = {k: m.get(k) for k in METRICS}
        return Run(p, "reproduce", values)
    raise ValueError(f"{p}: neither an eval folder (metrics.json) nor a reproduce folder (cells/*.json)")


def _delta(a: Any, b: Any) -> str:
    if a is None or b is None:
        return ""
    return f" ({b - a:+.3f})"


def mixed_test_sets_warning(runs: list[Run]) -> str | None:
    """A one-line warning when eval folders were scored on different test sets (their deltas mean little)."""
    sets = {r.path: next(iter(r.values)) for r in runs if r.kind == "eval"}
    if len(set(sets.values())) <= 1:
        return None
    return ("warning: these results come from different test sets (" + "; ".join(f"{p}: {d or '?'}" for p, d in sets.items())
            + "); their differences compare the test sets as much as the models")


def compare_json(runs: list[Run], metrics: tuple[str, ...] = ("acc", "macc", "miou")) -> dict[str, Any]:
    """The same comparison as data: per run its values, per later run its deltas to the first."""
    _check(runs)
    keys, vals = _keys_and_values(runs)
    out: dict[str, Any] = {"reference": str(runs[0].path), "metrics": list(metrics), "warning": mixed_test_sets_warning(runs),
                           "runs": []}
    for r, v in zip(runs, vals):
        entry: dict[str, Any] = {"path": str(r.path), "kind": r.kind, "test_sets": sorted(r.values), "values": {},
                                 "delta": {}}
        for key in keys:
            entry["values"][key] = {m: (v.get(key) or {}).get(m) for m in metrics}
            ref = vals[0].get(key) or {}
            entry["delta"][key] = {m: (None if ref.get(m) is None or entry["values"][key][m] is None
                                       else entry["values"][key][m] - ref[m]) for m in metrics}
        out["runs"].append(entry)
    return out


def _check(runs: list[Run]) -> None:
    if len(runs) < 2:
        raise ValueError("compare needs at least two result folders")
    kinds = {r.kind for r in runs}
    if len(kinds) > 1:
        raise ValueError("compare eval folders with eval folders, or reproduce folders with reproduce folders: "
                         + ", ".join(f"{r.path} is {r.kind}" for r in runs))


def _keys_and_values(runs: list[Run]) -> tuple[list[str], list[dict[str, dict[str, float | None]]]]:
    if runs[0].kind == "eval":  # one result per folder: compared side by side (mixed_test_sets_warning says if sets differ)
        return ["result"], [{"result": next(iter(r.values.values()))} for r in runs]
    return sorted({k for r in runs for k in r.values}), [r.values for r in runs]


def compare_text(runs: list[Run], metrics: tuple[str, ...] = ("acc", "macc", "miou")) -> str:
    """One table: a row per (key, metric), a column per run; later runs show their delta to the first."""
    _check(runs)
    keys, vals = _keys_and_values(runs)
    headers = ["key", "metric"] + [r.path.name or str(r.path) for r in runs]
    rows = []
    for key in keys:
        for metric in metrics:
            ref = (vals[0].get(key) or {}).get(metric)
            line = [key, metric, fmt(ref)]
            for v in vals[1:]:
                x = (v.get(key) or {}).get(metric)
                line.append(fmt(x) + _delta(ref, x))
            rows.append(line)
    warning = mixed_test_sets_warning(runs)
    return text_table(headers, rows) + (f"\n{warning}" if warning else "")
