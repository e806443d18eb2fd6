"""What ``fmmc eval MODEL`` accepts: a trained model, or a zero-shot baseline named by spec.

    >>> m = load_eval_model("runs/demo/model")                                      # doctest: +SKIP
    >>> m = load_eval_model("zeroshot:clip:openai/clip-vit-base-patch32")           # doctest: +SKIP
    >>> m = load_eval_model("zeroshot:vlm:openai:gpt-4o?base_url=http://localhost:8000/v1")  # doctest: +SKIP

``zeroshot:<baseline spec>`` names a ``baseline`` of :mod:`fmmc.core.registry` (``fmmc list baselines``:
``clip:<id>``, ``vlm:<llm spec>``, or your own ``package.module:factory``), built as
``factory(arg, taxonomy=..., cache_dir=..., device=..., **options)``.

Every evaluable model has ``spec``, ``labels``, ``taxonomy``, ``predict_regions(regions, classes, progress)``
and a ``config`` dict (written into the report). Options after ``?`` go to the baseline (``templates=FILE``
for CLIP; ``base_url=``, ``workers=``, ``marking=`` for the VLM; ``taxonomy=`` for both).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl

from fmmc.data.records import Region
from fmmc.taxonomy import Taxonomy

log = logging.getLogger(__name__)

ZEROSHOT_HELP = ("zeroshot:clip:<CLIP/SigLIP hub id or dir> or zeroshot:vlm:openai:<model> "
                 "(options after '?', e.g. ?base_url=http://localhost:8000/v1; `fmmc list baselines`)")


class EvalModel(Protocol):
    spec: str
    taxonomy: Taxonomy
    config: dict[str, Any]

    @property
    def labels(self) -> tuple[str, ...]: ...

    def predict_regions(self, regions: list[Region], classes: list[str] | str | None = None,
                        progress: bool = True) -> tuple[list[Any], list[tuple[str, str]]]: ...


def load_eval_model(spec: str, cache_dir: str | Path | None = None, describer: str | None = None,
                    device: str = "cpu", num_workers: int | None = None) -> Any:
    """Build the model named by ``spec`` (``describer`` replaces a trained model's test-time describer)."""
    spec = spec.strip()
    if spec.startswith("zeroshot:"):
        if describer:
            log.warning("--describer is ignored by zero-shot baselines")
        return _zeroshot(spec, cache_dir, device)
    from fmmc.model.classifier import MaterialClassifier

    overrides = {"describer": describer} if describer else {}
    model = MaterialClassifier.from_pretrained(spec, device=device, cache_dir=cache_dir, num_workers=num_workers,
                                               **overrides)
    model.spec = spec
    return model


def _zeroshot(spec: str, cache_dir: str | Path | None, device: str) -> Any:
    """``zeroshot:<baseline spec>?options``, built by the ``baseline`` registry."""
    from fmmc.core.registry import build, registry

    body, _, query = spec.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    baseline = body[len("zeroshot:"):]
    known = ", ".join(f"zeroshot:{ex}" for ex, _ in registry("baseline").specs())
    try:
        entry, _ = registry("baseline").parse(baseline)
    except ValueError as e:
        raise ValueError(f"unknown zero-shot baseline {spec!r}; use {ZEROSHOT_HELP}. {e}") from e
    if entry is None:  # your own 'package.module:factory': it must at least import
        module = baseline.partition(":")[0]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"unknown zero-shot baseline {spec!r}: not a built-in ({known}) and {module!r} does not "
                             f"import as your own package.module:factory ({e})") from e
    if cache_dir is None:
        from fmmc.core.paths import cache_root

        cache_dir = cache_root()
    options.setdefault("device", device)
    model = build("baseline", baseline, taxonomy=options.pop("taxonomy", "default"), cache_dir=cache_dir, **options)
    model.spec = spec
    return model


def model_config(model: Any) -> dict[str, Any]:
    """The settings that identify a model's predictions, for reports (no weights, no secrets)."""
    cfg = getattr(model, "config", {}) or {}
    if not isinstance(cfg, dict):
        cfg = cfg.to_json()
    if "head" in cfg:  # a trained MaterialClassifier: keep the component specs, drop the bulky parts
        keep = ("streams", "backbone", "image_size", "pooling", "min_coverage", "null_mask", "dtype", "text_encoder",
                "describer", "mode", "fmmc_version")
        out = {k: cfg.get(k) for k in keep}
        out["kind"] = "fmmc"
        out["taxonomy"] = model.taxonomy.name
        out["classes"] = len(model.taxonomy)
        train = cfg.get("train") or {}
        out["trained_on"] = train.get("data")
        return out
    return cfg
