"""Material taxonomies (class lists shipped as data files) and maps from other datasets' names onto them."""

from fmmc.taxonomy.taxonomy import Taxonomy, load_label_map, load_taxonomy

__all__ = ["Taxonomy", "load_label_map", "load_taxonomy"]
