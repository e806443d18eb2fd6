"""The experiment grid of ``fmmc reproduce``: its YAML config and the plan of cells it expands to.

    >>> cfg = load_grid_config("configs/paper.yaml", overrides=["train.epochs=50"])   # doctest: +SKIP
    >>> cells = plan(cfg)                                                              # doctest: +SKIP

A config has a base ``train`` section (any :class:`~fmmc.train.config.TrainConfig` field), ``test_sets``
(key -> data spec, or ``{spec, title, split}``), optional ``baselines`` (name -> model spec), ``eval``
settings and a list of ``tables``. A table crosses ``rows`` with ``columns``; each row and column is a
mapping of TrainConfig overrides (or ``model: SPEC`` for a baseline / an already trained model)::

    tables:
      - id: streams                      # matched with the paper's table of the same id
        rows: {language: {streams: language}, vision: {streams: vision}, both: {}}
        columns: [fmd, dms, google]      # a list: test-set keys (the default: every test set)
      - id: backbones
        test_set: fmd                    # columns as a mapping: variants evaluated on one test set
        overrides: {streams: vision}     # applied to every cell of this table
        columns: {ResNet-101: {backbone: "hf:microsoft/resnet-101"}, DINOv2: {}}
        rows: {head: {mode: head}, full: {mode: full}}
      - id: scale
        plot: train_fraction             # also draw a curve over this TrainConfig field
        rows: {"0.2x": {train_fraction: 0.1}, "2x": {train_fraction: 1.0}}

A column (or row) may carry ``protocol: "splits:10"``: its cell trains the row's head on random halves of
the test set itself (:mod:`fmmc.evaluation.in_domain`) instead of evaluating a model trained elsewhere;
``eval.split_seed`` seeds the halves. ``metric: acc%`` shows accuracy in percent, ours as mean ± std::

      - id: protocols
        metric: acc%
        test_set: fmd
        columns: {in-domain: {protocol: "splits:10"}, cross-domain: {}}
        rows: {Ours: {}}

A *cell* is (model, test set[, protocol]). Cells with the same resolved training config share one trained model,
whichever tables they appear in; ids are readable (the overrides that differ from the base) plus a hash of
the full config, so editing the config never reuses a stale model. ``{out}`` in strings is the output folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fmmc.core.config import apply_overrides, from_dict, read_file
from fmmc.train.config import TrainConfig

METRICS = ("acc", "miou|macc", "acc%")  # what a table's cells show
# fields that do not change what a training run learns (left out of its identity)
_NOT_IDENTITY = ("out", "progress", "cache_dir", "device", "extract_batch_size")


@dataclass
class TestSetConfig:
    spec: str
    title: str = ""
    split: str | None = None


@dataclass
class TableConfig:
    id: str
    title: str = ""
    metric: str = "miou|macc"  # acc | miou|macc | acc% (percent, mean ± std for a splits cell)
    rows: dict[str, Any] = field(default_factory=dict)
    columns: Any = None  # list of test-set keys (default all) | mapping label -> overrides (needs test_set)
    test_set: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    paper: str | None = None  # table id in the published results (default: id); "none": no paper column
    plot: str | None = None  # TrainConfig field for a curve over the rows (e.g. train_fraction)


@dataclass
class ToyDataConfig:
    dir: str = "{out}/data"
    per_class: int = 12
    test_per_class: int = 6
    size: int = 128
    seed: int = 0


@dataclass
class GridEvalConfig:
    classes: str = "restrict"
    describer: str | None = None  # test-time describer for trained models (None: the model's own)
    n_boot: int = 1000
    seed: int = 0
    device: str = "cpu"
    split_seed: int = 0  # seed of the random halves of a splits:N cell


@dataclass
class GridConfig:
    name: str = "fmmc"
    out: str = "runs/reproduce"
    train: dict[str, Any] = field(default_factory=dict)
    eval: GridEvalConfig = field(default_factory=GridEvalConfig)
    test_sets: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, str] = field(default_factory=dict)
    tables: list[TableConfig] = field(default_factory=list)
    toy_data: ToyDataConfig | None = None
    paper_results: str = "builtin"  # builtin | a YAML file | none


@dataclass
class Cell:
    """One (model, test set) evaluation; ``train`` is None for a baseline or a given model."""

    cell_id: str
    model_id: str
    test_key: str
    train: TrainConfig | None = None
    model: str | None = None
    fingerprint: str = ""
    places: list[tuple[str, str, str]] = field(default_factory=list)  # (table id, row, column)
    protocol: str = "cross"  # cross | splits:N (the head of `train` trained on halves of the test set)


def load_grid_config(path: str | Path, overrides: list[str] | None = None, out: str | None = None) -> GridConfig:
    """Read a grid YAML, apply ``a.b=value`` overrides and ``{out}``; validate every table and cell."""
    data = read_file(path)
    apply_overrides(data, list(overrides or []))
    if out is not None:
        data["out"] = out
    cfg = from_dict(GridConfig, data, where=str(path))
    cfg.test_sets = {k: _test_set(k, v, path) for k, v in cfg.test_sets.items()}
    cfg = _substitute(cfg, cfg.out)
    plan(cfg, where=str(path))  # fail now, not after hours of training
    return cfg


def _test_set(key: str, value: Any, where: Any) -> TestSetConfig:
    if isinstance(value, str):
        return TestSetConfig(spec=value, title=key)
    if isinstance(value, TestSetConfig):
        return value
    ts = from_dict(TestSetConfig, value, where=f"{where}: test_sets.{key}")
    ts.title = ts.title or key
    return ts


def _substitute(cfg: GridConfig, out: str) -> GridConfig:
    def sub(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace("{out}", out)
        if isinstance(v, dict):
            return {k: sub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [sub(x) for x in v]
        return v

    cfg.train = sub(cfg.train)
    cfg.baselines = sub(cfg.baselines)
    for ts in cfg.test_sets.values():
        ts.spec = sub(ts.spec)
    for t in cfg.tables:
        t.rows, t.columns, t.overrides = sub(t.rows), sub(t.columns), sub(t.overrides)
    if cfg.toy_data is not None:
        cfg.toy_data.dir = sub(cfg.toy_data.dir)
    return cfg


def identity(cfg: TrainConfig) -> dict[str, Any]:
    d = asdict(cfg)
    for k in _NOT_IDENTITY:
        d.pop(k, None)
    return d


def short_hash(obj: Any, n: int = 8) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def slug(text: str, limit: int = 60) -> str:
    s = re.sub(r"[^A-Za-z0-9._=-]+", "-", text).strip("-.")
    return s[:limit] or "x"


def train_id(cfg: TrainConfig, base: TrainConfig) -> str:
    """Readable id of a training run: the fields that differ from ``base``, plus a hash of all of them."""
    mine, ref = identity(cfg), identity(base)
    diff = [f"{k}={_short(v)}" for k, v in mine.items() if ref.get(k) != v]
    return f"{slug('_'.join(diff) or 'base')}-{short_hash(mine)}"


def _short(v: Any) -> str:
    """A value's tail for ids: ``hf:facebook/dinov2-base`` -> ``dinov2-base``, query strings dropped."""
    text = str(v).split("?", 1)[0].rstrip("/")
    return text.rsplit("/", 1)[-1] if "/" in text else text


def _columns(t: TableConfig, cfg: GridConfig, where: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(column label, test-set key, overrides) per column."""
    if t.columns is None or isinstance(t.columns, list):
        keys = list(t.columns or cfg.test_sets)
        unknown = [k for k in keys if k not in cfg.test_sets]
        if unknown:
            raise ValueError(f"{where}: columns {unknown} are not test sets; known: {sorted(cfg.test_sets)}")
        return [(cfg.test_sets[k].title, k, {}) for k in keys]
    if isinstance(t.columns, dict):
        if not t.test_set or t.test_set not in cfg.test_sets:
            raise ValueError(f"{where}: columns given as variants need test_set: one of {sorted(cfg.test_sets)}")
        return [(label, t.test_set, dict(over or {})) for label, over in t.columns.items()]
    raise ValueError(f"{where}: columns must be a list of test-set keys or a mapping label -> overrides")


def plan(cfg: GridConfig, where: str = "config") -> list[Cell]:
    """Every distinct cell of every table (shared cells listed once, with all their places)."""
    if not cfg.tables:
        raise ValueError(f"{where}: no tables; add at least one under `tables:`")
    if not cfg.test_sets:
        raise ValueError(f"{where}: no test_sets; add e.g. `test_sets: {{fmd: 'fmd:/data/fmd'}}`")
    base = from_dict(TrainConfig, dict(cfg.train), where=f"{where}: train")
    cells: dict[str, Cell] = {}
    seen_ids: set[str] = set()
    for ti, t in enumerate(cfg.tables):
        tw = f"{where}: tables[{ti}] ({t.id})"
        if t.id in seen_ids:
            raise ValueError(f"{tw}: duplicate table id")
        seen_ids.add(t.id)
        if t.metric not in METRICS:
            raise ValueError(f"{tw}: metric {t.metric!r}: choose {', '.join(METRICS)}")
        if not t.rows:
            raise ValueError(f"{tw}: no rows")
        for row, row_over in t.rows.items():
            for col, test_key, col_over in _columns(t, cfg, tw):
                over = {**t.overrides, **(row_over or {}), **col_over}
                model = over.pop("model", None)
                cw = f"{tw}.rows[{row}] x columns[{col}]"
                protocol = _protocol(over.pop("protocol", None), model, cw)
                if model is not None:
                    model = cfg.baselines.get(model, model)
                    mid, train = f"model-{slug(_short(model), 40)}-{short_hash(model)}", None
                elif protocol != "cross":  # trained on the test set's halves: the training data plays no part
                    train = replace(from_dict(TrainConfig, {**cfg.train, **over}, where=cw), data="")
                    mid = f"{slug(protocol)}-{train_id(train, replace(base, data=''))}"
                else:
                    train = from_dict(TrainConfig, {**cfg.train, **over}, where=cw)
                    mid = train_id(train, base)
                cid = f"{mid}__{test_key}"
                cell = cells.get(cid) or Cell(cid, mid, test_key, train, model, protocol=protocol)
                cell.places.append((t.id, row, col))
                cells[cid] = cell
    for cell in cells.values():
        ts = cfg.test_sets[cell.test_key]
        fp = {"model": cell.model, "train": identity(cell.train) if cell.train else None, "test": asdict(ts),
              "eval": asdict(cfg.eval)}
        if cell.protocol != "cross":
            fp["protocol"] = cell.protocol
        else:  # the seed of the halves changes no cross-domain cell: their fingerprints stay as they were
            fp["eval"].pop("split_seed")
        cell.fingerprint = short_hash(fp, 16)
    return list(cells.values())


def _protocol(value: Any, model: Any, where: str) -> str:
    """The cell's protocol as text (``cross``, ``splits:N``); a baseline has no head to train on halves."""
    from fmmc.evaluation.protocols import parse_protocol

    try:
        p = str(parse_protocol(value))
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    if p != "cross" and model is not None:
        raise ValueError(f"{where}: protocol {p} trains a head on halves of the test set; a `model:` ({model}) has none "
                         "to train: drop one of them")
    return p
