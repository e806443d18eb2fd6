"""The trained classifier: the artifact (config + weights), the two-stream encoder, the head, the one
forward pass from regions to probabilities, and whole-image material maps (:mod:`fmmc.model.maps`).

``fmmc.model.config`` (typed configs) is torch-free; the names below load torch when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from fmmc.model.classifier import MaterialClassifier as MaterialClassifier
    from fmmc.model.prediction import Prediction as Prediction
    from fmmc.model.prediction import RegionInput as RegionInput

_LAZY = ("MaterialClassifier", "Prediction", "RegionInput")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from fmmc.model import classifier

        return getattr(classifier, name)
    raise AttributeError(f"module 'fmmc.model' has no attribute {name!r}")


__all__ = list(_LAZY)
