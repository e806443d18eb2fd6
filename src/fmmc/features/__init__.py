"""On-disk cache of pooled features (safetensors shards + an index), keyed by content hash and settings."""

from fmmc.features.cache import FeatureCache

__all__ = ["FeatureCache"]
