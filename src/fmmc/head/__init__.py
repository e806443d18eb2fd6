"""The classification head: [vision ⊕ text] -> MLP -> K material classes (+ a calibration temperature)."""

from fmmc.head.mlp import STREAMS, MaterialHead

__all__ = ["STREAMS", "MaterialHead"]
