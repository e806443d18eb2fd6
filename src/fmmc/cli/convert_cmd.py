"""``fmmc convert folder:DIR OUT [--images link|copy|refer] [--force]``: an imagefolder tree as an fmmc dataset.

    $ fmmc convert folder:photos data/photos          # images hard-linked into data/photos/images/<class>/
    $ fmmc convert "folder:photos?map=fmd" data/fmd --images copy   # copied instead
    $ fmmc validate data/photos && fmmc train --data data/photos --out runs/photos

``DIR/<class>/*.jpg`` is read as ``fmmc eval --data folder:DIR`` reads it (every image one whole-image region
labelled by its folder; ``?map=`` maps folder names onto the taxonomy). A dataset may only name files under
its own folder (:mod:`fmmc.data.confine`), so the images are placed under ``OUT/images/``: hard-linked where
OUT is on the same file system (no extra disk space), else copied (``--images copy`` always copies).
``--images refer`` names them where they are instead; such a dataset is then read only with the opt-in
(``--allow-outside-paths`` / ``FMMC_ALLOW_OUTSIDE_PATHS=1``). An existing metadata.jsonl, or a file under
``OUT/images/`` that is not already the photo placed there, is replaced only with ``--force`` (checked
before anything is written). (``fmmc train --data folder:DIR`` trains on such a tree directly.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="write metadata.jsonl for a folder:DIR tree (<class>/*.jpg)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="folder:DIR (DIR/<class>/*.jpg), options as for `fmmc eval`, e.g. folder:DIR?map=fmd")
    p.add_argument("out", help="dataset folder to write OUT/metadata.jsonl into (created if missing)")
    p.add_argument("--images", choices=["link", "copy", "refer"], default="link",
                   help="place the images under OUT/images/<class>/ as hard links (default; copies across file "
                        "systems) or copies, or refer to them where they are (needs --allow-outside-paths to read)")
    p.add_argument("--copy", dest="images", action="store_const", const="copy", help="same as --images copy")
    p.add_argument("--force", action="store_true",
                   help="replace an existing OUT/metadata.jsonl and other files at the OUT/images/ paths it writes")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmmc.data.dataset import METADATA

    out = Path(args.out).expanduser()
    target = out / METADATA
    if target.exists() and not args.force:
        raise ValueError(f"{target} already exists; pass --force to replace it (or choose another OUT)")
    regions = read_folder_spec(args.source)
    if args.images != "refer" and not args.force:
        taken = [dest for dest, image in ((out / "images" / r.id, Path(r.image)) for r in regions)
                 if (dest.exists() or dest.is_symlink()) and not (dest.is_file() and os.path.samefile(dest, image))]
        if taken:
            raise ValueError(f"{taken[0]} exists and is another file than the photo it would be "
                             f"({len(taken)} such path(s) under {out / 'images'}); nothing was written: choose "
                             "another OUT, or pass --force to replace them")
    placed: dict[str, int] = {}
    lines = [_line(r, out, args.images, placed) for r in regions]
    write_metadata(target, lines)
    where = {"link": "hard-linked", "copy": "copied"}
    how = "; ".join(f"{n} image(s) {where[k]} into {out / 'images'}" for k, n in sorted(placed.items()))
    print(f"{len(lines)} regions ({len({ln['label'] for ln in lines})} classes) written to {target}"
          + (f"; {how}" if how else "") + f". Check it: fmmc validate {out}"
          + (" --allow-outside-paths (the images stay where they are)" if args.images == "refer" else ""),
          file=sys.stderr)
    return 0


def read_folder_spec(spec: str) -> list[Any]:
    """The regions of a ``folder:DIR`` spec (its notes are printed); anything else is a ValueError."""
    from fmmc.data.readers.folder import load_folder
    from fmmc.data.readers.spec import parse_data_spec

    if not spec.strip().startswith("folder:"):
        raise ValueError(f"{spec!r}: convert reads folder:DIR (DIR/<class>/*.jpg); write it as folder:{spec}")
    ds = parse_data_spec(spec)
    ts = load_folder(ds.path, **ds.options)  # type: ignore[arg-type]
    for note in ts.notes:
        print(f"note: {note}", file=sys.stderr)
    if not ts.regions:
        raise ValueError(f"{spec}: no images in its class folders; expected {ds.path}/<class>/*.jpg")
    return ts.regions


def _line(region: Any, out: Path, images: str, placed: dict[str, int]) -> dict[str, Any]:
    """The metadata.jsonl line of one region: its image linked or copied under OUT/images/, or named
    relative to OUT (``refer``). ``placed`` counts how each image got there."""
    line = region.to_json()
    image = Path(region.image)
    if images == "refer":
        line["file_name"] = _relative(image, out)
        return line
    dest = out / "images" / region.id
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not (dest.exists() and os.path.samefile(dest, image)):
        how = "copy"
        if images == "link":
            try:
                dest.unlink(missing_ok=True)
                os.link(image, dest)
                how = "link"
            except OSError:  # another file system, or links not allowed: copy
                pass
        if how == "copy":
            shutil.copy2(image, dest)
        placed[how] = placed.get(how, 0) + 1
    line["file_name"] = Path("images", region.id).as_posix()
    return line


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()
    except ValueError:  # another drive (Windows): no relative path exists
        return str(path.resolve())


def write_metadata(path: Path, lines: list[dict[str, Any]]) -> None:
    from fmmc.core.io import atomic_file

    with atomic_file(path) as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
