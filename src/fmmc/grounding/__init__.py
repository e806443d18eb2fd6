"""Region proposals: text -> boxes (Grounding DINO) and box/points -> masks (SAM), both via transformers.

Build them by spec through the registry (``fmmc list grounders``, ``fmmc list segmenters``)::

    >>> from fmmc.core.registry import build
    >>> grounder = build("grounder", "hf:IDEA-Research/grounding-dino-base")   # doctest: +SKIP
    >>> segmenter = build("segmenter", "hf:facebook/sam-vit-base")             # doctest: +SKIP
    >>> det = grounder.detect(image, "vase")[0]                                # doctest: +SKIP
    >>> mask = segmenter.segment(image, box=det.box)[0].mask                   # doctest: +SKIP

Importing this package is cheap: torch and transformers load when a model is built.
"""

from fmmc.grounding.common import Detection, MaskResult

__all__ = ["Detection", "MaskResult"]
