"""Material maps: every pixel of a photo labelled with a material, from SAM regions or the patch grid.

    >>> from fmmc import MaterialClassifier
    >>> model = MaterialClassifier.from_pretrained("runs/demo/model")    # doctest: +SKIP
    >>> mmap = model.segment("kitchen.jpg", mode="sam")                 # or mode="grid" (no SAM)  # doctest: +SKIP
    >>> mmap.save("out/kitchen", image)                                 # labels.png, overlay.png, regions.json  # doctest: +SKIP
    >>> evaluate_maps(model, pairs)["miou"]                             # against DMS label maps  # doctest: +SKIP

CLI: ``fmmc segment MODEL IMAGE --out DIR [--mode sam|grid]`` and ``fmmc segment MODEL --eval-dms DIR``.
"""

from fmmc.model.maps.evaluate import evaluate_maps, load_dms_pairs, map_metrics
from fmmc.model.maps.material_map import MapRegion, MaterialMap
from fmmc.model.maps.segment import MODES, classify_masks, segment_image

__all__ = ["MODES", "MapRegion", "MaterialMap", "classify_masks", "evaluate_maps", "load_dms_pairs", "map_metrics",
           "segment_image"]
