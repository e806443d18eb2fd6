"""Train the two-stream classifier: ``fmmc train --data DATASET --out RUN [key=value ...]``.

    >>> from fmmc.train.config import TrainConfig
    >>> from fmmc.train.trainer import train
    >>> run = train(TrainConfig(data="my_dataset", backbone="builtin:efficientnet-lite0", streams="vision"))  # doctest: +SKIP

Head mode (the paper): features from frozen backbones are extracted once (and cached on disk), then only
the head is trained with AdamW + cross-entropy, early stopping on validation loss, and a temperature
fitted on the validation split. ``recipe=auto`` first chooses the head and its optimisation by
cross-validation on the training split (:mod:`fmmc.train.recipes`). Full mode back-propagates into the
vision backbone as well (ablation).
"""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fmmc.core.config import save_config
from fmmc.data.dataset import DatasetError, load_dataset, split_regions
from fmmc.data.records import Region
from fmmc.model.head import MaterialHead, fit_temperature
from fmmc.taxonomy import Taxonomy, load_taxonomy
from fmmc.train import feature_rows, recipes
from fmmc.train.config import TrainConfig
from fmmc.train.feature_data import HeadData, head_data

log = logging.getLogger(__name__)
MIN_CALIBRATION = 20  # fewer validation regions than this: a fitted temperature would be noise, keep T=1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_training_data(spec: str, allow_outside_root: bool = False, split: str | None = None) -> list[Region]:
    """The regions of ``data=`` / ``val_data=``: a dataset folder (metadata.jsonl), or ``folder:DIR`` with options
    (``folder:DIR?map=fmd``), read as ``fmmc eval --data folder:DIR`` reads it: every image under
    ``DIR/<class>/`` is one whole-image region labelled by its folder. ``split``: only that split's regions
    (a dataset's; a folder tree has none)."""
    if not str(spec).startswith("folder:"):
        return load_dataset(spec, split=split, allow_outside_root=allow_outside_root)
    if split:
        raise DatasetError(f"split {split!r}: {spec} is a folder:DIR tree, which has no splits; drop --split")
    from fmmc.data.readers.folder import load_folder
    from fmmc.data.readers.spec import parse_data_spec

    ds = parse_data_spec(str(spec))
    ts = load_folder(ds.path, **ds.options)  # type: ignore[arg-type]
    for note in ts.notes:
        log.warning("%s: %s", spec, note)
    if not ts.regions:
        raise DatasetError(f"{spec}: no images in its class folders; expected {ds.path}/<class>/*.jpg")
    return ts.regions


def split_for_training(cfg: TrainConfig) -> tuple[list[Region], list[Region]]:
    """(train, val) regions following cfg: val_data, else `split` fields (normalised when read: train, val,
    test), else a seeded split stratified by label that keeps each image (and each ``group``) on one side."""
    if not cfg.data:
        raise ValueError("no training data: pass --data DATASET (a folder with metadata.jsonl) or --data "
                         "folder:DIR (DIR/<class>/*.jpg)")
    regions = [r for r in load_training_data(cfg.data, cfg.allow_outside_paths) if r.split != "test"]
    if cfg.val_data:
        val = [r for r in load_training_data(cfg.val_data, cfg.allow_outside_paths) if r.split not in ("test", "train")]
        train = regions
    elif any(r.split == "val" for r in regions):
        val = [r for r in regions if r.split == "val"]
        train = [r for r in regions if r.split != "val"]
    else:
        train, val = split_regions(regions, cfg.val_fraction, cfg.seed)
    if cfg.train_fraction < 1.0:
        if not 0 < cfg.train_fraction:
            raise ValueError(f"train_fraction must be in (0, 1], got {cfg.train_fraction}")
        _, train = split_regions(train, 1.0 - cfg.train_fraction, cfg.seed)
    if cfg.null_mask:
        train = [replace(r, mask=None, box=None) for r in train]
        val = [replace(r, mask=None, box=None) for r in val]
    return train, val


def label_indices(regions: list[Region], taxonomy: Taxonomy, where: str) -> torch.Tensor:
    bad = [(r.id, r.label) for r in regions if r.label is None or r.label not in taxonomy]
    if bad:
        shown = ", ".join(f"{i} ({lab!r})" for i, lab in bad[:5])
        raise ValueError(
            f"{where}: {len(bad)} region(s) have no label or one outside taxonomy {taxonomy.name!r}: {shown}"
            f"{' ...' if len(bad) > 5 else ''}. Known labels: {', '.join(taxonomy.names)}. "
            "Fix the labels or pass --taxonomy FILE with these classes."
        )
    return torch.tensor([taxonomy.index(r.label) for r in regions], dtype=torch.long)  # type: ignore[arg-type]


INFERENCE_NOTE = ("describer=metadata: the language stream learns from the dataset's 'description' fields, and a "
                  "new photo has none, so predicting with this model needs a description (--description TEXT) or a "
                  "describer that can describe a photo (--describer openai:gpt-4o-mini, hf:<local VLM> or none); "
                  "to train one that describes photos itself, pass describer=openai:gpt-4o-mini or hf:<local VLM> "
                  "(or describer=none / streams=vision)")


def check_descriptions(cfg: TrainConfig, regions: list[Region]) -> tuple[TrainConfig, list[str]]:
    """What the ``metadata`` describer can read from ``regions``: ``(cfg, notes)``. Every region described:
    cfg as is and a note that a new photo has no dataset description; none described: the vision stream
    only (``streams=vision``); some described: ValueError naming how many lack one and the first."""
    from fmmc.model.config import DATASET_DESCRIBERS

    if cfg.streams == "vision" or cfg.describer not in DATASET_DESCRIBERS:
        return cfg, []
    missing = [r for r in regions if r.description is None]
    where = cfg.data + (f" + {cfg.val_data}" if cfg.val_data else "")
    if missing and (len(missing) < len(regions) or cfg.streams == "language"):
        raise ValueError(
            f"{where}: {len(missing)} of {len(regions)} regions have no 'description' (first: {missing[0].id!r}), and "
            f"describer={cfg.describer} reads each region's text from its line: add a 'description' to every line "
            "of metadata.jsonl, or let a describer write them (describer=openai:gpt-4o-mini or hf:<local VLM>), "
            "or train without the language stream (streams=vision)")
    if missing:
        note = (f"{where}: no region has a 'description' for describer={cfg.describer}: training the vision stream "
                "only (streams=vision); add descriptions or pass describer=openai:gpt-4o-mini to train both")
        log.warning(note)
        return replace(cfg, streams="vision"), [note]
    log.warning(INFERENCE_NOTE)
    return cfg, [INFERENCE_NOTE]


def train(cfg: TrainConfig, overwrite: bool = False) -> Path:
    """Run training; returns the run directory (model in ``RUN/model``).

    ``RUN`` must be new, empty, or an earlier ``fmmc train`` run: a stopped one is taken up again (its
    features are in the cache), a finished one is replaced only with ``overwrite`` (:mod:`fmmc.core.outputs`).
    The model folder appears when it is complete.
    """
    from fmmc.core.outputs import atomic_dir, check_output_dir, write_marker
    from fmmc.model.classifier import MaterialClassifier
    from fmmc.model.encoder import build_encoder

    t0 = time.time()
    recipes.check_recipe(cfg)
    seed_everything(cfg.seed)
    out = check_output_dir(cfg.out, "train", overwrite)
    write_marker(out, "train", complete=False)
    (out / "failures.txt").unlink(missing_ok=True)  # an earlier run's, not this one's
    save_config(cfg, out / "train_config.yaml")
    taxonomy = load_taxonomy(cfg.taxonomy)
    train_regions, val_regions = split_for_training(cfg)
    label_indices(train_regions, taxonomy, f"{cfg.data} (train)")
    label_indices(val_regions, taxonomy, f"{cfg.val_data or cfg.data} (val)")
    if not train_regions:
        raise ValueError(f"{cfg.data}: no training regions (all are split=test?)")
    cfg, notes = check_descriptions(cfg, train_regions + val_regions)
    if notes and cfg.streams == "vision":
        save_config(cfg, out / "train_config.yaml")  # the streams actually trained
    log.info("training on %d regions, validating on %d", len(train_regions), len(val_regions))

    encoder = build_encoder(cfg.streams, cfg.feature_spec(), cfg.text_encoder, cfg.describer, device=cfg.device,
                            batch_size=cfg.extract_batch_size, cache_dir=cfg.cache_dir, use_cache=cfg.mode == "head",
                            cache_required=True, num_workers=cfg.num_workers, frozen=cfg.mode == "head",
                            compile=cfg.compile and cfg.mode == "head")
    if encoder.extractor is not None and encoder.extractor.dtype != cfg.dtype:  # dtype=auto: record what ran
        log.info("dtype %s -> %s (%s)", cfg.dtype, encoder.extractor.dtype, encoder.extractor.dtype_reason)
        cfg = replace(cfg, dtype=encoder.extractor.dtype)
    head = _build_head(cfg, encoder, len(taxonomy))

    if cfg.mode == "head":
        cfg, head, summary = _train_head(cfg, encoder, head, taxonomy, train_regions, val_regions, out)
        if cfg.recipe == "auto":
            save_config(cfg, out / "train_config.yaml")  # the chosen values: the run is reproducible from it
    elif cfg.mode == "full":
        summary = _train_full(cfg, encoder, head, taxonomy, train_regions, val_regions, out)
    else:
        raise ValueError(f"mode={cfg.mode!r}: choose head (frozen backbones, the paper) or full")

    model = MaterialClassifier.from_parts(cfg, taxonomy, encoder, head,
                                          trained_classes=[str(r.label) for r in train_regions])
    with atomic_dir(out / "model", "model", overwrite=True) as tmp:  # the run's own model, replaced as a whole
        model.save_pretrained(tmp, include_backbone=cfg.mode == "full")
    summary["seconds"] = round(time.time() - t0, 1)
    summary["streams"] = cfg.streams
    if notes:
        summary["notes"] = notes
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    if summary["failures"]:
        (out / "failures.txt").write_text("".join(f"{i}\t{m}\n" for i, m in summary["failures"]))
        print(f"{len(summary['failures'])} region(s) skipped; see {out / 'failures.txt'}")
    write_marker(out, "train", complete=True)
    log.info("model saved to %s", out / "model")
    return out


def _build_head(cfg: TrainConfig, encoder: Any, num_classes: int) -> MaterialHead:
    return MaterialHead(encoder.vision_dim, encoder.text_dim, num_classes, cfg.hidden, cfg.dropout, cfg.streams,
                        cfg.standardize)


def _encode(encoder: Any, regions: list[Region], taxonomy: Taxonomy, progress: bool,
            budget_bytes: int) -> tuple[HeadData, torch.Tensor]:
    data = head_data(encoder, regions, progress, budget_bytes)
    return data, label_indices([regions[i] for i in data.index], taxonomy, "regions")


def _logits(head: MaterialHead, data: HeadData) -> torch.Tensor:
    """Logits of every row of ``data``, :data:`~fmmc.train.feature_rows.EVAL_ROWS` rows per forward."""
    parts = [head(vis, txt) for vis, txt in data.passes()]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _train_head(cfg: TrainConfig, encoder: Any, head: MaterialHead, taxonomy: Taxonomy, train_r: list[Region],
                val_r: list[Region], out: Path) -> tuple[TrainConfig, MaterialHead, dict[str, Any]]:
    """AdamW on the cached features; the vectors are read per batch from the cache when they exceed
    :data:`~fmmc.train.feature_rows.IN_MEMORY_BYTES` (:mod:`fmmc.train.feature_data`). ``recipe=auto``:
    cfg and head as chosen by cross-validation on the training rows, before validation is encoded."""
    t_data = time.perf_counter()
    budget = feature_rows.IN_MEMORY_BYTES  # shared by both splits; a streamed train split streams val too
    tr, y_tr = _encode(encoder, train_r, taxonomy, cfg.progress, budget)
    try:
        if len(y_tr) == 0:
            raise ValueError("every training region failed to load; see the messages above")
        auto, t_cv = cfg.recipe == "auto", time.perf_counter()
        choice = recipes.choose_recipe(cfg, tr, y_tr, len(taxonomy)) if auto else recipes.paper_choice(cfg)
        log.info("%s", choice.reason)
        if auto:
            cfg = replace(cfg, **choice.values)
            torch.manual_seed(cfg.seed)  # the refit's init does not depend on what the search drew
            head = _build_head(cfg, encoder, len(taxonomy))
        t_data += time.perf_counter() - t_cv  # the search is not data preparation
        left = budget - tr.resident_bytes if tr.vis is None or tr.vis.in_memory else 0
        va, y_va = (_encode(encoder, val_r, taxonomy, cfg.progress, max(0, left))
                    if val_r else (None, torch.empty(0, dtype=torch.long)))
        try:
            summary = _fit_head(cfg, head, tr, y_tr, va, y_va, len(taxonomy), out, time.perf_counter() - t_data,
                                keep_last=choice.keep_last)
            return cfg, head, {**summary, "recipe": choice.report}
        finally:
            if va is not None:
                va.close()
    finally:
        tr.close()


def _fit_head(cfg: TrainConfig, head: MaterialHead, tr: HeadData, y_tr: torch.Tensor, va: HeadData | None,
              y_va: torch.Tensor, num_classes: int, out: Path, prepare_seconds: float,
              keep_last: bool = False) -> dict[str, Any]:
    """``keep_last``: train all ``cfg.epochs`` and keep the last head (no early stopping or choice on val)."""
    log.info("features of %d + %d regions ready in %.1f s (%s)", len(y_tr), len(y_va), prepare_seconds,
             "in memory" if tr.vis is None or tr.vis.in_memory else "read from the feature cache per batch")
    t_fit = time.perf_counter()
    if head.standardize:
        head.set_standardization(*recipes.feature_moments(tr))  # the training split's statistics only
    loss_fn = recipes.loss_function(cfg, y_tr, num_classes)
    opt = recipes.adamw(list(head.parameters()), cfg.lr, cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    has_val = va is not None and len(y_va) > 0

    best: dict[str, Any] = {"loss": float("inf"), "state": copy.deepcopy(head.state_dict()), "epoch": 0}
    bad_epochs = 0
    log_f = open(out / "train_log.jsonl", "w", encoding="utf-8")
    bar = tqdm(range(cfg.epochs), desc="train head", unit="epoch", disable=not cfg.progress, dynamic_ncols=True)
    n = len(y_tr)
    for epoch in bar:
        head.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, cfg.batch_size):
            idx = perm[i : i + cfg.batch_size]
            loss = loss_fn(head(*tr.batch(idx)), y_tr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        rec = {"epoch": epoch + 1, "train_loss": total / n}
        head.eval()
        with torch.no_grad():
            if has_val:
                lv = _logits(head, va)  # type: ignore[arg-type]
                rec["val_loss"] = float(nn.functional.cross_entropy(lv, y_va))
                rec["val_acc"] = float((lv.argmax(-1) == y_va).float().mean())
        log_f.write(json.dumps(rec) + "\n")
        bar.set_postfix({k: round(v, 4) for k, v in rec.items() if k != "epoch"})
        key = rec.get("val_loss", rec["train_loss"])
        if keep_last:
            best = {"loss": key, "state": None, "epoch": epoch + 1}
        elif key < best["loss"] - 1e-6:
            best = {"loss": key, "state": copy.deepcopy(head.state_dict()), "epoch": epoch + 1}
            bad_epochs = 0
        else:
            bad_epochs += 1
            if has_val and bad_epochs >= cfg.patience:
                log.info("early stop at epoch %d (best %d)", epoch + 1, best["epoch"])
                break
    log_f.close()
    if best["state"] is not None:
        head.load_state_dict(best["state"])
    head.eval()
    summary: dict[str, Any] = {"best_epoch": best["epoch"], "n_train": int(len(y_tr)), "n_val": int(len(y_va)),
                               "failures": tr.failures + (va.failures if va is not None else [])}
    with torch.no_grad():
        summary["train_acc"] = float((_logits(head, tr).argmax(-1) == y_tr).float().mean())
        if has_val:
            lv = _logits(head, va)  # type: ignore[arg-type]
            summary["val_acc"] = float((lv.argmax(-1) == y_va).float().mean())
            if cfg.calibrate and len(y_va) >= MIN_CALIBRATION:
                t = fit_temperature(lv, y_va)
                head.temperature.fill_(t)
                summary["temperature"] = t
    summary["prepare_seconds"] = round(prepare_seconds, 2)  # hashing, extracting what is missing, reading
    summary["fit_seconds"] = round(time.perf_counter() - t_fit, 2)
    return summary


def _train_full(cfg: TrainConfig, encoder: Any, head: MaterialHead, taxonomy: Taxonomy, train_r: list[Region],
                val_r: list[Region], out: Path) -> dict[str, Any]:
    """Fine-tune the vision backbone with the head (images are decoded every epoch; no feature cache)."""
    ex = encoder.extractor
    if ex is None:
        raise ValueError("mode=full fine-tunes the vision backbone: it needs streams=vision or both")
    txt_tr = txt_va = None
    if encoder.text_encoder is not None:
        enc_tr = encoder.encode_regions(train_r, progress=cfg.progress)
        train_r = [train_r[i] for i in enc_tr.index]
        txt_tr = enc_tr.txt
        if val_r:
            enc_va = encoder.encode_regions(val_r, progress=cfg.progress)
            val_r = [val_r[i] for i in enc_va.index]
            txt_va = enc_va.txt
    y_tr = label_indices(train_r, taxonomy, "train")
    y_va = label_indices(val_r, taxonomy, "val")
    ex.backbone.train()
    for p in ex.backbone.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW([{"params": head.parameters(), "lr": cfg.lr},
                             {"params": ex.backbone.parameters(), "lr": cfg.backbone_lr}], weight_decay=cfg.weight_decay)
    loss_fn = recipes.loss_function(cfg, y_tr, len(taxonomy))
    gen = torch.Generator().manual_seed(cfg.seed)
    failures: list[tuple[str, str]] = []

    def run(regions: list[Region], y: torch.Tensor, txt: torch.Tensor | None, order: torch.Tensor, train_: bool) -> tuple[float, float, torch.Tensor]:
        total, correct, all_logits = 0.0, 0, []
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i : i + cfg.batch_size].tolist()
            loaded = [ex.load(regions[j]) for j in idx]
            keep = [k for k, (_, p, err) in enumerate(loaded) if p is not None]
            for k, (_, _p, err) in enumerate(loaded):
                if err:
                    failures.append((regions[idx[k]].id, err))
            if not keep:
                continue
            pix = torch.stack([loaded[k][1].pixels for k in keep])
            cells = torch.stack([loaded[k][1].cells for k in keep])
            jj = torch.tensor([idx[k] for k in keep])
            with torch.set_grad_enabled(train_):
                vis = ex.pooled(pix, cells)
                logits = head(vis, txt[jj] if txt is not None else None)
                loss = loss_fn(logits, y[jj])
            if train_:
                opt.zero_grad()
                loss.backward()
                opt.step()
            total += float(loss.detach()) * len(keep)
            correct += int((logits.argmax(-1) == y[jj]).sum())
            all_logits.append(logits.detach())
        n = max(1, len(order))
        return total / n, correct / n, torch.cat(all_logits) if all_logits else torch.empty(0)

    ex.cache = None  # features change as the backbone trains
    best = {"loss": float("inf"), "epoch": 0, "head": copy.deepcopy(head.state_dict()),
            "backbone": copy.deepcopy(ex.backbone.state_dict())}
    bad_epochs = 0
    with open(out / "train_log.jsonl", "w", encoding="utf-8") as log_f:
        bar = tqdm(range(cfg.epochs), desc="train full", unit="epoch", disable=not cfg.progress)
        for epoch in bar:
            head.train()
            ex.backbone.train()
            tl, ta, _ = run(train_r, y_tr, txt_tr, torch.randperm(len(train_r), generator=gen), True)
            rec: dict[str, Any] = {"epoch": epoch + 1, "train_loss": tl, "train_acc": ta}
            head.eval()
            ex.backbone.eval()
            if val_r:
                vl, va_acc, _ = run(val_r, y_va, txt_va, torch.arange(len(val_r)), False)
                rec.update(val_loss=vl, val_acc=va_acc)
            log_f.write(json.dumps(rec) + "\n")
            bar.set_postfix({k: round(v, 4) for k, v in rec.items() if k != "epoch"})
            key = rec.get("val_loss", tl)
            if key < best["loss"] - 1e-6:
                best = {"loss": key, "epoch": epoch + 1, "head": copy.deepcopy(head.state_dict()),
                        "backbone": copy.deepcopy(ex.backbone.state_dict())}
                bad_epochs = 0
            else:
                bad_epochs += 1
                if val_r and bad_epochs >= cfg.patience:
                    break
    head.load_state_dict(best["head"])
    ex.backbone.load_state_dict(best["backbone"])
    head.eval()
    ex.backbone.eval()
    for p in ex.backbone.parameters():
        p.requires_grad_(False)
    summary: dict[str, Any] = {"best_epoch": best["epoch"], "n_train": len(train_r), "n_val": len(val_r),
                               "failures": sorted(set(failures))}
    if val_r:
        with torch.no_grad():
            vl, va_acc, lv = run(val_r, y_va, txt_va, torch.arange(len(val_r)), False)
        summary["val_acc"] = va_acc
        if cfg.calibrate and len(lv) == len(y_va) >= MIN_CALIBRATION:
            t = fit_temperature(lv, y_va)
            head.temperature.fill_(t)
            summary["temperature"] = t
    return summary


def config_dict(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)
