"""The trained classifier: the artifact (config + weights), the two-stream encoder, the head, the one
forward pass from regions to probabilities, and whole-image material maps (:mod:`fmmc.model.maps`)."""

from fmmc.model.classifier import MaterialClassifier, Prediction

__all__ = ["MaterialClassifier", "Prediction"]
