"""Region prompts: turn a click, a box or an object name into the mask the classifier pools over.

    >>> from fmmc import MaterialClassifier
    >>> model = MaterialClassifier.from_pretrained("runs/demo/model")                       # doctest: +SKIP
    >>> model.predict("kitchen.jpg", point=(320, 240)).top(3)        # SAM mask at the click  # doctest: +SKIP
    >>> model.predict("kitchen.jpg", object="the mug").label         # Grounding DINO + SAM   # doctest: +SKIP
    >>> model.predict("kitchen.jpg", box=(40, 30, 220, 260), refine=True)  # SAM inside a box  # doctest: +SKIP

A point (or a box with ``refine=True``) prompts the segmenter (SAM); an object name goes through the
grounder (Grounding DINO), whose best box then prompts SAM, or, when the segmenter is SAM 3
(``fmmc.grounding.sam3``), straight to SAM 3's text prompt (its best instance; no grounder). Nothing is guessed: an object the grounder
cannot find raises :class:`RegionNotFound`, a point outside the image or a box with no area raises
:class:`PromptError` (both ``ValueError``).

The segmenter and grounder are named by spec in the model config (keys ``"segmenter"`` and
``"grounder"``; override them at load time, ``from_pretrained(dir, segmenter="hf:/path/to/sam")``), built
once per model on first use and cached on it; building is guarded by a lock, so concurrent requests in a
server share one copy. A build that fails (weights not available here) is remembered for a minute, so
the requests after it fail at once with the same error instead of trying the load again.
:func:`component_availability` tells, cheaply and without building or downloading anything, whether a
component can load here (the web page uses it to offer only the tools that work).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_SPECS = {"segmenter": "hf:facebook/sam-vit-base", "grounder": "hf:IDEA-Research/grounding-dino-base"}
DEFAULT_BOX_THRESHOLD = 0.35
DEFAULT_TEXT_THRESHOLD = 0.25
MAX_OBJECT_CHARS = 200

_BUILD_LOCK = threading.Lock()
RETRY_FAILED_BUILD_S = 60.0  # a failed segmenter/grounder build is not tried again for this long


class PromptError(ValueError):
    """A prompt that cannot name a region of this image (a point outside it, a box with no area)."""


class RegionNotFound(ValueError):
    """The prompt was valid but no region matched it (the grounder found no such object)."""


@dataclass
class RegionPrompt:
    """The region a prompt resolved to: the mask, how it was found, and the grounder/SAM scores."""

    mask: np.ndarray  # bool [H, W]
    source: str  # "point" | "box" | "box+point" | "object" | "rectangle"
    detection: Any | None = None  # fmmc.grounding.Detection for object prompts
    score: float | None = None  # SAM's predicted IoU of the chosen mask

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source}
        if self.score is not None:
            out["mask_score"] = round(float(self.score), 4)
        if self.detection is not None:
            out["detection"] = self.detection.to_json()
        return out


# ----- components (built once per model, thread-safe) -----------------------------------------------------
def component_spec(model: Any, kind: str) -> str:
    """The spec of ``kind`` (``"segmenter"`` or ``"grounder"``) this model uses: its config's, else the default."""
    if kind not in DEFAULT_SPECS:
        raise ValueError(f"unknown region component {kind!r}; choose one of {list(DEFAULT_SPECS)}")
    spec = getattr(getattr(model, "config", None), kind, None)
    return str(spec) if spec else DEFAULT_SPECS[kind]


@dataclass(frozen=True)
class _BuildFailure:
    """A component build that failed: re-raised at once until ``retry_at`` (time.monotonic)."""

    error: BaseException
    retry_at: float


def get_component(model: Any, kind: str) -> Any:
    """The model's segmenter or grounder, built through the registry on first use and cached on the model.

    A build that fails is remembered for :data:`RETRY_FAILED_BUILD_S` seconds: calls in that time raise the
    same error at once instead of trying (and waiting for) the load again.
    """
    entry = _components(model).get(kind)
    if entry is not None and not _expired(entry):
        return _cached_or_raise(entry)
    with _BUILD_LOCK:
        cache = _components(model)
        entry = cache.get(kind)
        if entry is None or _expired(entry):
            try:
                cache[kind] = entry = _build_component(model, kind)
            except Exception as e:  # noqa: BLE001 - remembered, then raised to this caller (with its traceback)
                cache[kind] = _BuildFailure(e, time.monotonic() + RETRY_FAILED_BUILD_S)
                raise
        return _cached_or_raise(entry)


def _components(model: Any) -> dict[str, Any]:
    """The model's store of region components (``MaterialClassifier.components``: built, or failed builds)."""
    store = getattr(model, "components", None)
    if not isinstance(store, dict):
        raise TypeError(f"{type(model).__name__} has no `components` dict: region prompts need a MaterialClassifier")
    return store


def _expired(entry: Any) -> bool:
    return isinstance(entry, _BuildFailure) and time.monotonic() >= entry.retry_at


def _build_component(model: Any, kind: str) -> Any:
    from fmmc.core.registry import build

    spec = component_spec(model, kind)
    log.info("building %s %s", kind, spec)
    try:
        return build(kind, spec, device=getattr(model, "device", "cpu"))
    except Exception as e:
        log.info("%s %s cannot be built (%s); requests that need it fail at once for the next %g s",
                 kind, spec, type(e).__name__, RETRY_FAILED_BUILD_S)
        raise


def _cached_or_raise(entry: Any) -> Any:
    if isinstance(entry, _BuildFailure):  # a fresh traceback each time, so repeats do not pile up frames
        raise entry.error.with_traceback(None)
    return entry


def set_component(model: Any, kind: str, component: Any) -> None:
    """Use an already built segmenter/grounder for this model (e.g. one shared by several models)."""
    component_spec(model, kind)  # validates kind
    with _BUILD_LOCK:
        _components(model)[kind] = component


# ----- availability (cheap: no build, no download, no network) ----------------------------------------------
AVAILABILITY_KINDS = ("segmenter", "grounder", "text_encoder", "describer")
_FLAGS = {"segmenter": "--segmenter", "grounder": "--grounder", "describer": "--describer"}
_HUB_PREFIXES = ("hf", "st")  # specs whose argument is a hub id or a local directory


def component_availability(model: Any, kind: str) -> dict[str, Any]:
    """Whether ``kind`` can be loaded for ``model`` here, decided cheaply: ``{"spec", "available", "reason"}``.

    ``kind`` is ``"segmenter"``, ``"grounder"``, ``"text_encoder"`` or ``"describer"``. Nothing is built,
    downloaded or asked of the network: a component already built on the model is available; one whose build
    failed within the last :data:`RETRY_FAILED_BUILD_S` seconds is not (the reason is its error); an
    ``hf:/local/dir`` spec is available when the directory exists; a hub id when the local Hugging Face cache
    holds it (its ``config.json``) or, with ``HF_HUB_OFFLINE`` unset, when it can be downloaded on first use
    (``reason`` says so). Other specs (built-in, remote endpoints, your own factories) are reported available:
    they are checked when first built.
    """
    import os
    from pathlib import Path

    from fmmc.core.hub import is_offline, looks_like_repo_id

    if kind not in AVAILABILITY_KINDS:
        raise ValueError(f"unknown component kind {kind!r}; choose one of {list(AVAILABILITY_KINDS)}")
    if kind in DEFAULT_SPECS:
        spec: str | None = component_spec(model, kind)
        entry = _components(model).get(kind)
        if isinstance(entry, _BuildFailure) and not _expired(entry):
            return {"spec": spec, "available": False, "reason": " ".join(str(entry.error).split()) or
                    type(entry.error).__name__}
        if entry is not None and not isinstance(entry, _BuildFailure):
            return {"spec": spec, "available": True, "reason": "loaded"}
    else:
        raw = getattr(getattr(model, "config", None), kind, None)
        spec = str(raw) if raw else None
        encoder = getattr(model, "built_encoder", None)  # never model.encoder: that builds it
        if encoder is not None and getattr(encoder, kind, None) is not None:
            return {"spec": spec, "available": True, "reason": "loaded"}
        if spec is None or spec in ("none", "metadata"):
            return {"spec": spec, "available": True, "reason": "no weights needed"}
    prefix, sep, arg = str(spec).partition(":")
    if not sep or prefix not in _HUB_PREFIXES:
        return {"spec": spec, "available": True, "reason": "not checked in advance; built on first use"}
    arg = arg.strip() or DEFAULT_SPECS.get(kind, "").partition(":")[2]
    if not arg:
        return {"spec": spec, "available": True, "reason": "not checked in advance; built on first use"}
    fix = (f"start the server with {_FLAGS[kind]} hf:/path/to/local/{kind}" if kind in _FLAGS
           else f"load the model with {kind}='hf:/path/to/local/{kind}'")
    path = Path(arg).expanduser()
    if path.is_dir():
        return {"spec": spec, "available": True, "reason": f"local directory {arg}"}
    if path.exists() or not looks_like_repo_id(arg):
        what = "is not a directory" if path.exists() else "does not exist"
        return {"spec": spec, "available": False,
                "reason": f"local path {arg} {what}; {fix} (a directory written by save_pretrained)"}
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(arg, "config.json")
    except ImportError:
        return {"spec": spec, "available": False,
                "reason": "huggingface_hub is not installed; pip install huggingface_hub (or fmmc[offline])"}
    except Exception:  # noqa: BLE001 - an unreadable cache is simply not a cached copy
        cached = None
    if isinstance(cached, str):
        return {"spec": spec, "available": True, "reason": "in the local Hugging Face cache"}
    if not is_offline():
        return {"spec": spec, "available": True,
                "reason": "needs download from the hub on first use (may take minutes)"}
    var = "HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") \
        else "TRANSFORMERS_OFFLINE"
    return {"spec": spec, "available": False,
            "reason": f"not in the local Hugging Face cache and {var} is set; download {arg} once with network "
                      f"access (hf download {arg}) or {fix}"}


# ----- prompt checks (pure) -------------------------------------------------------------------------------
def check_point(point: Sequence[float], size: tuple[int, int]) -> tuple[float, float]:
    """``(x, y)`` as floats, or :class:`PromptError` when it is not a point inside the ``size`` = (w, h) image."""
    w, h = size
    try:
        x, y = (float(v) for v in point)
    except (TypeError, ValueError) as e:
        raise PromptError(f"point {point!r} must be two numbers (x, y) in pixels") from e
    if not (math.isfinite(x) and math.isfinite(y)):
        raise PromptError(f"point {point!r} must be finite numbers")
    if not (0 <= x < w and 0 <= y < h):
        raise PromptError(f"point ({x:g}, {y:g}) lies outside the {w}x{h} image; x must be in [0, {w}) and y in [0, {h})")
    return x, y


def check_box(box: Sequence[float], size: tuple[int, int]) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` clipped to the image, or :class:`PromptError` for a box with no area inside it."""
    w, h = size
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError) as e:
        raise PromptError(f"box {box!r} must be four numbers (x0, y0, x1, y1) in pixels") from e
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise PromptError(f"box {box!r} must be finite numbers")
    if not (x1 > x0 and y1 > y0):
        raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has zero or negative area; expected x0 < x1 and y0 < y1")
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
    if not (cx1 > cx0 and cy1 > cy0):
        raise PromptError(f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {w}x{h} image")
    return cx0, cy0, cx1, cy1


def check_object(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise PromptError("object must be a non-empty name, e.g. object='the mug'")
    if len(name) > MAX_OBJECT_CHARS:
        raise PromptError(f"object name is {len(name)} characters; keep it under {MAX_OBJECT_CHARS}")
    return name.strip()


def rectangle(box: Sequence[float], size: tuple[int, int]) -> np.ndarray:
    """The bool mask of a (checked) box, with the same pixel rule as ``fmmc.data.imageio.box_to_mask``."""
    from fmmc.data.imageio import box_to_mask

    return box_to_mask(tuple(box), size)  # type: ignore[arg-type]


def mask_summary(mask: np.ndarray) -> dict[str, Any]:
    """``{"bbox": [x0, y0, x1, y1], "area": pixels}`` of a bool mask (bbox right/bottom exclusive)."""
    from fmmc.data.masks import mask_bbox

    box = mask_bbox(mask)
    return {"bbox": list(box) if box is not None else None, "area": int(mask.sum())}


def mask_rle(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO-style RLE (column-major counts starting with a run of zeros)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


# ----- resolution ---------------------------------------------------------------------------------------------
def _pick(results: Sequence[Any], point: tuple[float, float] | None, what: str) -> Any:
    """Best-scored non-empty mask; for a point prompt, the best one that contains the point if any does."""
    nonempty = [r for r in results if bool(np.asarray(r.mask).any())]
    if point is not None:
        x, y = int(point[0]), int(point[1])
        inside = [r for r in nonempty if bool(r.mask[y, x])]
        if inside:
            return inside[0]
    if nonempty:
        return nonempty[0]
    raise RegionNotFound(f"the segmenter returned no region for {what}; try another point or a box")


def resolve_prompt(model: Any, image: Image.Image, *, point: Sequence[float] | None = None,
                   points: Sequence[Sequence[float]] | None = None, point_labels: Sequence[int] | None = None,
                   box: Sequence[float] | None = None, object: str | None = None, refine: bool = True,
                   box_threshold: float = DEFAULT_BOX_THRESHOLD,
                   text_threshold: float = DEFAULT_TEXT_THRESHOLD) -> RegionPrompt:
    """The region named by a point, points, a box or an object name (see the module docstring).

    ``refine=False`` keeps a box (or the grounder's box for ``object``) as a plain rectangle instead of
    asking SAM for the object inside it.
    """
    size = image.size
    pts: list[tuple[float, float]] = []
    if point is not None:
        pts.append(check_point(point, size))
    for p in points or ():
        pts.append(check_point(p, size))
    if point_labels is not None and len(point_labels) != len(pts):
        raise PromptError(f"got {len(pts)} points but {len(point_labels)} point_labels; give one label per point")
    checked_box = check_box(box, size) if box is not None else None
    if object is not None:
        if pts or checked_box is not None:
            raise PromptError("object= cannot be combined with point=/box=: give one kind of prompt")
        return _resolve_object(model, image, check_object(object), refine, box_threshold, text_threshold)
    if not pts and checked_box is None:
        raise PromptError("no region prompt: give point=(x, y), box=(x0, y0, x1, y1) or object='name'")
    if checked_box is not None and not pts and not refine:
        return RegionPrompt(rectangle(checked_box, size), "rectangle")
    segmenter = get_component(model, "segmenter")
    results = segmenter.segment(image, box=checked_box, points=pts or None, point_labels=point_labels)
    source = "box+point" if pts and checked_box is not None else ("box" if checked_box is not None else "point")
    what = f"the {source} prompt"
    best = _pick(results, pts[0] if pts and (point_labels is None or point_labels[0] == 1) else None, what)
    log.debug("%s prompt -> mask of %d px (score %.3f)", source, int(best.mask.sum()), best.score)
    return RegionPrompt(np.asarray(best.mask, dtype=bool), source, None, float(best.score))


def _resolve_object(model: Any, image: Image.Image, name: str, refine: bool, box_threshold: float,
                    text_threshold: float) -> RegionPrompt:
    if refine:  # a text-prompted segmenter (SAM 3) finds and masks the object in one step, no grounder
        segmenter = get_component(model, "segmenter")
        if hasattr(segmenter, "segment_text"):
            found = segmenter.segment_text(image, name, threshold=box_threshold)
            if not found:
                raise RegionNotFound(f"object {name!r} not found (no SAM 3 instance scored above "
                                     f"box_threshold={box_threshold:g}); check the name or lower the threshold")
            res = _pick(found, None, f"the object {name!r}")
            log.info("object %r -> SAM 3 instance (score %.3f)", name, res.score)
            return RegionPrompt(np.asarray(res.mask, dtype=bool), "object", res.extra.get("detection"),
                                float(res.score))
    grounder = get_component(model, "grounder")
    dets = grounder.detect(image, name, box_threshold=box_threshold, text_threshold=text_threshold)
    if not dets:
        raise RegionNotFound(f"object {name!r} not found (no detection scored above box_threshold={box_threshold:g}); "
                             "check the name, lower the threshold, or click the object instead")
    best = max(dets, key=lambda d: d.score)
    log.info("object %r -> box %s (score %.3f)", name, [round(v, 1) for v in best.box], best.score)
    if not refine:
        return RegionPrompt(rectangle(best.box, image.size), "object", best, None)
    segmenter = get_component(model, "segmenter")
    res = _pick(segmenter.segment(image, box=best.box), None, f"the box of {name!r}")
    return RegionPrompt(np.asarray(res.mask, dtype=bool), "object", best, float(res.score))


def prompt_mask(model: Any, image: Image.Image, **prompts: Any) -> np.ndarray:
    """The bool mask ``[H, W]`` for ``point=``, ``points=``, ``box=`` or ``object=`` (see :func:`resolve_prompt`)."""
    return resolve_prompt(model, image, **prompts).mask
