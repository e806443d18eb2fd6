"""Batch prediction that survives a kill: regions are predicted a batch at a time and each finished
batch goes into a :class:`~fmmc.core.journal.Journal` before the next starts. Rerun with the same journal
and only the unfinished regions are predicted; the result is the same as one uninterrupted run.

Used by ``fmmc predict FOLDER --out F`` (``--resume``) and ``fmmc eval`` (which resumes on its own).
Works with any model that has ``labels`` and ``predict_regions(regions, classes=, progress=, ...)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tqdm.auto import tqdm

from fmmc.core.journal import Journal
from fmmc.data.records import Region

BATCH = 16  # regions per journaled batch: what a kill can cost


def region_keys(regions: list[Region]) -> list[str]:
    """The journal key of each region: its id, made unique by position where ids repeat."""
    ids = [r.id for r in regions]
    if len(set(ids)) == len(ids):
        return ids
    return [f"{i}:{rid}" for i, rid in enumerate(ids)]


def predict_journaled(model: Any, regions: list[Region], journal: Journal | None, *, batch: int = BATCH,
                      progress: bool | str = True, **kwargs: Any) -> tuple[list[Any], list[tuple[str, str]]]:
    """``model.predict_regions(regions, **kwargs)``, a batch at a time through ``journal`` (None: no journal).

    Returns predictions aligned with ``regions`` (None where one failed) and the failures, exactly as
    ``predict_regions`` does. Failed regions are tried again on a rerun; finished ones are not.
    """
    from fmmc.model.prediction import Prediction

    labels = tuple(model.labels)
    keys = region_keys(regions)
    done = journal.done if journal is not None else {}
    todo = [i for i, k in enumerate(keys) if "probs" not in done.get(k, {})]
    desc = progress if isinstance(progress, str) else "predict"
    bar = tqdm(total=len(regions), initial=len(regions) - len(todo), desc=desc, unit="region",
               disable=progress is False, dynamic_ncols=True)
    fresh: dict[str, dict[str, Any]] = {}
    for start in range(0, len(todo), batch):
        idx = todo[start:start + batch]
        preds, failures = model.predict_regions([regions[i] for i in idx], progress=False, **kwargs)
        errors = dict(failures)
        records = []
        for i, p in zip(idx, preds):
            if p is not None:
                probs = np.asarray(p.probs)  # floats round-trip exactly through JSON; the dtype is kept
                rec: dict[str, Any] = {"key": keys[i], "probs": [float(v) for v in probs], "dtype": str(probs.dtype)}
                if p.description is not None:
                    rec["description"] = p.description
                if p.extra:
                    rec["extra"] = p.extra
                if p.candidates is not None:
                    rec["candidates"] = list(p.candidates)
            else:
                rec = {"key": keys[i], "error": errors.get(regions[i].id, "no prediction returned")}
            records.append(rec)
        if journal is not None:
            journal.append(records)
        fresh.update((r["key"], r) for r in records)
        bar.update(len(idx))
    bar.close()
    out: list[Any] = []
    failures_out: list[tuple[str, str]] = []
    for r, k in zip(regions, keys):
        rec = fresh.get(k) or done.get(k) or {}
        if "probs" in rec:
            cand = rec.get("candidates")
            out.append(Prediction(np.asarray(rec["probs"], dtype=rec.get("dtype", "float64")), labels, id=r.id,
                                  description=rec.get("description"), extra=dict(rec.get("extra") or {}),
                                  candidates=None if cand is None else tuple(int(i) for i in cand)))
        else:
            out.append(None)
            failures_out.append((r.id, str(rec.get("error", "no prediction returned"))))
    return out, failures_out
