"""Measure the package layout: rooms (top-level subpackages/modules of fmmc), arrows between them, import
loops between two files, and private names reached across rooms.

    python tools/layout_report.py            # prints the counts; --edges lists every room -> room arrow

An import counts wherever it appears (module level or inside a function): a lazy import is still a
dependency. Imports under ``if TYPE_CHECKING:`` are for annotations only and do not count. ``getattr(x,
"_name")`` and reading another object's ``__dict__`` count as private access too. A private access is ``from fmmc.a import _name`` or ``import``-ing a ``_module`` from another
room, or ``x._attr`` on an object of another room where ``_attr`` is defined in that room (approximated:
any ``obj._name`` whose ``_name`` is defined as a method/attribute only in another room).
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src" / "fmmc"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def room_of(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "(top)"


def resolve(mod: str, node: ast.ImportFrom, is_pkg: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".")
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def analyse() -> dict:
    files = sorted(ROOT.rglob("*.py"))
    modules = {module_name(f): f for f in files}
    imports: dict[str, set[str]] = defaultdict(set)
    private: list[str] = []
    defined_private: dict[str, set[str]] = defaultdict(set)  # _name -> rooms defining it
    trees = {}
    for mod, f in modules.items():
        tree = ast.parse(f.read_text())
        trees[mod] = tree
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith("_") \
                    and not node.name.startswith("__"):
                defined_private[node.name].add(room_of(mod))
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                defined_private[node.attr].add(room_of(mod))
    for mod, tree in trees.items():
        is_pkg = modules[mod].name == "__init__.py"
        type_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and getattr(block.test, "id", getattr(block.test, "attr", "")) == "TYPE_CHECKING"
                     for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            targets: list[tuple[str, list[str]]] = []
            if isinstance(node, ast.Import):
                targets = [(a.name, []) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(mod, node, is_pkg)
                targets = [(base, [a.name for a in node.names])]
            for base, names in targets:
                if not base.startswith("fmmc"):
                    continue
                for name in names or [""]:
                    full = f"{base}.{name}" if name and f"{base}.{name}" in modules else base
                    if full not in modules:
                        continue
                    if full != mod:
                        imports[mod].add(full)
                    if room_of(full) != room_of(mod) and (
                            (name.startswith("_") and not name.startswith("__"))
                            or any(p.startswith("_") and not p.startswith("__") for p in full.split("."))):
                        private.append(f"{mod} imports {full}:{name}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                    and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2 \
                    and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                name = node.args[1].value
                owners = defined_private.get(name, set())
                if name.startswith("_") and not name.startswith("__") and owners and room_of(mod) not in owners:
                    private.append(f"{mod} {node.func.id}s {name!r} (defined in {sorted(owners)})")
            if isinstance(node, ast.Attribute) and node.attr == "__dict__" and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                private.append(f"{mod} reads another object's __dict__")
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                owners = defined_private.get(node.attr, set())
                if owners and room_of(mod) not in owners and not (isinstance(node.value, ast.Name)
                                                                    and node.value.id in ("self", "cls")):
                    private.append(f"{mod} reads .{node.attr} (defined in {sorted(owners)})")
    rooms = sorted({room_of(m) for m in modules if m != "fmmc"})
    loose = sorted(m for m in modules if m.count(".") == 1 and modules[m].name not in ("__init__.py", "__main__.py"))
    arrows = sorted({(room_of(a), room_of(b)) for a, bs in imports.items() for b in bs
                     if room_of(a) != room_of(b) and a != "fmmc" and b != "fmmc"})
    loops = sorted({tuple(sorted((a, b))) for a, bs in imports.items() for b in bs if a in imports.get(b, set())})
    room_loops = sorted({tuple(sorted(e)) for e in arrows if (e[1], e[0]) in arrows})
    return {"rooms": rooms, "loose_files": loose, "arrows": arrows, "file_loops": loops, "room_loops": room_loops,
            "private": sorted(set(private))}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    r = analyse()
    print(f"rooms: {len(r['rooms'])} ({', '.join(r['rooms'])})")
    print(f"loose files at the top of src/fmmc: {len(r['loose_files'])} ({', '.join(r['loose_files'])})")
    print(f"arrows between rooms: {len(r['arrows'])}")
    print(f"two-room loops: {len(r['room_loops'])}")
    print(f"two-file loops: {len(r['file_loops'])}")
    print(f"private access across rooms: {len(r['private'])}")
    if "--edges" in argv:
        for a, b in r["arrows"]:
            print(f"  {a} -> {b}")
        for loop in r["file_loops"]:
            print("  loop:", " <-> ".join(loop))
        for p in r["private"]:
            print("  private:", p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
