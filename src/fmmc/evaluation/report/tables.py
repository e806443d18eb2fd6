"""The grid's tables in the paper's layout, ours beside the published numbers, and the reproduce report.

    >>> paper = load_paper("builtin")
    >>> paper["backbones"]["rows"]["head"]["DINOv2"]
    '0.79|0.88'

Cells are ``acc`` (Table 1) or ``mIoU|mAcc`` (Tables 2-5) with two decimals, as printed in the paper, or
``acc%`` (the protocols table: percent, ours as mean ± std over the splits of an in-domain cell). Rows the
paper has and the config does not (MatSim) are shown with the paper's numbers only.

The published numbers are one data file (``data/paper_results.yaml``): each table has a ``source`` (and
``sources`` per row where rows come from other papers), and a cell may be ``"@table/row/column"``, the same
figure as another table's (one copy of each number). Every table is printed with its sources.
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fmmc.core.io import dumps, write_json_atomic, write_text_atomic
from fmmc.evaluation.grid import GridConfig, _columns
from fmmc.evaluation.report.markdown import fmt, md_table, pair, with_ci

log = logging.getLogger(__name__)


def load_paper(source: str = "builtin") -> dict[str, Any]:
    """Published numbers: the built-in file, a YAML file, or nothing (``none``); references resolved."""
    if source == "none":
        return {}
    if source == "builtin":
        text = resources.files("fmmc.evaluation").joinpath("data", "paper_results.yaml").read_text()
    else:
        p = Path(source)
        if not p.is_file():
            raise ValueError(f"paper_results {source!r}: not a file (use builtin, none or a YAML path)")
        text = p.read_text()
    return _resolve(yaml.safe_load(text) or {}, source)


def _resolve(paper: dict[str, Any], where: str) -> dict[str, Any]:
    """Replace ``"@table/row/column"`` cells by that cell's value; a referenced row takes the source of the
    table it points to (unless ``sources`` names one)."""
    for tid, table in paper.items():
        sources = table.setdefault("sources", {}) or {}
        table["sources"] = sources
        for row, cols in (table.get("rows") or {}).items():
            for col, v in (cols or {}).items():
                if not (isinstance(v, str) and v.startswith("@")):
                    continue
                ref_t, _, rest = v[1:].partition("/")
                ref_r, _, ref_c = rest.rpartition("/")
                target = ((paper.get(ref_t) or {}).get("rows") or {}).get(ref_r) or {}
                if ref_c not in target or str(target[ref_c]).startswith("@"):
                    raise ValueError(f"paper_results {where}: {tid}.rows[{row}][{col}] = {v!r} names no published "
                                     "cell; write it as @table/row/column of a table in the same file")
                cols[col] = target[ref_c]
                sources.setdefault(row, paper[ref_t].get("source"))
    return paper


def _paper_cell(v: Any) -> tuple[float | None, float | None, float | None]:
    """(acc, miou, macc) of a published cell."""
    if v is None:
        return None, None, None
    if isinstance(v, (int, float)):
        return float(v), None, None
    a, _, b = str(v).partition("|")
    return None, float(a), float(b)


def _cell_text(metric: str, m: dict[str, Any] | None) -> str:
    if m is None:
        return "–"
    if metric == "acc%":
        std = (m.get("std") or {}).get("acc")
        return _pct(m.get("acc")) if std is None else f"{_pct(m.get('acc'))} ± {_pct(std)}"
    return fmt(m.get("acc"), 2) if metric == "acc" else pair(m.get("miou"), m.get("macc"))


def _pct(v: Any) -> str:
    return "–" if v is None else fmt(100 * float(v), 1)


def _paper_text(metric: str, v: Any) -> str:
    if v is None:
        return "–"
    if metric == "acc%":  # a number, or a range "0.798-0.823" (several published variants)
        lo, _, hi = str(v).partition("-")
        return f"{_pct(lo)}–{_pct(hi)}" if hi else _pct(lo)
    acc, miou, macc = _paper_cell(v)
    return fmt(acc, 2) if metric == "acc" else pair(miou, macc)


def build_tables(cfg: GridConfig, result: Any) -> list[dict[str, Any]]:
    """Every table as ``{id, title, metric, columns, rows: [{label, cells: {col: {...}}}], note}``."""
    paper = load_paper(cfg.paper_results)
    where = {place: c for c in result.cells for place in c.places}
    out = []
    for t in cfg.tables:
        pt = paper.get(t.paper or t.id, {}) if (t.paper or "") != "none" else {}
        prow = pt.get("rows", {}) or {}
        cols = [label for label, _, _ in _columns(t, cfg, t.id)]
        rows = []
        for row in list(t.rows) + [r for r in prow if r not in t.rows]:
            cells = {}
            for col in cols:
                c = where.get((t.id, row, col))
                rec = result.results.get(c.cell_id) if c is not None else None
                status = "ok" if rec else ("failed" if c is not None and c.cell_id in result.failed else
                                           "paper only" if c is None else "not run")
                cells[col] = {"cell": c.cell_id if c else None, "status": status,
                              "metrics": rec["metrics"] if rec else None,
                              "x": getattr(c.train, t.plot, None) if (c is not None and c.train and t.plot) else None,
                              "paper": (prow.get(row) or {}).get(col)}
            rows.append({"label": row, "ours": row in t.rows, "cells": cells})
        out.append({"id": t.id, "title": t.title or pt.get("title") or t.id, "metric": t.metric, "columns": cols,
                    "rows": rows, "note": pt.get("note"), "plot": t.plot, "paper_x": pt.get("x") or {},
                    "has_paper": bool(prow), "published": pt.get("published") or "paper",
                    "source": pt.get("source"), "sources": {r: v for r, v in (pt.get("sources") or {}).items() if v}})
    return out


def table_markdown(tab: dict[str, Any]) -> str:
    headers = [""]
    pub = tab.get("published", "paper")
    for col in tab["columns"]:
        headers += [col, f"{col} ({pub})"] if tab["has_paper"] else [col]
    rows = []
    for r in tab["rows"]:
        line = [r["label"] if r["ours"] else f"{r['label']} ({pub} only)"]
        for col in tab["columns"]:
            cell = r["cells"][col]
            text = _cell_text(tab["metric"], cell["metrics"]) if cell["status"] != "failed" else "failed"
            line.append(text)
            if tab["has_paper"]:
                line.append(_paper_text(tab["metric"], cell["paper"]))
        rows.append(line)
    return md_table(headers, rows)


def sources_markdown(tab: dict[str, Any]) -> list[str]:
    """Where the table's published numbers come from: the table's source, then each row's own."""
    lines = [f"Published numbers: {' '.join(str(tab['source']).split())}."] if tab.get("source") else []
    rows_of: dict[str, list[str]] = {}  # rows that share a source are listed on one line
    for r, v in tab.get("sources", {}).items():
        if v != tab.get("source"):
            rows_of.setdefault(" ".join(str(v).split()), []).append(r)
    if rows_of:
        lines += ([""] if lines else []) + [f"- {', '.join(rows)}: {src}" for src, rows in rows_of.items()]
    return lines + [""] if lines else []


def _curve(tab: dict[str, Any], path: Path) -> bool:
    from fmmc.evaluation.report.plots import curve_png

    series: dict[str, list[tuple[float, float]]] = {}
    paper: dict[str, list[tuple[float, float]]] = {}
    for col in tab["columns"]:
        for r in tab["rows"]:
            cell = r["cells"][col]
            if cell["metrics"] and cell["x"] is not None:
                series.setdefault(f"{col} mAcc", []).append((float(cell["x"]), cell["metrics"]["macc"]))
                series.setdefault(f"{col} mIoU", []).append((float(cell["x"]), cell["metrics"]["miou"]))
            _, miou, macc = _paper_cell(cell["paper"])
            x = tab["paper_x"].get(r["label"])
            if macc is not None and x is not None:
                paper.setdefault(f"{col} mAcc", []).append((float(x), macc))
                paper.setdefault(f"{col} mIoU", []).append((float(x), miou))
    if not series:
        return False
    return curve_png(series, path, xlabel=tab["plot"], ylabel="score", title=tab["title"], paper=paper)


def write_tables(cfg: GridConfig, result: Any) -> Path:
    """Write tables.md, tables.json, curve PNGs and report.md into the grid's folder; returns report.md."""
    out = Path(result.out)
    tables = build_tables(cfg, result)
    figures = {}
    for tab in tables:
        if tab["plot"] and _curve(tab, out / f"{tab['id']}.png"):
            figures[tab["id"]] = f"{tab['id']}.png"
    md = []
    for tab in tables:
        md += [f"### {tab['title']}", "", table_markdown(tab), ""]
        if tab["has_paper"]:
            md += sources_markdown(tab)
        if tab["note"]:
            md += [f"Paper note: {' '.join(str(tab['note']).split())}", ""]
        if tab["id"] in figures:
            md += [f"![{tab['id']}]({figures[tab['id']]})", ""]
    write_text_atomic(out / "tables.md", "\n".join(md))
    write_json_atomic(out / "tables.json", tables)
    report = _report(cfg, result, "\n".join(md))
    write_text_atomic(out / "report.md", report)
    return out / "report.md"


def stand_in_notice(cfg: GridConfig) -> str | None:
    """What to say when the grid ran on generated data (``toy_data``), so nobody reads it as a reproduction."""
    if cfg.toy_data is None:
        return None
    return (f"NOTE: these numbers come from generated textures ({cfg.toy_data.dir}), an offline stand-in for the "
            "real test sets: they check the pipeline end to end and do NOT reproduce the paper's figures, which are "
            "shown in parentheses for layout only.")


def tables_text(result: Any, cfg: GridConfig) -> str:
    """The tables as plain text for the console (ours, then the paper's in parentheses)."""
    from fmmc.evaluation.report.markdown import text_table

    notice = stand_in_notice(cfg)
    parts = [notice, ""] if notice else []
    for tab in build_tables(cfg, result):
        rows = []
        for r in tab["rows"]:
            if not r["ours"]:
                continue
            line = [r["label"]]
            for col in tab["columns"]:
                cell = r["cells"][col]
                text = _cell_text(tab["metric"], cell["metrics"]) if cell["status"] != "failed" else "failed"
                if cell["paper"] is not None:
                    text += f" ({_paper_text(tab['metric'], cell['paper'])})"
                line.append(text)
            rows.append(line)
        parts += [tab["title"], text_table([""] + tab["columns"], rows), ""]
    return "\n".join(parts)


def _report(cfg: GridConfig, result: Any, tables_md: str) -> str:
    from dataclasses import asdict

    from fmmc import __version__

    done = [c for c in result.cells if c.cell_id in result.results]
    parts = [f"# Reproduction: {cfg.name}", "",
             f"fmmc {__version__}, written {time.strftime('%Y-%m-%d %H:%M:%S')}. {len(done)} of {len(result.cells)} "
             f"cells finished ({len(result.ran)} run now, {len(result.trained)} model(s) trained now), "
             f"{len(result.failed)} failed.", "",
             "Our numbers first, the paper's published numbers beside them (\"(paper)\" columns). Cells are "
             "accuracy (Table 1) or mIoU|mAcc over the classes present in each test set, with predictions "
             f"restricted to the test set's classes ({cfg.eval.classes}).", "",
             *([f"**{stand_in_notice(cfg)}**", ""] if stand_in_notice(cfg) else []), "## Tables", "", tables_md, "",
             "## Cells", ""]
    rows = []
    for c in result.cells:
        rec = result.results.get(c.cell_id)
        m = rec["metrics"] if rec else {}
        ci = m.get("ci95", {})
        link = f"[report]({rec['eval_dir']}/report.md)" if rec else result.failed.get(c.cell_id, "not run")[:120]
        rows.append([c.cell_id, cfg.test_sets[c.test_key].title, m.get("n", "–"), with_ci(m.get("acc"), ci.get("acc")),
                     with_ci(m.get("macc"), ci.get("macc")), fmt(m.get("miou")), link])
    parts += [md_table(("cell", "test set", "regions", "acc [95% CI]", "mAcc [95% CI]", "mIoU", "details"), rows,
                       "llrrrrl"), ""]
    if result.failed:
        parts += ["## Failed cells", ""] + [f"- `{k}`: {v}" for k, v in result.failed.items()] + [""]
    parts += ["## Configuration", "", "```yaml", yaml.safe_dump(yaml.safe_load(dumps(asdict(cfg))), sort_keys=False).rstrip(),
              "```", ""]
    return "\n".join(parts)
