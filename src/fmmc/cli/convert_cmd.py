"""``fmmc convert folder:DIR OUT [--copy] [--force]``: an imagefolder tree as an fmmc dataset.

    $ fmmc convert folder:photos data/photos          # data/photos/metadata.jsonl -> ../../photos/wood/1.jpg ...
    $ fmmc convert "folder:photos?map=fmd" data/fmd --copy   # images copied to data/fmd/images/<class>/
    $ fmmc validate data/photos && fmmc train --data data/photos --out runs/photos

``DIR/<class>/*.jpg`` is read as ``fmmc eval --data folder:DIR`` reads it (every image one whole-image region
labelled by its folder; ``?map=`` maps folder names onto the taxonomy). ``OUT/metadata.jsonl`` names the
images relative to OUT; they stay where they are unless ``--copy``. An existing metadata.jsonl is replaced
only with ``--force``. (``fmmc train --data folder:DIR`` trains on such a tree directly.)
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
    p.add_argument("--copy", action="store_true", help="copy the images to OUT/images/<class>/ (default: refer to them)")
    p.add_argument("--force", action="store_true", help="replace an existing OUT/metadata.jsonl")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmmc.data.dataset import METADATA

    out = Path(args.out).expanduser()
    target = out / METADATA
    if target.exists() and not args.force:
        raise ValueError(f"{target} already exists; pass --force to replace it (or choose another OUT)")
    regions = read_folder_spec(args.source)
    lines = [_line(r, out, args.copy) for r in regions]
    write_metadata(target, lines)
    print(f"{len(lines)} regions ({len({ln['label'] for ln in lines})} classes) written to {target}"
          + (f"; images copied to {out / 'images'}" if args.copy else "") + f". Check it: fmmc validate {out}",
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


def _line(region: Any, out: Path, copy: bool) -> dict[str, Any]:
    """The metadata.jsonl line of one region: its image copied under OUT/images/ or named relative to OUT."""
    line = region.to_json()
    image = Path(region.image)
    if copy:
        dest = out / "images" / region.id
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.resolve() != image.resolve():
            shutil.copy2(image, dest)
        line["file_name"] = Path("images", region.id).as_posix()
    else:
        line["file_name"] = _relative(image, out)
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
