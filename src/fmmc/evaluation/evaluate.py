"""Evaluate any model on a test set and write the result folder (``fmmc eval`` and ``fmmc reproduce``).

    >>> from fmmc.evaluation.evaluate import EvalSettings, run_eval
    >>> metrics = run_eval("runs/demo/model", "fmd:/data/fmd", "runs/eval-fmd")     # doctest: +SKIP
    >>> metrics["acc"], metrics["miou"]                                              # doctest: +SKIP

Output folder (written to a temp folder, renamed into place only when complete):
``metrics.json`` (every number, per class, calibration bins, confusion matrix), ``predictions.jsonl``
(one line per region: true and predicted class, confidence, top-k, abstentions and failures),
``confusion.png``, ``reliability.png``, ``report.md`` (tables, figures, resolved configuration).

``classes="restrict"`` (default, as the paper) lets the model choose only among the classes present in
the test set (FMD: 10 of the 21); ``"all"`` lets it choose any class of its taxonomy. Regions a model
cannot answer (unreadable image, failed request, unparseable VLM reply) are counted wrong.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fmmc.core.journal import Journal
from fmmc.data.readers.spec import TestSet
from fmmc.evaluation.metrics import summarize

log = logging.getLogger(__name__)
CLASS_MODES = ("restrict", "all")


@dataclass
class EvalSettings:
    classes: str = "restrict"  # restrict: choose among the test set's classes (paper) | all: whole taxonomy
    split: str | None = None
    top_k: int = 5  # entries per prediction line
    n_boot: int = 1000  # bootstrap resamples for the 95% CIs
    seed: int = 0
    progress: bool = True
    plots: bool = True


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    failures: list[tuple[str, str]]
    model: dict[str, Any]
    test_set: TestSet
    settings: EvalSettings
    seconds: float


def test_classes(model: Any, ts: TestSet) -> list[str]:
    """The test set's labels as model class names (taxonomy order); a label the model lacks is an error."""
    tax = model.taxonomy
    missing: dict[str, int] = {}
    names = set()
    for r in ts.regions:
        name = tax.canonical(r.label)
        if name is None:
            missing[r.label] = missing.get(r.label, 0) + 1
        else:
            names.add(name)
    if missing:
        shown = ", ".join(f"{k!r} ({v} regions)" for k, v in sorted(missing.items()))
        raise ValueError(
            f"model {getattr(model, 'spec', '')!r} (taxonomy {tax.name!r}, {len(tax)} classes) cannot predict test "
            f"class(es) {shown} of {ts.spec}. Its classes: {', '.join(tax.names)}. Map the test labels onto its "
            "taxonomy (e.g. the spec's map=FILE option), or use a model trained with a taxonomy that has them."
        )
    return [n for n in tax.names if n in names]


def _check_descriptions(model: Any, ts: TestSet) -> None:
    cfg = getattr(model, "config", None)
    if getattr(cfg, "streams", None) in ("both", "language") and getattr(cfg, "describer", None) == "metadata":
        lacking = [r.id for r in ts.regions if r.description is None]
        if lacking:
            raise ValueError(
                f"model {getattr(model, 'spec', '')!r} reads descriptions from the dataset (describer 'metadata') but "
                f"{len(lacking)} of {len(ts.regions)} test regions have none (first: {lacking[0]!r}). Pass "
                "--describer SPEC (e.g. openai:gpt-4o-mini) to describe the test regions."
            )


def evaluate(model: Any, ts: TestSet, settings: EvalSettings | None = None, journal: Journal | None = None) -> Evaluation:
    """Predict every region of ``ts`` and compute the metrics. Nothing is written but ``journal`` (see
    :func:`eval_journal`): finished predictions, a batch at a time, so a killed evaluation resumes."""
    from fmmc.evaluation.models import model_config
    from fmmc.model.journaled import predict_journaled

    s = settings or EvalSettings()
    if s.classes not in CLASS_MODES:
        raise ValueError(f"classes={s.classes!r}: choose restrict (the test set's classes, as the paper) or all")
    t0 = time.time()
    classes = test_classes(model, ts)
    _check_descriptions(model, ts)
    labels = list(model.labels)
    preds, failures = predict_journaled(model, ts.regions, journal,
                                        classes=classes if s.classes == "restrict" else "all",
                                        progress="predict" if s.progress else False)
    if all(p is None for p in preds):
        first = f" (first: {failures[0][0]}: {failures[0][1]})" if failures else ""
        raise RuntimeError(f"every one of the {len(ts.regions)} regions of {ts.spec} failed{first}; no result written")
    k = len(labels)
    y_true = np.array([labels.index(model.taxonomy.canonical(r.label)) for r in ts.regions], dtype=np.int64)
    probs = np.zeros((len(ts.regions), k))
    y_pred = np.full(len(ts.regions), -1, dtype=np.int64)
    errors = dict(failures)
    rows = []
    for i, (r, p) in enumerate(zip(ts.regions, preds)):
        row: dict[str, Any] = {"id": r.id, "image": str(r.image), "true": labels[y_true[i]]}
        if r.mask is not None:
            row["mask"] = str(r.mask)
        abstained = p is None or bool(p.extra.get("abstained"))
        if p is not None and not abstained:
            probs[i] = p.probs
            y_pred[i] = int(np.argmax(p.probs))
            row.update(pred=labels[y_pred[i]], confidence=round(float(p.probs[y_pred[i]]), 6),
                       correct=bool(y_pred[i] == y_true[i]), top=[[lab, round(v, 6)] for lab, v in p.top(s.top_k)])
        else:
            row.update(pred=None, confidence=0.0, correct=False, abstained=True)
        if p is not None:
            row.update({key: v for key, v in p.extra.items() if key != "abstained"})
            if p.description is not None:
                row["description"] = p.description
        row.update({key: v for key, v in r.extra.items() if key not in row})  # the line's own fields, passed on
        if r.id in errors:
            row["error"] = errors[r.id]
        rows.append(row)
    metrics = summarize(y_true, y_pred, probs, labels, top_k=(3, 5), n_boot=s.n_boot, seed=s.seed)
    metrics.update(failed=len(failures), classes_mode=s.classes, scored_classes=classes if s.classes == "restrict"
                   else labels, model=getattr(model, "spec", ""), data=ts.spec)
    unparsed = [r for r in rows if r.get("abstained") and "error" not in r]
    metrics["unparsed"] = len(unparsed)
    return Evaluation(metrics, rows, failures, model_config(model), ts, s, round(time.time() - t0, 2))


def eval_journal(out: str | Path, model: Any, ts: TestSet, settings: EvalSettings) -> Journal:
    """The journal of an evaluation into ``out``: ``.<out>.predictions.partial.jsonl`` beside it, keyed by
    the model (its fingerprint: config and weights), the test set and the settings that change a
    prediction. A rerun of the same evaluation after a kill predicts only what is missing."""
    from fmmc.evaluation.models import model_config

    out = Path(out)
    fingerprint = model.fingerprint() if callable(getattr(model, "fingerprint", None)) else None
    header = {"kind": "eval", "model": getattr(model, "spec", ""), "model_config": model_config(model),
              "fingerprint": fingerprint, "test_set": ts.spec, "split": settings.split, "classes": settings.classes,
              "regions": len(ts.regions)}
    return Journal(out.parent / f".{out.name}.predictions.partial.jsonl", header, on_mismatch="restart")


def write_evaluation(ev: Evaluation, out: str | Path, overwrite: bool = False) -> Path:
    """Write the result folder atomically (see the module docstring for its files). An existing ``out`` is
    replaced only when it is an earlier ``fmmc eval`` result and ``overwrite`` (:mod:`fmmc.core.outputs`)."""
    from fmmc import __version__
    from fmmc.core.io import dumps
    from fmmc.core.outputs import atomic_dir
    from fmmc.evaluation.report.markdown import eval_report

    out = Path(out)
    with atomic_dir(out, "eval", overwrite) as tmp:
        m = ev.metrics
        meta = {"fmmc_version": __version__, "seconds": ev.seconds, "model_config": ev.model,
                "eval": asdict(ev.settings), "test_set": {"spec": ev.test_set.spec, "kind": ev.test_set.kind,
                                                         "notes": ev.test_set.notes, "stats": ev.test_set.stats}}
        (tmp / "metrics.json").write_text(dumps({**m, **meta}) + "\n")
        with open(tmp / "predictions.jsonl", "w", encoding="utf-8") as f:
            for row in ev.rows:
                f.write(dumps(row, indent=None) + "\n")
        figures = {}
        if ev.settings.plots:
            figures = _figures(ev, tmp)
        (tmp / "report.md").write_text(eval_report(ev, figures, meta))
    log.info("evaluation written to %s", out)
    return out


def _figures(ev: Evaluation, tmp: Path) -> dict[str, str]:
    from fmmc.evaluation.report.plots import confusion_png, reliability_png

    m = ev.metrics
    labels = m["confusion"]["labels"]
    cm = np.asarray(m["confusion"]["matrix"])
    abst = np.asarray(m["confusion"]["abstained"])
    rows = [i for i, lab in enumerate(labels) if lab in m["classes_present"]]
    cols = sorted(set(rows) | {j for j in range(len(labels)) if cm[:, j].sum() > 0})
    mat = cm[np.ix_(rows, cols)]
    col_names = [labels[j] for j in cols]
    if abst.sum():
        mat = np.concatenate([mat, abst[rows, None]], axis=1)
        col_names.append("(no answer)")
    out = {}
    name = _short_name(str(m.get("model", "")))
    if confusion_png(mat, [labels[i] for i in rows], col_names, tmp / "confusion.png", title=f"{name} on {ev.test_set.kind}"):
        out["confusion"] = "confusion.png"
    if reliability_png(m["calibration"], m["ece"], tmp / "reliability.png"):
        out["reliability"] = "reliability.png"
    return out


def _short_name(spec: str) -> str:
    """A figure title for a model: ``runs/x/model`` -> ``x/model``; zero-shot specs without options."""
    if spec.startswith("zeroshot:"):
        return spec.split("?", 1)[0][-60:]
    p = Path(spec)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def run_eval(model: str | Any, data: str, out: str | Path | None, settings: EvalSettings | None = None,
             cache_dir: str | Path | None = None, describer: str | None = None, device: str = "cpu",
             test_set: TestSet | None = None, overwrite: bool = False,
             allow_outside_root: bool = False, num_workers: int | None = None) -> dict[str, Any]:
    """Load the test set and model, evaluate, write ``out`` (when given; checked before any work, see
    :func:`write_evaluation`); returns the metrics."""
    from fmmc.core.outputs import check_output_dir
    from fmmc.data.readers.spec import load_test_set
    from fmmc.evaluation.models import load_eval_model

    if out is not None:
        check_output_dir(out, "eval", overwrite)
    s = settings or EvalSettings()
    ts = test_set or load_test_set(data, split=s.split, cache_dir=cache_dir, allow_outside_root=allow_outside_root)
    m = (load_eval_model(model, cache_dir=cache_dir, describer=describer, device=device, num_workers=num_workers)
         if isinstance(model, str) else model)
    journal = eval_journal(out, m, ts, s) if out is not None else None
    try:
        ev = evaluate(m, ts, s, journal)
    except BaseException:
        if journal is not None and not journal.successes:
            journal.discard()  # nothing finished to keep
        raise
    if out is not None:
        write_evaluation(ev, out, overwrite)
        journal.discard()  # type: ignore[union-attr]
    return ev.metrics
