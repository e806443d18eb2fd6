"""Label review: a person checks a seeded random sample of auto-labelled regions, one key per verdict.

    fmmc synth review runs/synth/dataset --sample 200          # serve the page, print its URL
    fmmc synth review runs/synth/dataset --report              # accuracy + Wilson 95% CI, no server

The page shows each region as its image with the mask outlined (outside darkened) and the label;
``a`` accepts, ``r`` rejects, ``s``/``→`` skips, ``←`` goes back, ``u`` undoes the last verdict, ``o``
toggles the overlay. Verdicts go to SQLite (``DATASET/review.sqlite`` by default), so a review can stop
and resume; label accuracy = accepted / (accepted + rejected) with a Wilson score interval (the paper
reports 98%). In Python: ``build_app(dataset, db, sample, seed)`` returns the FastAPI app.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import io
import logging
import math
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from fmmc.data.dataset import load_dataset
from fmmc.data.imageio import load_image
from fmmc.data.masks import mask_outline
from fmmc.data.records import Region
from fmmc.data.regions import as_mask, region_threshold

log = logging.getLogger(__name__)

DB_NAME = "review.sqlite"
STATIC_DIR = Path(__file__).with_name("review_static")
VERDICTS = ("accept", "reject")
DISPLAY_MAX_SIDE = 768
OUTLINE_RGB = (255, 214, 0)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    region_id  TEXT PRIMARY KEY,
    verdict    TEXT NOT NULL CHECK (verdict IN ('accept', 'reject')),
    label      TEXT,
    image      TEXT,
    mask       TEXT,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    region_id TEXT NOT NULL,
    verdict   TEXT NOT NULL,
    previous  TEXT,
    at        TEXT NOT NULL,
    undone    INTEGER NOT NULL DEFAULT 0
);
"""


# ---- statistics (pure) ------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion (95% for z=1.96); None when ``n`` is 0.

    >>> ["%.4f" % v for v in wilson_interval(98, 100)]
    ['0.9300', '0.9945']
    """
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must be between 0 and n={n}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_stats(accepted: int, rejected: int) -> dict[str, Any]:
    """``{"accepted", "rejected", "reviewed", "accuracy", "ci_low", "ci_high"}`` (None where undefined)."""
    n = accepted + rejected
    ci = wilson_interval(accepted, n)
    return {"accepted": accepted, "rejected": rejected, "reviewed": n,
            "accuracy": accepted / n if n else None,
            "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None}


def format_stats(stats: dict[str, Any]) -> str:
    if not stats["reviewed"]:
        return "no verdicts yet"
    return (f"label accuracy {stats['accuracy']:.1%} (95% Wilson CI {stats['ci_low']:.1%}-{stats['ci_high']:.1%}), "
            f"{stats['accepted']} accepted, {stats['rejected']} rejected of {stats['reviewed']} reviewed")


# ---- verdict storage ----------------------------------------------------------------------------------
class VerdictStore:
    """Verdicts in SQLite, one row per region, plus an event log that ``undo`` walks back."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            conn.executescript(_SCHEMA)
        finally:
            conn.close()

    @contextlib.contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        # one connection per call: safe from any server thread; IMMEDIATE serialises read-modify-write
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    def set(self, region: Region, verdict: str, root: Path | None = None) -> None:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        now = _now()
        with self._tx(write=True) as conn:
            row = conn.execute("SELECT verdict FROM verdicts WHERE region_id = ?", (region.id,)).fetchone()
            conn.execute(
                "INSERT INTO verdicts (region_id, verdict, label, image, mask, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(region_id) DO UPDATE SET verdict = excluded.verdict, updated_at = excluded.updated_at",
                (region.id, verdict, region.label, _rel(region.image, root),
                 _rel(region.mask, root) if region.mask else None, now),
            )
            conn.execute("INSERT INTO events (region_id, verdict, previous, at) VALUES (?, ?, ?, ?)",
                         (region.id, verdict, row[0] if row else None, now))

    def undo(self) -> tuple[str, str | None] | None:
        """Revert the last verdict still in force: ``(region_id, restored verdict or None)``, or None."""
        with self._tx(write=True) as conn:
            ev = conn.execute("SELECT seq, region_id, previous FROM events WHERE undone = 0 "
                              "ORDER BY seq DESC LIMIT 1").fetchone()
            if ev is None:
                return None
            seq, region_id, previous = ev
            if previous is None:
                conn.execute("DELETE FROM verdicts WHERE region_id = ?", (region_id,))
            else:
                conn.execute("UPDATE verdicts SET verdict = ?, updated_at = ? WHERE region_id = ?",
                             (previous, _now(), region_id))
            conn.execute("UPDATE events SET undone = 1 WHERE seq = ?", (seq,))
            return region_id, previous

    def verdicts(self) -> dict[str, str]:
        with self._tx() as conn:
            return dict(conn.execute("SELECT region_id, verdict FROM verdicts").fetchall())

    def stats(self) -> dict[str, Any]:
        """Accuracy over every verdict in the database, plus a per-label breakdown."""
        with self._tx() as conn:
            rows = conn.execute("SELECT COALESCE(label, ''), verdict, COUNT(*) FROM verdicts "
                                "GROUP BY 1, 2").fetchall()
        per: dict[str, list[int]] = {}
        for label, verdict, count in rows:
            per.setdefault(label, [0, 0])[0 if verdict == "accept" else 1] += count
        out = accuracy_stats(sum(a for a, _ in per.values()), sum(r for _, r in per.values()))
        out["per_label"] = {label: accuracy_stats(a, r) for label, (a, r) in sorted(per.items())}
        return out


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _rel(path: Path | None, root: Path | None) -> str | None:
    if path is None:
        return None
    if root is not None:
        with contextlib.suppress(ValueError):
            return path.resolve().relative_to(root.resolve()).as_posix()
    return str(path)


# ---- sample and rendering ----------------------------------------------------------------------------
def sample_regions(regions: list[Region], n: int | None, seed: int) -> list[Region]:
    """A seeded random sample of ``n`` regions (all of them, shuffled, when ``n`` is None or 0)."""
    rng = random.Random(seed)
    ordered = sorted(regions, key=lambda r: r.id)
    if not n or n >= len(ordered):
        rng.shuffle(ordered)
        return ordered
    return rng.sample(ordered, n)


def render_region(region: Region, overlay: bool = True, max_side: int = DISPLAY_MAX_SIDE) -> bytes:
    """PNG of the region's image scaled to ``max_side`` (at most 4x up), mask outlined, outside darkened."""
    image = load_image(region.image)
    full_size = image.size
    scale = min(4.0, max_side / max(image.size))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    problem = None
    if overlay and region.mask is not None:
        try:
            mask = as_mask(region.mask, full_size, threshold=region_threshold(region))
        except ValueError as e:
            problem = f"mask unreadable: {getattr(e, 'problem', e)}"
        else:
            m = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize(size, Image.Resampling.NEAREST)
            image = _outline(image, m)
    if problem:
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 0, image.width, 22), fill=(180, 0, 0))
        draw.text((6, 5), problem[:120], fill=(255, 255, 255))
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _outline(image: Image.Image, mask: Image.Image) -> Image.Image:
    width = max(3, round(max(image.size) / 256)) | 1  # odd filter size, ~3 px at 768
    inside = np.asarray(mask) > 0
    edge = mask_outline(inside, width)
    rgb = np.asarray(image, dtype=np.float32).copy()
    rgb[~inside] *= 0.4  # darken what is not labelled, keep the region's own pixels untouched
    rgb[edge] = OUTLINE_RGB
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8), mode="RGB")


# ---- the web app --------------------------------------------------------------------------------------
def build_app(dataset: str | Path, db: str | Path | None = None, sample: int | None = 200, seed: int = 0) -> Any:
    """The review FastAPI app for ``dataset`` (a folder with metadata.jsonl); verdicts go to ``db``."""
    from fastapi import Body, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, Response
    from fastapi.staticfiles import StaticFiles

    root = Path(dataset)
    regions = sample_regions(load_dataset(root), sample, seed)
    if not regions:
        raise ValueError(f"{root}: the dataset has no regions to review")
    base = root.parent if root.is_file() else root
    store = VerdictStore(Path(db) if db else base / DB_NAME)
    by_id = {r.id: i for i, r in enumerate(regions)}
    static = STATIC_DIR
    app = FastAPI(title="fmmc label review", docs_url=None, redoc_url=None)
    app.state.store, app.state.regions = store, regions

    def region_at(index: int) -> Region:
        if not 0 <= index < len(regions):
            raise HTTPException(404, f"no item {index}; the sample has {len(regions)} items (0-{len(regions) - 1})")
        return regions[index]

    @functools.lru_cache(maxsize=64)
    def rendered(index: int, overlay: bool) -> bytes:
        return render_region(regions[index], overlay=overlay)

    def stats() -> dict[str, Any]:
        s = store.stats()
        verdicts = store.verdicts()
        s["sample_size"] = len(regions)
        s["sample_reviewed"] = sum(1 for r in regions if r.id in verdicts)
        return s

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return (static / "index.html").read_text(encoding="utf-8")

    @app.get("/api/items")
    def items() -> dict[str, Any]:
        verdicts = store.verdicts()
        return {"dataset": base.name, "seed": seed, "items": [_item_json(i, r, verdicts.get(r.id))
                                                             for i, r in enumerate(regions)]}

    @app.get("/api/render/{index}.png")
    def render(index: int, overlay: int = 1) -> Response:
        region_at(index)
        try:
            png = rendered(index, bool(overlay))
        except ValueError as e:  # unreadable image: tell the reviewer, who can reject or skip
            raise HTTPException(422, str(e)) from e
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.post("/api/verdict")
    def verdict(body: dict[str, Any] = Body(...)) -> dict[str, Any]:  # noqa: B008 - FastAPI's idiom
        region_id, value = body.get("id"), body.get("verdict")
        if not isinstance(region_id, str) or region_id not in by_id:
            raise HTTPException(404, f"region {region_id!r} is not in this review sample")
        if value not in VERDICTS:
            raise HTTPException(422, f"verdict must be one of {list(VERDICTS)}, got {value!r}")
        store.set(regions[by_id[region_id]], value, root=base)
        return {"ok": True, "stats": stats()}

    @app.post("/api/undo")
    def undo() -> dict[str, Any]:
        undone = store.undo()
        region_id, restored = undone if undone else (None, None)
        return {"id": region_id, "index": by_id.get(region_id) if region_id else None,
                "verdict": restored, "stats": stats()}

    @app.get("/api/stats")
    def get_stats() -> dict[str, Any]:
        return stats()

    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app


def _item_json(index: int, region: Region, verdict: str | None) -> dict[str, Any]:
    extra = region.extra
    return {
        "index": index, "id": region.id, "label": region.label, "has_mask": region.mask is not None,
        "object": extra.get("object"), "submaterial": extra.get("submaterial"), "prompt": extra.get("prompt"),
        "description": region.description, "verdict": verdict,
        "image_url": f"api/render/{index}.png", "plain_url": f"api/render/{index}.png?overlay=0",
    }


# ---- CLI hook (wired as `fmmc synth review`) ---------------------------------------------------------------
def add_review_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "review", help="review a sample of auto-labelled regions in the browser; report label accuracy",
        description="Serve a page to accept/reject a seeded random sample of regions (keys: a accept, r reject, "
                    "s or right arrow skip, u undo), store verdicts in SQLite, report accuracy with a Wilson 95% CI.",
    )
    p.add_argument("dataset", type=Path, help="dataset folder with metadata.jsonl")
    p.add_argument("--sample", type=int, default=200, help="regions to sample (0 = all; default 200)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=0, help="port (default 0 = any free port; the URL is printed)")
    p.add_argument("--db", type=Path, default=None, help=f"verdict database (default DATASET/{DB_NAME})")
    p.add_argument("--report", action="store_true", help="print accuracy and its 95%% CI from the database and exit")
    p.set_defaults(func=run_review)
    return p


def run_review(args: argparse.Namespace) -> int:
    dataset = Path(args.dataset)
    base = dataset.parent if dataset.is_file() else dataset
    db = Path(args.db) if args.db else base / DB_NAME
    if args.report:
        if not db.is_file():
            raise FileNotFoundError(f"{db}: no verdicts yet; run `fmmc synth review {dataset}` first")
        s = VerdictStore(db).stats()
        print(format_stats(s))
        for label, ls in s["per_label"].items():
            print(f"  {label or '(no label)'}: {format_stats(ls)}")
        return 0
    import socket

    import uvicorn

    app = build_app(dataset, db=db, sample=args.sample, seed=args.seed)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))  # bind first, so --port 0 gives a real port we can print
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"review page: http://{shown}:{port}/  ({len(app.state.regions)} regions; verdicts -> {db}; Ctrl+C to stop)",
          flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    server.run(sockets=[sock])
    print(format_stats(VerdictStore(db).stats()))
    return 0
