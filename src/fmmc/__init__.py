"""fmmc: foundation-model material classification.

Importing ``fmmc`` is cheap: heavy modules (torch, transformers) load only when a name below is used.

    >>> import fmmc
    >>> model = fmmc.MaterialClassifier.from_pretrained("runs/demo/model")   # doctest: +SKIP
    >>> model.predict("photo.jpg", box=(10, 10, 200, 200)).top(3)             # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "MaterialClassifier": "fmmc.model.classifier",
    "Prediction": "fmmc.model.classifier",
    "Taxonomy": "fmmc.taxonomy",
    "load_taxonomy": "fmmc.taxonomy",
    "Region": "fmmc.data.records",
    "load_dataset": "fmmc.data.dataset",
    "build": "fmmc.core.registry",
}

if TYPE_CHECKING:  # pragma: no cover
    from fmmc.core.registry import build as build
    from fmmc.data.dataset import load_dataset as load_dataset
    from fmmc.data.records import Region as Region
    from fmmc.model.classifier import MaterialClassifier as MaterialClassifier
    from fmmc.model.prediction import Prediction as Prediction
    from fmmc.taxonomy import Taxonomy as Taxonomy
    from fmmc.taxonomy import load_taxonomy as load_taxonomy


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fmmc' has no attribute {name!r}")


__all__ = ["__version__", *_LAZY]
