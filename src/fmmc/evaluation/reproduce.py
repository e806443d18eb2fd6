"""Run the paper's experiment grid from a YAML config, resumably: ``fmmc reproduce CONFIG [--out DIR]``.

    >>> from fmmc.evaluation.grid import load_grid_config
    >>> from fmmc.evaluation.reproduce import run_grid
    >>> result = run_grid(load_grid_config("configs/offline.yaml", out="runs/offline"))   # doctest: +SKIP

Output folder::

    reproduce_config.yaml   the resolved config        plan.json     every cell and where it appears
    models/<train-id>/      one training run per distinct training config (model in model/)
    evals/<cell-id>/        a full `fmmc eval` folder per cell (metrics.json, report.md, figures); a splits:N
                            cell's is an in-domain one (splits.json, splits/NN/), :mod:`fmmc.evaluation.in_domain`
    cells/<cell-id>.json    the cell's result, written atomically when the cell is finished
    tables.md, tables.json  every table in the paper's layout, ours beside the published numbers
    <table>.png             curves (data scale)           report.md     everything in one page
    cache/                  shared feature / description / mask cache (unless train.cache_dir is set)

Resuming: a cell whose ``cells/<id>.json`` exists with the same fingerprint is not run again; a trained
model (``models/<id>/summary.json``) is reused. Training writes to a temp folder renamed at the end, so a
crash never leaves a model that looks finished. Each backbone's features are extracted once: every cell
shares the feature cache. A failing cell is recorded and the grid goes on (``fail_fast`` stops it).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fmmc.core.config import save_config
from fmmc.core.io import write_json_atomic
from fmmc.evaluation.grid import Cell, GridConfig, plan, short_hash, slug
from fmmc.train.config import TrainConfig
from fmmc.train.trainer import train

log = logging.getLogger(__name__)


@dataclass
class GridResult:
    out: Path
    cells: list[Cell]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # cell id -> cell record
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> error
    ran: list[str] = field(default_factory=list)  # cells computed in this run
    trained: list[str] = field(default_factory=list)  # model ids trained in this run


def cell_path(out: Path, cell: Cell) -> Path:
    return out / "cells" / f"{cell.cell_id}.json"


def finished(out: Path, cell: Cell) -> dict[str, Any] | None:
    """The stored record of ``cell`` if it finished with the same fingerprint, else None."""
    p = cell_path(out, cell)
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
    if rec.get("fingerprint") != cell.fingerprint:
        log.info("cell %s changed since it was run; running it again", cell.cell_id)
        return None
    return rec


def _train_data(spec: str, out: Path, cache_dir: Path) -> str:
    """A training set as a folder with metadata.jsonl: other data specs are loaded (split train) and written."""
    from fmmc.core.registry import registry
    from fmmc.data.dataset import metadata_path, write_dataset

    kind = spec.partition(":")[0]
    if kind not in registry("dataset").entries or kind == "jsonl":
        path = spec.partition(":")[2] if kind == "jsonl" else spec
        if not metadata_path(path).is_file():
            raise ValueError(f"training data {spec!r}: no metadata.jsonl there (a dataset folder, or a data spec "
                             "such as dms:/path?images=/rgb that fmmc converts)")
        return path
    from fmmc.data.readers.spec import load_test_set

    target = out / "data" / f"{slug(spec.split('?')[0].split('/')[-1], 30)}-{short_hash(spec)}"
    if not (target / "metadata.jsonl").is_file():
        ts = load_test_set(spec, split="train", cache_dir=cache_dir)
        write_dataset(target, ts.regions)
        log.info("training data %s written as %s (%d regions)", spec, target, len(ts.regions))
    return str(target)


class GridRunner:
    def __init__(self, cfg: GridConfig, out: Path | None = None, fail_fast: bool = False, progress: bool = True,
                 echo: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.echo = echo or log.info  # progress lines (the CLI prints them)
        self.out = Path(out or cfg.out)
        self.fail_fast = fail_fast
        self.progress = progress
        cache = cfg.train.get("cache_dir")
        self.cache_dir = Path(cache) if cache else self.out / "cache"
        self._test_sets: dict[str, Any] = {}

    def test_set(self, key: str) -> Any:
        from fmmc.data.readers.spec import load_test_set

        if key not in self._test_sets:
            ts = self.cfg.test_sets[key]
            self._test_sets[key] = load_test_set(ts.spec, split=ts.split, cache_dir=self.cache_dir)
        return self._test_sets[key]

    def model_dir(self, cell: Cell) -> Path:
        return self.out / "models" / cell.model_id

    def trained_model(self, cell: Cell, result: GridResult) -> Path:
        """Train ``cell.train`` unless an identical run already finished; returns the model directory."""
        assert cell.train is not None
        final = self.model_dir(cell)
        if (final / "summary.json").is_file() and (final / "model" / "config.json").is_file():
            return final / "model"
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        data = _train_data(cell.train.data, self.out, self.cache_dir) if cell.train.data else ""
        cfg: TrainConfig = replace(cell.train, data=data, out=str(tmp), cache_dir=str(self.cache_dir),
                                   progress=self.progress)
        log.info("training %s", cell.model_id)
        train(cfg)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        result.trained.append(cell.model_id)
        return final / "model"

    def evaluate(self, cell: Cell, model: Any) -> dict[str, Any]:
        from fmmc.evaluation.evaluate import EvalSettings, eval_journal, evaluate, write_evaluation

        e = self.cfg.eval
        settings = EvalSettings(classes=e.classes, n_boot=e.n_boot, seed=e.seed, progress=self.progress)
        ts = self.test_set(cell.test_key)
        out = self.out / "evals" / cell.cell_id
        journal = eval_journal(out, model, ts, settings)  # a killed cell resumes its predictions
        ev = evaluate(model, ts, settings, journal)
        write_evaluation(ev, out, overwrite=True)  # our own cell, recomputed
        journal.discard()
        m = ev.metrics
        keep = ("n", "acc", "macc", "miou", "top3", "top5", "ece", "ci95", "abstained", "failed", "unparsed",
                "classes_present")
        return {k: m[k] for k in keep if k in m}

    def evaluate_splits(self, cell: Cell) -> dict[str, Any]:
        """A ``splits:N`` cell: the cell's head trained and scored on N halves of its test set."""
        from fmmc.evaluation.evaluate import EvalSettings
        from fmmc.evaluation.in_domain import run_splits

        assert cell.train is not None
        e = self.cfg.eval
        settings = EvalSettings(classes=e.classes, n_boot=e.n_boot, seed=e.seed, progress=self.progress)
        cfg = replace(cell.train, cache_dir=str(self.cache_dir), progress=self.progress)
        m = run_splits(self.test_set(cell.test_key), self.out / "evals" / cell.cell_id, cfg, cell.protocol,
                       seed=e.split_seed, settings=settings, overwrite=True, echo=self.echo)  # our own cell
        keep = ("n", "acc", "macc", "miou", "top3", "top5", "ece", "std", "n_splits", "split_seed", "protocol")
        return {k: m[k] for k in keep if k in m}

    def load_model(self, cell: Cell, result: GridResult) -> Any:
        from fmmc.evaluation.models import load_eval_model

        e = self.cfg.eval
        if cell.model is not None:
            return load_eval_model(cell.model, cache_dir=self.cache_dir, device=e.device)
        path = self.trained_model(cell, result)
        return load_eval_model(str(path), cache_dir=self.cache_dir, describer=e.describer, device=e.device)

    def run(self, only: list[str] | None = None) -> GridResult:
        cells = plan(self.cfg)
        if only:
            unknown = sorted(set(only) - {t.id for t in self.cfg.tables})
            if unknown:
                raise ValueError(f"--only {unknown}: no such table; tables: {[t.id for t in self.cfg.tables]}")
            cells = [c for c in cells if any(p[0] in only for p in c.places)]
        from fmmc.core.outputs import check_output_dir, read_marker, write_marker

        check_output_dir(self.out, "reproduce", overwrite=True)  # an earlier reproduce run is resumed, never cleared
        if read_marker(self.out) is None:
            write_marker(self.out, "reproduce", complete=False)
        save_config(self.cfg, self.out / "reproduce_config.yaml")
        write_json_atomic(self.out / "plan.json", [{"cell": c.cell_id, "model": c.model_id, "test_set": c.test_key,
                                                    "places": c.places} for c in cells])
        if self.cfg.toy_data is not None:
            from fmmc.evaluation.toydata import build_toy_data

            t = self.cfg.toy_data
            build_toy_data(t.dir, t.per_class, t.test_per_class, t.size, t.seed)
        result = GridResult(self.out, cells)
        groups: dict[str, list[Cell]] = {}
        for c in cells:
            groups.setdefault(c.model_id, []).append(c)
        for n, (model_id, group) in enumerate(groups.items(), start=1):
            todo = []
            for c in group:
                rec = finished(self.out, c)
                if rec is not None:
                    result.results[c.cell_id] = rec
                else:
                    todo.append(c)
            if not todo:
                log.info("[%d/%d] %s: all %d cell(s) already finished", n, len(groups), model_id, len(group))
                continue
            self.echo(f"[{n}/{len(groups)}] {model_id}: {len(todo)} cell(s) to run")
            self._run_group(todo, result)
        write_marker(self.out, "reproduce", complete=True)
        return result

    def _run_group(self, todo: list[Cell], result: GridResult) -> None:
        model = None
        for c in todo:
            t0 = time.time()
            try:
                if c.protocol != "cross":
                    metrics = self.evaluate_splits(c)
                else:
                    if model is None:
                        model = self.load_model(c, result)
                    metrics = self.evaluate(c, model)
            except KeyboardInterrupt:
                raise
            except Exception as e:  # noqa: BLE001 - one failing cell must not lose the others
                if self.fail_fast:
                    raise
                msg = f"{type(e).__name__}: {e}"
                log.error("cell %s failed: %s", c.cell_id, msg)
                result.failed[c.cell_id] = msg
                if model is None and c.protocol == "cross":  # the model failed: its other cells would too
                    for other in todo[todo.index(c) + 1:]:
                        result.failed[other.cell_id] = f"skipped: model {c.model_id} failed ({msg[:200]})"
                    return
                continue
            rec = {"cell": c.cell_id, "model_id": c.model_id, "test_set": c.test_key, "fingerprint": c.fingerprint,
                   "protocol": c.protocol,
                   "model": c.model, "train": asdict(c.train) if c.train else None, "places": c.places,
                   "metrics": metrics, "eval_dir": f"evals/{c.cell_id}", "seconds": round(time.time() - t0, 1),
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
            if c.train is not None:
                summary = self.model_dir(c) / "summary.json"
                if summary.is_file():
                    s = json.loads(summary.read_text())
                    rec["train_summary"] = {k: s.get(k) for k in ("n_train", "n_val", "val_acc", "best_epoch", "seconds")}
            write_json_atomic(cell_path(self.out, c), rec)
            result.results[c.cell_id] = rec
            result.ran.append(c.cell_id)
            m = metrics
            self.echo(f"  {c.cell_id}: acc {m['acc']:.3f}  mAcc {m['macc']:.3f}  mIoU {m['miou']:.3f}")


def run_grid(cfg: GridConfig, out: str | Path | None = None, fail_fast: bool = False, progress: bool = True,
             only: list[str] | None = None, echo: Callable[[str], None] | None = None) -> GridResult:
    """Run (or resume) every cell, then write the tables and the report; ``echo`` receives progress lines."""
    from fmmc.evaluation.report.tables import write_tables

    runner = GridRunner(cfg, Path(out) if out else None, fail_fast=fail_fast, progress=progress, echo=echo)
    result = runner.run(only=only)
    write_tables(cfg, result)
    return result
