"""The four stages wired together, as the ``fmmc synth`` commands run them.

    >>> from fmmc.synth.config import load_synth_config
    >>> cfg = load_synth_config("configs/synth/tiny.yaml", ["out=runs/synth-tiny"])   # doctest: +SKIP
    >>> summary = run_all(cfg)                                                      # doctest: +SKIP

Layout of ``cfg.out`` (the root every stage's paths are relative to)::

    config.yaml                      resolved config of the last command
    triplets/triplets.jsonl          every candidate triplet, kept or filtered (+ why); report.json
    generate/manifest*.jsonl         one line per generated image (ok | rejected), stage.json, engine.json
    images/<label>/<id>.png          generated images
    label/manifest*.jsonl            one line per labelled image (ok | rejected)
    masks/<id>.png                   object masks
    dataset/                         the fmmc dataset (metadata.jsonl, images, masks, README.md, contact_sheets)

Every stage resumes where it stopped; ``shard=(i, n)`` runs the i-th of n disjoint parts of generate and
label (run ``build`` once, after all shards are done).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from fmmc.data.imageio import file_sha256
from fmmc.synth.config import SynthConfig, save_resolved, section_dict
from fmmc.synth.runner import StageResult, read_manifests, run_stage
from fmmc.synth.stages import build_stage
from fmmc.synth.triplets import (
    KEPT,
    fingerprint,
    make_triplets,
    read_jsonl,
    render_prompt,
    write_json,
    write_jsonl,
)
from fmmc.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

# settings that do not change what a stage outputs (left out of the resume check)
_RUNTIME_KEYS = {"device", "batch_size", "attention_slicing", "cpu_offload", "max_seeds_per_prompt",
                 "seeds_per_prompt", "balance_seeds", "save_rejected_masks"}


def _taxonomy(cfg: SynthConfig) -> tuple[Taxonomy, list[str]]:
    tax = load_taxonomy(cfg.taxonomy)
    classes = [tax.names[tax.index(c)] for c in cfg.classes] if cfg.classes else list(tax.names)
    return tax, classes


def stable_seed(*parts: Any) -> int:
    """A 31-bit seed from any parts (the same on every machine and Python version)."""
    digest = hashlib.sha256("|".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


# -------------------------------------------------------------------------------------------- triplets
def stage_triplets(cfg: SynthConfig, *, force: bool = False, llm: Any = None) -> list[dict[str, Any]]:
    """Make (or reuse) ``triplets/triplets.jsonl``; returns all its records (kept and filtered)."""
    tax, classes = _taxonomy(cfg)
    out = cfg.out_dir / "triplets"
    path, report_path = out / "triplets.jsonl", out / "report.json"
    files = [f for f in (cfg.triplets.table, cfg.triplets.blocklist, *cfg.triplets.extra_tables)
             if f not in ("builtin", "none", "") and Path(f).is_file()]
    fp = fingerprint({"triplets": section_dict(cfg.triplets), "taxonomy": tax.to_dict(), "classes": classes,
                      "seed": cfg.seed, "files": {f: file_sha256(f) for f in files}})
    if path.is_file() and report_path.is_file() and not force:
        old = json.loads(report_path.read_text()).get("fingerprint")
        if old == fp:
            log.info("triplets: reusing %s", path)
            return read_jsonl(path)
        raise ValueError(f"{path} was made with other triplet settings (taxonomy, classes, seed or the triplets "
                         "section changed). Pass --force to remake it (images of dropped triplets stay on disk "
                         "but are not used), or use a new output folder (out=...).")
    result = make_triplets(cfg.triplets, tax, classes, cfg.seed, llm=llm)
    write_jsonl(path, result.records)
    report = {**result.report(), "fingerprint": fp}
    write_json(report_path, report)
    log.info("triplets: %d kept of %d candidates -> %s", report["total_kept"], report["total_candidates"], path)
    return result.records


# -------------------------------------------------------------------------------------------- generate
def plan_generation(triplets: list[dict[str, Any]], cfg: SynthConfig) -> list[dict[str, Any]]:
    """One item per (kept triplet, seed). With ``balance_seeds``, classes short of triplets get more seeds."""
    g = cfg.generate
    kept = [t for t in triplets if t.get("status", KEPT) == KEPT]
    per_label = Counter(t["label"] for t in kept)
    quota = cfg.triplets.per_class or max(per_label.values(), default=0)
    items = []
    for t in kept:
        n = g.seeds_per_prompt
        if g.balance_seeds and per_label[t["label"]] < quota:
            n = min(max(g.max_seeds_per_prompt, g.seeds_per_prompt),
                    math.ceil(g.seeds_per_prompt * quota / per_label[t["label"]]))
        prompt = render_prompt(g.prompt_template, t)
        for k in range(n):
            items.append({
                "id": f"{t['id']}--{k}", "triplet_id": t["id"], "object": t["object"], "material": t["material"],
                "submaterial": t["submaterial"], "label": t["label"], "source": t.get("source", "curated"),
                "prompt": prompt, "negative_prompt": g.negative_prompt, "seed": stable_seed(cfg.seed, t["id"], k),
            })
    return items


def _settings(section: Any, **more: Any) -> dict[str, Any]:
    d = {k: v for k, v in section_dict(section).items() if k not in _RUNTIME_KEYS}
    return {**d, **more}


def stage_generate(cfg: SynthConfig, triplets: list[dict[str, Any]] | None = None, *,
                   shard: tuple[int, int] | None = None, engine: Any = "local", factory: Any = None,
                   progress: bool = True, concurrency: int | None = None, num_gpus: float | None = None) -> StageResult:
    """Generate one image per planned (triplet, seed) not generated yet; ``factory`` overrides the generator."""
    if triplets is None:
        triplets = stage_triplets(cfg)
    items = plan_generation(triplets, cfg)
    if not items:
        raise ValueError("no triplets were kept, so there is nothing to generate; see triplets/report.json")
    factory = factory or partial(build_stage, "generator", cfg.generate.generator, cfg.generate, cfg.out_dir)
    return run_stage("generate", items, cfg.out_dir / "generate", factory, batch_size=cfg.generate.batch_size,
                     shard=shard, engine=engine, settings=_settings(cfg.generate), progress=progress,
                     concurrency=concurrency, num_gpus=num_gpus)


# ----------------------------------------------------------------------------------------------- label
def stage_label(cfg: SynthConfig, generated: list[dict[str, Any]] | None = None, *,
                shard: tuple[int, int] | None = None, engine: Any = "local", factory: Any = None,
                progress: bool = True, concurrency: int | None = None, num_gpus: float | None = None) -> StageResult:
    """Label every ``ok`` generated image not labelled yet; ``factory`` overrides the labeller."""
    if generated is None:
        done = read_manifests(cfg.out_dir / "generate")
        if not done:
            raise ValueError(f"no generated images in {cfg.out_dir / 'generate'}: run `fmmc synth generate` first")
        planned = _planned_ids(cfg)
        generated = [r for r in done.values() if r["id"] in planned]
    items = [r for r in generated if r.get("status") == "ok"]
    factory = factory or partial(build_stage, "labeler", cfg.labeler, cfg.label, cfg.out_dir)
    batch = int(getattr(cfg.label, "batch_size", None) or (cfg.label.get("batch_size", 8)
                                                           if isinstance(cfg.label, dict) else 8))
    return run_stage("label", items, cfg.out_dir / "label", factory, batch_size=batch, shard=shard, engine=engine,
                     settings=_settings(cfg.label, labeler=cfg.labeler), progress=progress,
                     concurrency=concurrency, num_gpus=num_gpus)


def _planned_ids(cfg: SynthConfig) -> set[str]:
    """Ids of the current plan: images of triplets remade away (``--force``) are not used any more."""
    return {it["id"] for it in plan_generation(stage_triplets(cfg), cfg)}


# ----------------------------------------------------------------------------------------------- build
def stage_build(cfg: SynthConfig, *, progress: bool = True) -> Any:
    """Build ``<out>/dataset`` from everything labelled so far (all shards)."""
    from fmmc.synth.build import build_dataset

    tax, classes = _taxonomy(cfg)
    out = cfg.out_dir
    labelled = read_manifests(out / "label")
    if not labelled:
        raise ValueError(f"no labelled images in {out / 'label'}: run `fmmc synth label` (or `fmmc synth run`) first")
    generated = read_manifests(out / "generate")
    rejects: Counter[str] = Counter()
    warnings: list[str] = []
    planned = _planned_ids(cfg)
    stale = [i for i in labelled if i not in planned]
    if stale:
        warnings.append(f"{len(stale)} labelled images belong to triplets that are no longer planned "
                        "(triplets remade, or fewer seeds); they are not used")
        labelled = {i: r for i, r in labelled.items() if i in planned}
        generated = {i: r for i, r in generated.items() if i in planned}
    report_path = out / "triplets" / "report.json"
    if report_path.is_file():
        warnings += json.loads(report_path.read_text()).get("warnings", [])
        trip = read_jsonl(out / "triplets" / "triplets.jsonl")
        for t in trip:
            if t["status"] != KEPT:
                rejects[f"triplets: {t['reason'].split(':', 1)[0]}"] += 1
    for stage, records in (("generate", generated), ("label", labelled)):
        for r in records.values():
            if r.get("status") == "rejected":
                rejects[f"{stage}: {r.get('reason') or 'rejected'}"] += 1
    unlabelled = sum(1 for r in generated.values() if r.get("status") == "ok" and r["id"] not in labelled)
    if unlabelled:
        warnings.append(f"{unlabelled} generated images are not labelled yet (shards still running?); "
                        "re-run `fmmc synth build` when every shard has finished")
    dataset = out / "dataset"
    report = build_dataset(list(labelled.values()), out, dataset, cfg.build, tax, cfg.seed, classes, rejects,
                           warnings, config=dataclasses.asdict(cfg), progress=progress)
    save_resolved(cfg, dataset)
    return report


# ----------------------------------------------------------------------------------------------- all
def run_all(cfg: SynthConfig, *, shard: tuple[int, int] | None = None, engine: Any = "local",
            progress: bool = True, force_triplets: bool = False, concurrency: int | None = None,
            num_gpus: float | None = None) -> dict[str, Any]:
    """triplets -> generate -> label -> build (build only when unsharded); returns a summary dict."""
    save_resolved(cfg)
    triplets = stage_triplets(cfg, force=force_triplets)
    summary: dict[str, Any] = {"triplets": sum(t["status"] == KEPT for t in triplets)}
    owned = isinstance(engine, str)
    if owned:  # one engine (one Ray instance) for both model stages
        from fmmc.engine import get_engine

        engine = get_engine(engine)
    opts = {"shard": shard, "engine": engine, "progress": progress, "concurrency": concurrency, "num_gpus": num_gpus}
    try:
        gen = stage_generate(cfg, triplets, **opts)
        lab = stage_label(cfg, gen.records, **opts)
    finally:
        if owned and hasattr(engine, "close"):
            engine.close()
    summary["generate"], summary["label"] = gen, lab
    if shard is not None and shard[1] > 1:
        log.info("shard %d/%d done; run `fmmc synth build CONFIG` once every shard has finished", *shard)
        summary["build"] = None
        return summary
    if gen.failures or lab.failures:
        log.warning("some items failed; building the dataset from the rest (re-run to retry them)")
    summary["build"] = stage_build(cfg, progress=progress)
    return summary
