"""Check a dataset and report every problem with its file and line (``fmmc validate DATASET``)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from fmmc.data.confine import outside_paths_allowed
from fmmc.data.dataset import DatasetError, iter_lines, metadata_path, parse_line
from fmmc.data.imageio import ImageError
from fmmc.data.regions import load_region
from fmmc.taxonomy import Taxonomy


@dataclass(frozen=True)
class Problem:
    where: str  # "path:line" or a file path
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def validate_dataset(root: str | Path, taxonomy: Taxonomy | None = None, check_files: bool = True,
                     allow_outside_root: bool = False) -> tuple[int, list[Problem]]:
    """Return (number of lines, problems). Checks the file (UTF-8, not empty), JSON, fields, paths (inside the
    dataset folder unless ``allow_outside_root`` or ``$FMMC_ALLOW_OUTSIDE_PATHS=1``), labels, ids, images and
    masks."""
    path = metadata_path(root)
    base = path.parent
    outside = outside_paths_allowed(allow_outside_root)
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    try:
        lines = list(iter_lines(root, on_error=lambda e: problems.append(_problem(e, str(path)))))
    except DatasetError as e:
        return len(problems), problems + [_problem(e, str(path))]
    n = len(problems)  # lines that are not UTF-8 text
    labels: Counter[str] = Counter()
    for lineno, line in lines:
        n += 1
        where = f"{path}:{lineno}"
        try:
            region = parse_line(json.loads(line), base, where, outside)
        except json.JSONDecodeError as e:
            problems.append(Problem(where, f"not valid JSON ({e.msg}, at column {e.colno})"))
            continue
        except DatasetError as e:
            problems.append(_problem(e, where))
            continue
        if region.id in seen:
            problems.append(Problem(where, f"duplicate id {region.id!r} (first on line {seen[region.id]})"))
        seen.setdefault(region.id, lineno)
        if region.label is not None:
            labels[region.label] += 1
            if taxonomy is not None and region.label not in taxonomy:
                problems.append(Problem(where, f"unknown label {region.label!r}; taxonomy {taxonomy.name!r} has: "
                                               f"{', '.join(taxonomy.names)}"))
        if not check_files:
            continue
        try:
            load_region(region)  # the one region rule: what training and predict will see
        except ImageError as e:
            what = "mask" if region.mask is not None and str(e.path) == str(region.mask) else "image"
            problems.append(Problem(where, f"{what} {e.path}: {e.problem}" + (f" ({e.fix})" if e.fix else "")))
        except ValueError as e:  # a box with no area or wholly outside the image
            problems.append(Problem(where, str(e)))
    return n, problems


def _problem(e: DatasetError, where: str) -> Problem:
    """``e`` as a Problem, its message without the ``where: `` (or ``where:LINE: ``) it starts with."""
    text = str(e)
    if text.startswith(where + ": "):
        return Problem(where, text[len(where) + 2:])
    if text.startswith(where + ":"):
        line, sep, rest = text[len(where) + 1:].partition(": ")
        if sep and line.isdigit():
            return Problem(f"{where}:{line}", rest)
    return Problem(where, text)
