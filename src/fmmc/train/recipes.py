"""Head recipes: ``recipe=paper`` trains the head with the configured values; ``recipe=auto`` chooses them by
stratified k-fold cross-validation on the training split, then refits on the whole training split.

    >>> choice = choose_recipe(cfg, train_data, y_train, num_classes)   # doctest: +SKIP
    >>> choice.values                                                    # doctest: +SKIP
    {'hidden': 0, 'standardize': True, 'lr': 0.01, 'weight_decay': 0.0001, 'epochs': 100}

Why: the paper's MLP (AdamW, lr 5e-5, early stopping) is made for 20k synthetic images; on a few hundred
photos it stops long before it has learnt (18 images for 15 epochs: 15 steps, near-uniform probabilities).
Frozen-feature practice (linear probes) standardises the features and fits a linear map, its strength
(weight decay, steps) chosen by cross-validation. ``auto`` searches :data:`GRID` (linear head or the MLP,
standardised or not, learning rate, weight decay) and the training length (:data:`STEPS`, read off one
run per grid point), and keeps what scores best on the held-out folds: mean accuracy, then mean NLL to
break ties. The configured values are not searched (the paper's lr 5e-5 needs more steps than CV
affords); ``recipe=paper`` trains with them.

Only the training split is read: the validation split (``val_data``, ``split=val`` or the seeded
``val_fraction`` cut) is left out, as is every ``split=test`` region, and the refit does not early-stop
on it (it trains for the chosen length and keeps the last epoch); validation is used afterwards, as in
``paper``, for the reported ``val_acc`` and the temperature. ``class_weights`` and ``label_smoothing``
apply as configured, in the folds and in the refit.

Cost: the folds of one candidate train together (``torch.func.vmap`` over the folds' stacked weights,
the head's own forward; AdamW is elementwise, so each fold trains as if alone). Above ``cv_max_rows``
training rows the folds are a stratified subsample (read from the feature cache when the split is
streamed, so CV never needs the whole split in memory), and the chosen length is carried over to the
whole split as the same number of optimiser steps.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fmmc.model.head import MaterialHead
from fmmc.train.feature_data import HeadData

log = logging.getLogger(__name__)
RECIPES = ("paper", "auto")
STEPS = (25, 50, 100, 200, 400)  # training lengths scored, in optimiser steps (batch_size rows each)
MAX_EPOCHS = 50  # ... and at most this many epochs of a fold (a small set needs no 400 full-batch steps)


@dataclass(frozen=True)
class Candidate:
    """One point of the grid: the head's shape and AdamW's settings (the length is scored along the run)."""

    hidden: int  # 0: linear head
    standardize: bool
    lr: float
    weight_decay: float

    def describe(self) -> str:
        shape = "linear head" if self.hidden == 0 else f"MLP head ({self.hidden} hidden)"
        return (f"{shape}, standardize={'on' if self.standardize else 'off'}, lr {self.lr:g}, "
                f"weight decay {self.weight_decay:g}")


# (hidden, lr, weight_decay, standardize values). AdamW's decay is decoupled (w -= lr * wd * w a step): 1.0 at
# lr 1e-2 over 400 steps shrinks by e^-4, a real L2 penalty on a linear probe; 1e-4 is none. The MLP (the
# paper's shape at 20x its lr; its layer norms already rescale) is tried unstandardised only: it costs
# 25x a linear head's arithmetic at 1024-d, and the paper's lr 5e-5 needs far more steps than CV affords.
GRID: tuple[tuple[int, float, float, tuple[bool, ...]], ...] = (
    (0, 1e-3, 1e-4, (True, False)), (0, 1e-2, 1e-4, (True, False)), (0, 1e-2, 1.0, (True, False)),
    (512, 1e-3, 0.01, (False,)))


@dataclass
class RecipeChoice:
    """What a recipe sets (``values``: TrainConfig fields), why (``reason``, one log line) and the record
    for ``summary.json`` (``report``)."""

    values: dict[str, Any]
    reason: str
    report: dict[str, Any]
    keep_last: bool = False  # refit: train the chosen length, no early stopping or selection on validation


def check_recipe(cfg: Any) -> None:
    if cfg.recipe not in RECIPES:
        raise ValueError(f"recipe={cfg.recipe!r}: choose paper (the configured hidden, standardize, lr, weight_decay, "
                         "epochs) or auto (chosen by cross-validation on the training split)")
    for name in ("epochs", "batch_size", "patience"):  # before any work: epochs=0 saved an untrained head
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: give a whole number of at least 1, e.g. {name}=20")
    if not cfg.lr > 0:
        raise ValueError(f"lr={cfg.lr!r}: the learning rate must be above 0, e.g. lr=1e-3")
    if cfg.recipe == "auto" and cfg.cv_folds < 2:
        raise ValueError(f"cv_folds={cfg.cv_folds}: cross-validation needs at least 2 folds (default 5)")
    if cfg.recipe == "auto" and cfg.mode != "head":
        raise ValueError("recipe=auto chooses the head on cached frozen features: it needs mode=head "
                         "(or recipe=paper for mode=full)")


def paper_choice(cfg: Any) -> RecipeChoice:
    values = {k: getattr(cfg, k) for k in ("hidden", "standardize", "lr", "weight_decay", "epochs")}
    reason = ("recipe=paper: the configured values (" + ", ".join(f"{k}={v}" for k, v in values.items())
              + "; early stopping on validation loss); recipe=auto chooses them by cross-validation")
    return RecipeChoice(values, reason, {"name": "paper", "chosen": values, "why": reason})


def adamw(params: list[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW as one fused kernel over all parameters (torch >= 2.4 on CPU): 1.7x the speed of CPU's default,
    a Python loop over the parameters, for a 768-d head at batch 64 (the step, not the matmuls, was half
    the time). It rounds differently in the last bit: weights differ from the loop's by ~1e-7. Older
    torch: the multi-tensor form, the loop's arithmetic exactly, 1.2x."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except RuntimeError:  # torch < 2.4: fused AdamW is CUDA-only
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, foreach=True)


def class_weights(y: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse-frequency weights (``n / (k * count)``; 0 for a class with no rows), as sklearn's 'balanced'."""
    counts = torch.bincount(y, minlength=k).float()
    return torch.where(counts > 0, counts.sum() / (k * counts.clamp_min(1)), torch.zeros_like(counts))


def loss_function(cfg: Any, y: torch.Tensor, k: int) -> nn.CrossEntropyLoss:
    """The training loss of ``cfg``: cross-entropy, class-balanced with ``class_weights`` (weights from the
    training labels ``y``), with ``label_smoothing``."""
    if not 0.0 <= cfg.label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={cfg.label_smoothing}: give a value in [0, 1), e.g. 0.1")
    weight = class_weights(y, k) if cfg.class_weights else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def feature_moments(data: HeadData) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and standard deviation of the head's input (vision dims, then text), in one
    pass over ``data`` (streamed splits too), accumulated in float64."""
    total = sq = None
    for vis, txt in data.passes():
        x = torch.cat([p for p in (vis, txt) if p is not None], dim=-1).double()
        total = x.sum(0) if total is None else total + x.sum(0)
        sq = (x * x).sum(0) if sq is None else sq + (x * x).sum(0)
    if total is None or sq is None or len(data) == 0:
        raise ValueError("standardize=true needs training features: every training region failed to load")
    mean = total / len(data)
    std = (sq / len(data) - mean * mean).clamp_min(0).sqrt()
    return mean.float(), std.float()


def stratified_folds(y: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """A fold number per row: each class's rows shuffled (seeded) and dealt round-robin, the deal of each
    class starting where the last one stopped, so folds differ in size by at most one row."""
    gen = torch.Generator().manual_seed(seed)
    folds = torch.empty(len(y), dtype=torch.long)
    at = 0
    for c in torch.unique(y).tolist():
        rows = (y == c).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=gen)]
        folds[rows] = (torch.arange(len(rows)) + at) % k
        at = (at + len(rows)) % k
    return folds


def stratified_subsample(y: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """Sorted indices of about ``m`` rows with the class proportions of ``y`` (every class keeps a row)."""
    gen = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(y).tolist():
        rows = (y == c).nonzero().flatten()
        take = max(1, round(len(rows) * m / len(y)))
        keep.append(rows[torch.randperm(len(rows), generator=gen)[:take]])
    return torch.cat(keep).sort().values


def choose_recipe(cfg: Any, data: HeadData, y: torch.Tensor, num_classes: int) -> RecipeChoice:
    """``cfg.recipe=auto``: the grid point and length that score best by ``cv_folds``-fold CV on ``data``
    (the training split's rows) and ``y`` (their labels); nothing else is read."""
    n = len(y)
    k = min(cfg.cv_folds, n)
    if k < 2 or len(torch.unique(y)) < 2:
        reason = (f"recipe=auto: {n} training row(s) of {len(torch.unique(y))} class(es) are too few to "
                  "cross-validate; training with the configured values (recipe=paper)")
        base = paper_choice(cfg)
        return RecipeChoice(base.values, reason, {"name": "paper", "chosen": base.values, "why": reason,
                                                  "asked": "auto"})
    rows = torch.arange(n) if n <= cfg.cv_max_rows else stratified_subsample(y, cfg.cv_max_rows, cfg.seed)
    vis, txt = data.batch(rows)
    yc = y[rows]
    folds = stratified_folds(yc, k, cfg.seed)
    batch = min(cfg.batch_size, min(int((folds != f).sum()) for f in range(k)))
    scores = []
    t0 = time.perf_counter()
    for hidden, lr, wd, standardize in GRID:
        scores += _cross_validate(hidden, lr, wd, standardize, cfg, vis, txt, yc, folds, k, batch, num_classes)
    best = max(scores, key=_rank)
    steps_per_epoch = math.ceil(n / min(cfg.batch_size, n))
    epochs = max(1, round(best["steps"] / steps_per_epoch))
    values = {"hidden": best["hidden"], "standardize": best["standardize"], "lr": best["lr"],
              "weight_decay": best["weight_decay"], "epochs": epochs}
    cand = Candidate(best["hidden"], best["standardize"], best["lr"], best["weight_decay"])
    subsample = f" (a stratified subsample of {len(rows)} of {n})" if len(rows) < n else ""
    reason = (f"recipe=auto chose {cand.describe()}, {best['steps']} steps (epochs={epochs}): best mean held-out "
              f"accuracy {best['cv_acc']:.3f} +- {best['cv_acc_std']:.3f} (NLL {best['cv_nll']:.3f}) of "
              f"{len(scores)} (setting, length) pairs by {k}-fold CV on the {len(rows)} training rows{subsample}"
              + ("; the longest length scored: more steps may help (recipe=paper with these values and more "
                 "epochs)" if best["steps"] == max(s["steps"] for s in scores) else ""))
    report = {"name": "auto", "chosen": values, "why": reason, "metric": "mean held-out accuracy, then NLL",
              "folds": k, "cv_rows": len(rows), "train_rows": n, "batch_size": batch,
              "seconds": round(time.perf_counter() - t0, 2), "settings": _best_per_setting(scores)}
    return RecipeChoice(values, reason, report, keep_last=True)


def _rank(score: dict[str, Any]) -> tuple[float, float]:
    return score["cv_acc"], -score["cv_nll"]


def _best_per_setting(scores: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each grid point at its best length, best first (what summary.json lists)."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for s in scores:
        key = (s["hidden"], s["standardize"], s["lr"], s["weight_decay"])
        if key not in best or _rank(s) > _rank(best[key]):
            best[key] = s
    return sorted(best.values(), key=_rank, reverse=True)


def _cross_validate(hidden: int, lr: float, weight_decay: float, standardize: tuple[bool, ...], cfg: Any,
                    vis: torch.Tensor | None, txt: torch.Tensor | None, y: torch.Tensor, folds: torch.Tensor, k: int,
                    batch: int, num_classes: int) -> list[dict[str, Any]]:
    """Scores of (hidden, lr, weight_decay) with each ``standardize`` value at each length of :data:`STEPS`,
    from one run of the heads side by side: copy ``s * k + f`` is fold ``f`` with ``standardize[s]`` (an
    unstandardised copy keeps mean 0 and std 1, which computes exactly what a head without them does)."""
    from torch.func import functional_call, stack_module_state, vmap

    train_rows = [(folds != f).nonzero().flatten() for f in range(k)]
    held_rows = [(folds == f).nonzero().flatten() for f in range(k)]
    max_steps = min(STEPS[-1], MAX_EPOCHS * math.ceil(min(len(r) for r in train_rows) / batch))
    lengths = sorted({s for s in STEPS if s < max_steps} | {max_steps})
    with torch.random.fork_rng(devices=[]):  # seeded inits and dropout, and the caller's RNG left as it was
        torch.manual_seed(cfg.seed)
        heads = [MaterialHead(0 if vis is None else vis.shape[1], 0 if txt is None else txt.shape[1], num_classes,
                              hidden, cfg.dropout, cfg.streams, standardize=True) for _ in range(k)]
        heads = [h if s == 0 else copy.deepcopy(h) for s in range(len(standardize)) for h in heads]  # same inits
        for c, h in enumerate(heads):
            if standardize[c // k]:
                h.set_standardization(*feature_moments(_rows_data(vis, txt, train_rows[c % k])))
        params, buffers = stack_module_state(heads)
        base = copy.deepcopy(heads[0]).to("meta")
        fn = vmap(lambda p, b, v, t: functional_call(base, (p, b), (v, t)),
                  in_dims=(0, 0, None if vis is None else 0, None if txt is None else 0), randomness="different")
        opt = adamw(list(params.values()), lr, weight_decay)
        losses = [loss_function(cfg, y[rows], num_classes) for rows in train_rows] * len(standardize)
        gen = torch.Generator().manual_seed(cfg.seed)
        order = [rows[torch.randperm(len(rows), generator=gen)] for rows in train_rows]
        at = [0] * k
        heldout: dict[int, tuple[list[float], list[float]]] = {}
        for step in range(1, max_steps + 1):
            picks = []
            for f in range(k):  # every copy of a fold sees the same batches
                if at[f] + batch > len(order[f]):  # a new epoch of this fold: a new order
                    order[f], at[f] = train_rows[f][torch.randperm(len(train_rows[f]), generator=gen)], 0
                picks.append(order[f][at[f] : at[f] + batch])
                at[f] += batch
            idx = torch.stack(picks * len(standardize))
            base.train()
            logits = fn(params, buffers, None if vis is None else vis[idx], None if txt is None else txt[idx])
            loss = sum(fn_(lg, y[i]) for fn_, lg, i in zip(losses, logits, idx))
            opt.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            opt.step()
            if step in lengths:
                base.eval()
                with torch.no_grad():
                    heldout[step] = _held_out(base, params, buffers, vis, txt, y, held_rows)
    out = []
    for s, std in enumerate(standardize):
        for step, (accs, nlls) in heldout.items():
            accs_s = torch.tensor(accs[s * k : (s + 1) * k])
            out.append({"hidden": hidden, "standardize": std, "lr": lr, "weight_decay": weight_decay,
                        "steps": step, "cv_acc": round(float(accs_s.mean()), 4),
                        "cv_acc_std": round(float(accs_s.std()), 4) if k > 1 else 0.0,
                        "cv_nll": round(sum(nlls[s * k : (s + 1) * k]) / len(y), 4)})
    return out


def _held_out(base: MaterialHead, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
              vis: torch.Tensor | None, txt: torch.Tensor | None, y: torch.Tensor,
              held_rows: list[torch.Tensor]) -> tuple[list[float], list[float]]:
    """Accuracy and summed NLL of every copy on its fold's held-out rows."""
    from torch.func import functional_call

    k = len(held_rows)
    accs, nlls = [], []
    for c in range(len(next(iter(params.values())))):
        rows = held_rows[c % k]
        lf = functional_call(base, ({n: p[c] for n, p in params.items()}, {n: b[c] for n, b in buffers.items()}),
                             (None if vis is None else vis[rows], None if txt is None else txt[rows]))
        accs.append(float((lf.argmax(-1) == y[rows]).float().mean()))
        nlls.append(float(nn.functional.cross_entropy(lf, y[rows], reduction="sum")))
    return accs, nlls


def _rows_data(vis: torch.Tensor | None, txt: torch.Tensor | None, rows: torch.Tensor) -> HeadData:
    from fmmc.train.feature_rows import FeatureRows

    return HeadData(None if vis is None else FeatureRows.from_tensor(vis[rows]), None if txt is None else txt[rows],
                    rows.tolist(), [])
