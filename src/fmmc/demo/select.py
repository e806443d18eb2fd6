"""The demo's choice among a profile's ``candidates``, by a validation split of the *training* photos.

    >>> cands = candidates(load_profile("offline"))                                   # doctest: +SKIP
    >>> choice = choose_candidate(cands, sources, splits, images.open, "out/validation", scene_cfg,
    ...                           {"text_encoder": "builtin:minilm", "describer": "metadata"}, cache)  # doctest: +SKIP
    >>> choice.name, choice.scores                                                     # doctest: +SKIP

The training photos are split again by photo (:func:`~fmmc.demo.scenes.assign_splits`, as the test split
is made): a third of each class's training photos validate, the rest fit. Scenes are composed from these
photos alone (:func:`~fmmc.demo.scenes.build_dataset`, the validation photos in its ``test`` role), each
candidate trains its two-stream head on the fitting photos' scenes through :func:`fmmc.train.trainer.train`,
and is scored on the validation photos' scenes. The best mean accuracy wins (then mean class accuracy; a tie
keeps the earlier candidate, and the log and report say so). The test photos are never opened, and their
labels never read: only the sources whose split is ``train`` reach this module's scene builder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from fmmc.demo.scenes import SceneConfig, assign_splits, build_dataset
from fmmc.demo.sources import Source, halves

log = logging.getLogger(__name__)
VALIDATION_FRACTION = 1 / 3  # of each class's training photos


@dataclass(frozen=True)
class Candidate:
    name: str
    backbone: str
    train: dict[str, Any]  # TrainConfig overrides (the profile's ``train``, updated by the candidate's)


@dataclass
class Choice:
    name: str
    candidate: Candidate
    scores: dict[str, dict[str, float]]  # candidate -> accuracy, mean_class_accuracy on the validation photos
    photos: dict[str, int] = field(default_factory=dict)  # fit / validation photo counts
    regions: dict[str, int] = field(default_factory=dict)
    tied: list[str] = field(default_factory=list)  # other candidates with the winner's two scores (the earlier won)


def candidates(profile: dict[str, Any], where: str = "profiles.yaml") -> list[Candidate]:
    """The profile's candidates (``candidates: {name: {backbone: ..., train: {...}}}``), each over the
    profile's own ``backbone`` and ``train``; a profile without them is its one candidate, ``default``."""
    base_train = dict(profile.get("train") or {})
    listed = profile.get("candidates") or {"default": {}}
    if not isinstance(listed, dict):
        raise ValueError(f"{where}: 'candidates' must map a name to {{backbone: ..., train: {{...}}}}")
    out = []
    for name, over in listed.items():
        over = dict(over or {})
        unknown = sorted(set(over) - {"backbone", "train"})
        if unknown:
            raise ValueError(f"{where}: candidate {name!r} has unknown key(s) {unknown}; use backbone and train")
        out.append(Candidate(str(name), str(over.get("backbone", profile["backbone"])),
                             {**base_train, **dict(over.get("train") or {})}))
    return out


def validation_photos(sources: Sequence[Source], splits: dict[str, str], seed: int,
                      size: Callable[[Source], tuple[int, int]] | None = None) -> tuple[list[Source], dict[str, str]]:
    """The training photos, split by photo: (those sources, source id -> ``train`` (fit) | ``test`` (validate)).

    When fewer than two classes keep a photo on each side (the skimage-only fallback: one training half per
    photo), each training photo is halved again (``size`` gives its size), as the fallback's test split is."""
    train_src = [s for s in sources if splits.get(s.id) == "train"]
    vsplits, _ = assign_splits(train_src, test_fraction=VALIDATION_FRACTION, seed=seed)
    if len({s.label for s in train_src if vsplits.get(s.id) == "test"}) < 2 and size is not None:
        train_src, vsplits = [], {}
        for s in sources:
            if splits.get(s.id) == "train":
                a, b = _halves_of(s, size(s))
                train_src += [a, b]
                vsplits[a.id], vsplits[b.id] = "train", "test"
    return [s for s in train_src if s.id in vsplits], vsplits


def _halves_of(s: Source, size: tuple[int, int]) -> tuple[Source, Source]:
    """:func:`~fmmc.demo.sources.halves` of a source that may itself be a crop (``size``: the crop's)."""
    x0, y0 = s.crop[:2] if s.crop else (0, 0)
    parts = halves(replace(s, crop=None), size)
    return tuple(replace(p, crop=(p.crop[0] + x0, p.crop[1] + y0, p.crop[2] + x0, p.crop[3] + y0))  # type: ignore[return-value, index]
                 for p in parts)


def choose_candidate(cands: list[Candidate], sources: Sequence[Source], splits: dict[str, str],
                     open_image: Callable[[Source], Image.Image], out: str | Path, scene_cfg: SceneConfig,
                     models: dict[str, str], cache: Path, progress: bool = False,
                     say: Callable[[str], None] | None = None) -> Choice:
    """Train every candidate on the fitting photos and score it on the validation photos (see the module)."""
    from fmmc.data.dataset import load_dataset
    from fmmc.demo.scoring import score_model
    from fmmc.model.classifier import MaterialClassifier
    from fmmc.train.config import TrainConfig
    from fmmc.train.trainer import train

    say = say or log.info
    out = Path(out)
    train_src, vsplits = validation_photos(sources, splits, scene_cfg.seed, lambda s: open_image(s).size)
    info = build_dataset(train_src, vsplits, open_image, out / "dataset", scene_cfg, progress=progress)
    val = load_dataset(info.root, split="test")
    scores: dict[str, dict[str, float]] = {}
    for c in cands:
        say(f"validation: {c.name} ({c.backbone}, {', '.join(f'{k}={v}' for k, v in sorted(c.train.items()))})")
        tc = TrainConfig(data=str(info.root), out=str(out / "runs" / c.name), backbone=c.backbone,
                         text_encoder=models["text_encoder"], describer=models["describer"], streams="both",
                         image_size=scene_cfg.image_size, seed=scene_cfg.seed, cache_dir=str(cache), progress=progress,
                         val_fraction=0.15, extract_batch_size=16, **c.train)
        run = train(tc, overwrite=True)
        model = MaterialClassifier.from_pretrained(run / "model", cache_dir=cache)
        m, _, _ = score_model(model, val, info.labels, seed=scene_cfg.seed, progress=progress)
        scores[c.name] = {"accuracy": round(m["accuracy"], 4), "mean_class_accuracy": round(m["mean_class_accuracy"], 4)}
    best, tied = pick(cands, scores)
    photos = {"fit": sum(v == "train" for v in vsplits.values()), "validation": sum(v == "test" for v in vsplits.values())}
    regions = {"fit": sum(info.counts["train"].values()), "validation": sum(info.counts["test"].values())}
    return Choice(best.name, best, scores, photos, regions, tied)


def pick(cands: Sequence[Candidate], scores: dict[str, dict[str, float]]) -> tuple[Candidate, list[str]]:
    """The candidate with the best validation accuracy, then mean class accuracy; of a tie on both, the
    earlier listed, with the names of the others it tied with (said in the log and the report)."""
    def key(c: Candidate) -> tuple[float, float]:
        return scores[c.name]["accuracy"], scores[c.name]["mean_class_accuracy"]

    best = max(cands, key=lambda c: (*key(c), -list(cands).index(c)))
    return best, [c.name for c in cands if c is not best and key(c) == key(best)]


def validation_scene_config(scene_cfg: SceneConfig) -> SceneConfig:
    """Half the scenes of the demo's dataset (at least 3 per class): the candidates' cost stays below the
    final training's."""
    return replace(scene_cfg, per_class=max(3, scene_cfg.per_class // 2))
