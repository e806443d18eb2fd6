"""The in-domain protocol: ``fmmc eval DATA --protocol splits:10 --backbone SPEC [key=value ...]``.

    >>> from fmmc.evaluation.in_domain import run_splits
    >>> from fmmc.train.config import TrainConfig
    >>> cfg = TrainConfig(backbone="hf:facebook/dinov2-base", streams="vision")
    >>> m = run_splits("fmd:/data/fmd", "runs/fmd-splits", cfg, "splits:10")     # doctest: +SKIP
    >>> m["mean"]["acc"], m["std"]["acc"]                                        # doctest: +SKIP

For each split (:mod:`fmmc.evaluation.protocols`) the training half is written as a dataset and trained on
by :func:`fmmc.train.trainer.train`, exactly as ``fmmc train`` would (its own validation split for early
stopping and calibration comes out of the training half); the model then predicts the test half through
:func:`~fmmc.evaluation.evaluate.evaluate`, as ``fmmc eval`` would. All splits share the feature cache, so
each region's features are extracted once, by the first split that needs them.

Output folder (written as a whole when every split is done, by the rules of :mod:`fmmc.core.outputs`)::

    metrics.json        mean and std over the splits, every split's numbers, the training config
    splits.json         the seed and, per split, the region ids of each half (--splits FILE reruns them)
    report.md           the protocol, mean +- std, a line per split
    splits/NN/          the split's own `fmmc eval` folder (metrics.json, predictions.jsonl, report.md),
                        plus train_summary.json and train_config.yaml of its head

Resuming: until the folder is written, the work lives in ``.<out>.splits-work/`` beside it; a rerun of the
same command keeps the splits already scored, a model already trained and the predictions journaled
(:func:`~fmmc.evaluation.evaluate.eval_journal`), and starts over when the splits or the settings changed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from fmmc.data.readers.spec import TestSet
from fmmc.evaluation.evaluate import EvalSettings
from fmmc.evaluation.protocols import (
    SPLITS_FILE,
    Protocol,
    Split,
    aggregate,
    make_splits,
    parse_protocol,
    read_splits,
    resolve_splits,
    write_splits,
)
from fmmc.train.config import TrainConfig

log = logging.getLogger(__name__)
KEEP = ("n", "acc", "macc", "miou", "top3", "top5", "ece", "failed", "abstained")  # per split, in metrics.json


def run_splits(data: str | TestSet, out: str | Path, train_cfg: TrainConfig, protocol: str | Protocol | None = None,
               *, seed: int = 0, splits_file: str | Path | None = None, settings: EvalSettings | None = None,
               cache_dir: str | Path | None = None, device: str | None = None, overwrite: bool = False,
               allow_outside_root: bool = False, echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train and score the head of ``train_cfg`` on every split of ``data`` and write ``out``; returns the
    metrics. ``splits_file`` reruns the splits of an earlier run (``protocol`` may then be None, or must
    agree on their number); else ``protocol`` (``splits:N``) draws N splits seeded ``seed``."""
    from fmmc.core.outputs import check_output_dir
    from fmmc.data.readers.spec import load_test_set

    out = check_output_dir(out, "eval", overwrite)
    echo = echo or log.info
    s = settings or EvalSettings()
    t0 = time.time()
    cache = cache_dir if cache_dir is not None else train_cfg.cache_dir
    ts = data if isinstance(data, TestSet) else load_test_set(data, split=s.split, cache_dir=cache,
                                                              allow_outside_root=allow_outside_root)
    splits, seed = _splits(ts, protocol, seed, splits_file)
    halves = resolve_splits(splits, ts.regions, f"--splits {splits_file}" if splits_file else ts.spec)
    cfg = replace(train_cfg, data="", out="", cache_dir=str(cache) if cache is not None else None,
                  device=device or train_cfg.device, progress=s.progress)
    work = _work_dir(out, ts, splits, cfg, s)
    per_split = []
    for i, (train_r, test_r) in enumerate(halves):
        m = _run_split(work / f"{i:02d}", i, train_r, test_r, ts, cfg, s)
        per_split.append({"split": i, "seed": splits[i].seed, "n_train": len(train_r), "n_test": len(test_r),
                          **{k: m.get(k) for k in KEEP}})
        echo(f"  split {i + 1}/{len(halves)}: acc {m['acc']:.3f}  mAcc {m['macc']:.3f}  mIoU {m['miou']:.3f}")
    agg = aggregate(per_split)
    metrics = {"protocol": f"splits:{len(splits)}", "n_splits": len(splits), "split_seed": seed,
               "n": len(ts.regions), **agg["mean"], "mean": agg["mean"], "std": agg["std"], "per_split": per_split,
               "classes_mode": s.classes, "model": f"head on {cfg.backbone}" if cfg.streams != "language" else "head",
               "data": ts.spec, "seconds": round(time.time() - t0, 2)}
    _write(out, work, metrics, splits, seed, ts, cfg, s, overwrite)
    shutil.rmtree(work, ignore_errors=True)
    return metrics


def _splits(ts: TestSet, protocol: str | Protocol | None, seed: int,
            splits_file: str | Path | None) -> tuple[list[Split], int]:
    if splits_file is not None:
        file_seed, splits = read_splits(splits_file)
        p = parse_protocol(protocol) if protocol else None
        if p is not None and (p.kind != "splits" or p.n_splits != len(splits)):
            raise ValueError(f"--splits {splits_file} holds {len(splits)} split(s) but --protocol is {p}; drop "
                             "--protocol (the file decides) or give the matching splits:N")
        return splits, file_seed
    p = parse_protocol(protocol)
    if p.kind != "splits":
        raise ValueError(f"run_splits: protocol {p} is not splits:N; `fmmc eval MODEL --data SPEC` runs the cross "
                         "protocol")
    return make_splits(ts.regions, p.n_splits, seed, ts.spec), seed


def _work_dir(out: Path, ts: TestSet, splits: list[Split], cfg: TrainConfig, s: EvalSettings) -> Path:
    """``.<out>.splits-work`` beside ``out``, keyed by everything that decides a split's numbers: the work of
    another configuration is cleared, the same one's is kept (a resumed run)."""
    from fmmc.evaluation.grid import identity, short_hash

    work = out.parent / f".{out.name}.splits-work"
    key = short_hash({"data": ts.spec, "splits": [asdict(x) for x in splits], "train": identity(cfg),
                      "eval": {k: v for k, v in asdict(s).items() if k not in ("progress",)}}, 16)
    stamp = work / "key.json"
    if work.exists():
        try:
            same = json.loads(stamp.read_text()).get("key") == key
        except (OSError, ValueError):
            same = False
        if not same:
            log.info("%s: work of another configuration; starting over", work)
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"key": key}))
    return work


def _run_split(folder: Path, i: int, train_r: list[Any], test_r: list[Any], ts: TestSet, cfg: TrainConfig,
               s: EvalSettings) -> dict[str, Any]:
    """Train the head on ``train_r`` and score it on ``test_r``: the split's metrics (from its eval folder)."""
    from fmmc.data.dataset import write_dataset
    from fmmc.evaluation.evaluate import eval_journal, evaluate, write_evaluation
    from fmmc.evaluation.models import load_eval_model
    from fmmc.train.trainer import train

    done = folder / "eval" / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    run = folder / "run"
    if not ((run / "summary.json").is_file() and (run / "model" / "config.json").is_file()):
        data = folder / "data"
        write_dataset(data, [replace(r, split=None) for r in train_r])  # every line trains: none is split=test
        train(replace(cfg, data=str(data), out=str(run)), overwrite=True)
    model = load_eval_model(str(run / "model"), cache_dir=cfg.cache_dir, device=cfg.device,
                            num_workers=cfg.num_workers)
    model.spec = f"{model.spec} (split {i})"
    half = TestSet(spec=f"{ts.spec} [split {i}, test half]", kind=ts.kind, regions=test_r)
    journal = eval_journal(folder / "eval", model, half, s)
    ev = evaluate(model, half, s, journal)
    write_evaluation(ev, folder / "eval", overwrite=True)  # the work folder's own, recomputed
    journal.discard()
    return ev.metrics


def _write(out: Path, work: Path, metrics: dict[str, Any], splits: list[Split], seed: int, ts: TestSet,
           cfg: TrainConfig, s: EvalSettings, overwrite: bool) -> None:
    from fmmc import __version__
    from fmmc.core.io import dumps
    from fmmc.core.outputs import atomic_dir
    from fmmc.evaluation.report.markdown import splits_report

    meta = {"fmmc_version": __version__, "eval": asdict(s), "train_config": _plain_cfg(cfg),
            "test_set": {"spec": ts.spec, "kind": ts.kind, "notes": ts.notes, "stats": ts.stats}}
    with atomic_dir(out, "eval", overwrite) as tmp:
        write_splits(tmp / SPLITS_FILE, splits, seed, ts.spec)
        (tmp / "metrics.json").write_text(dumps({**metrics, **meta}) + "\n")
        for i in range(len(splits)):
            src, dst = work / f"{i:02d}", tmp / "splits" / f"{i:02d}"
            shutil.copytree(src / "eval", dst)
            for name, target in (("summary.json", "train_summary.json"), ("train_config.yaml", "train_config.yaml")):
                if (src / "run" / name).is_file():
                    shutil.copyfile(src / "run" / name, dst / target)
        (tmp / "report.md").write_text(splits_report(metrics, meta))
    log.info("in-domain evaluation written to %s", out)


def _plain_cfg(cfg: TrainConfig) -> dict[str, Any]:
    """The training settings of every split (the per-split data and run folders are temporary)."""
    d = asdict(cfg)
    for k in ("data", "out", "progress"):
        d.pop(k, None)
    return d

