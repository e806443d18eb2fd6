"""A taxonomy is an ordered list of material classes; class index = position in the file.

    >>> tax = load_taxonomy("default")
    >>> len(tax), tax.index("metal")
    (21, 4)
    >>> load_label_map("dms")["Plastic clear"]
    'plastic'
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

_BUILTIN = {"default": "default21.json", "fmmc-21": "default21.json"}
_MAPS = {"fmd": "map_fmd.json", "dms": "map_dms.json"}


@dataclass(frozen=True)
class Taxonomy:
    names: tuple[str, ...]
    name: str = "custom"
    descriptions: tuple[str, ...] = ()
    colors: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError(f"taxonomy {self.name!r} has no classes")
        dup = sorted({n for n in self.names if self.names.count(n) > 1})
        if dup:
            raise ValueError(f"taxonomy {self.name!r} lists class(es) {dup} more than once")

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, label: object) -> bool:
        return isinstance(label, str) and self.canonical(label) is not None

    def canonical(self, label: str) -> str | None:
        """The class name for ``label`` (case-insensitive, aliases applied), or None if unknown."""
        key = label.strip().lower()
        for n in self.names:
            if n.lower() == key:
                return n
        alias = {k.lower(): v for k, v in self.aliases.items()}.get(key)
        return alias if alias in self.names else None

    def index(self, label: str) -> int:
        name = self.canonical(label)
        if name is None:
            raise ValueError(
                f"unknown label {label!r}; taxonomy {self.name!r} has: {', '.join(self.names)}. "
                "Fix the label, add an alias to the taxonomy file, or pass a taxonomy that has it."
            )
        return self.names.index(name)

    def color(self, i: int) -> tuple[int, int, int]:
        if self.colors and i < len(self.colors):
            h = self.colors[i].lstrip("#")
            return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
        # deterministic fallback palette
        return ((i * 97) % 256, (i * 57 + 80) % 256, (i * 31 + 160) % 256)

    def describe(self, label: str) -> str:
        i = self.index(label)
        return self.descriptions[i] if i < len(self.descriptions) else self.names[i]

    def subset(self, names: list[str] | tuple[str, ...]) -> list[int]:
        """Class indices of ``names`` (e.g. FMD's 10 classes inside the 21)."""
        return [self.index(n) for n in names]

    def to_dict(self) -> dict[str, Any]:
        classes = []
        for i, n in enumerate(self.names):
            c: dict[str, Any] = {"name": n}
            if i < len(self.descriptions):
                c["description"] = self.descriptions[i]
            if i < len(self.colors):
                c["color"] = self.colors[i]
            classes.append(c)
        return {"name": self.name, "classes": classes, "aliases": dict(self.aliases)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "taxonomy") -> Taxonomy:
        raw = data.get("classes")
        if not isinstance(raw, list) or not raw:
            raise ValueError(f"{where}: expected a non-empty 'classes' list (names or {{name, description, color}})")
        names, descs, colors = [], [], []
        for i, c in enumerate(raw):
            if isinstance(c, str):
                c = {"name": c}
            if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"].strip():
                raise ValueError(f"{where}: classes[{i}] must be a name or a mapping with a 'name'")
            names.append(c["name"].strip())
            descs.append(str(c.get("description", c["name"])))
            colors.append(str(c.get("color", "")))
        if not all(colors):
            colors = []
        return cls(tuple(names), str(data.get("name", "custom")), tuple(descs), tuple(colors),
                   dict(data.get("aliases") or {}))


def load_taxonomy(spec: str | Path | Taxonomy | dict[str, Any] = "default") -> Taxonomy:
    """``"default"`` (the 21 classes), a JSON/YAML file path, a dict, or a Taxonomy (returned as is)."""
    if isinstance(spec, Taxonomy):
        return spec
    if isinstance(spec, dict):
        return Taxonomy.from_dict(spec)
    key = str(spec)
    if key in _BUILTIN:
        text = resources.files("fmmc.taxonomy").joinpath("data", _BUILTIN[key]).read_text()
        return Taxonomy.from_dict(json.loads(text), where=f"built-in taxonomy {key!r}")
    p = Path(key)
    if not p.is_file():
        raise ValueError(f"taxonomy {key!r} is neither a built-in ({', '.join(_BUILTIN)}) nor an existing file")
    try:
        data = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"taxonomy file {p}: cannot parse: {e}") from e
    if isinstance(data, list):
        data = {"name": p.stem, "classes": data}
    return Taxonomy.from_dict(data, where=f"taxonomy file {p}")


def load_label_map(source: str | Path) -> dict[str, str | None]:
    """Map from another dataset's label names onto the default taxonomy (None = not a class here).

    ``source`` is ``"fmd"``, ``"dms"`` or a JSON file ``{"map": {"their name": "our name" | null}}``.
    """
    key = str(source)
    if key in _MAPS:
        data = json.loads(resources.files("fmmc.taxonomy").joinpath("data", _MAPS[key]).read_text())
    else:
        p = Path(key)
        if not p.is_file():
            raise ValueError(f"label map {key!r} is neither built-in ({', '.join(_MAPS)}) nor a file")
        data = json.loads(p.read_text())
    if not isinstance(data.get("map"), dict):
        raise ValueError(f"label map {key!r}: expected a 'map' object")
    return dict(data["map"])


def dms_names() -> list[str]:
    """DMS taxonomy.json names in index order (index 0 is "No label")."""
    data = json.loads(resources.files("fmmc.taxonomy").joinpath("data", _MAPS["dms"]).read_text())
    return list(data["names"])


def dms_non_materials() -> set[str]:
    data = json.loads(resources.files("fmmc.taxonomy").joinpath("data", _MAPS["dms"]).read_text())
    return set(data["non_materials"])
