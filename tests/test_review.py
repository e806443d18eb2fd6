"""Label review: Wilson interval by hand, SQLite verdicts + undo, the API, and the page in headless Chromium."""

from __future__ import annotations

import argparse
import io
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmmc.data.dataset import load_dataset
from fmmc.synth.review import (
    VerdictStore,
    accuracy_stats,
    add_review_parser,
    build_app,
    render_region,
    run_review,
    sample_regions,
    wilson_interval,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
LABELS = ("ceramic", "wood", "metal")


def make_review_dataset(root: Path, n: int = 12, size: tuple[int, int] = (160, 120)) -> Path:
    """Coloured objects on a background, one mask each, fields as the synth build writes them."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    lines = []
    for k in range(n):
        label = LABELS[k % len(LABELS)]
        cx, cy, r = rng.integers(50, 110), rng.integers(40, 80), rng.integers(20, 35)
        m = (xx - cx) ** 2 + ((yy - cy) * 1.3) ** 2 < r**2
        img = np.full((h, w, 3), (90, 110, 130), np.uint8) + rng.integers(0, 30, (h, w, 3)).astype(np.uint8)
        img[m] = {"ceramic": (235, 235, 225), "wood": (150, 95, 45), "metal": (170, 175, 185)}[label]
        Image.fromarray(img).save(root / "images" / f"{k:03d}.png")
        Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / f"{k:03d}.png")
        lines.append({"file_name": f"images/{k:03d}.png", "mask_file_name": f"masks/{k:03d}.png", "label": label,
                      "id": f"item-{k:03d}", "object": "vase", "submaterial": "porcelain",
                      "prompt": f"a photo of a {label} vase"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return make_review_dataset(tmp_path / "ds")


# ---- statistics ---------------------------------------------------------------------------------------
def test_wilson_interval_by_hand() -> None:
    lo, hi = wilson_interval(98, 100)  # the paper's 98%
    assert (round(lo, 4), round(hi, 4)) == (0.93, 0.9945)
    lo, hi = wilson_interval(0, 10)  # never [0, 0], unlike the Wald interval
    assert lo == 0.0 and round(hi, 4) == 0.2775
    assert [round(v, 4) for v in wilson_interval(50, 100)] == [0.4038, 0.5962]
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
    s = accuracy_stats(3, 1)
    assert s["accuracy"] == 0.75 and s["reviewed"] == 4 and s["ci_low"] < 0.75 < s["ci_high"]
    assert accuracy_stats(0, 0)["accuracy"] is None


def test_sample_is_seeded_and_a_subset(dataset: Path) -> None:
    regions = load_dataset(dataset)
    a, b = sample_regions(regions, 5, seed=1), sample_regions(list(reversed(regions)), 5, seed=1)
    assert [r.id for r in a] == [r.id for r in b]  # independent of file order
    assert len({r.id for r in a}) == 5
    assert [r.id for r in sample_regions(regions, 5, seed=2)] != [r.id for r in a]
    assert sorted(r.id for r in sample_regions(regions, 0, seed=0)) == sorted(r.id for r in regions)


def test_verdict_store_and_undo(tmp_path: Path, dataset: Path) -> None:
    regions = load_dataset(dataset)
    store = VerdictStore(tmp_path / "v.sqlite")
    store.set(regions[0], "accept")
    store.set(regions[1], "reject")
    store.set(regions[1], "accept")  # changed mind
    assert store.verdicts() == {regions[0].id: "accept", regions[1].id: "accept"}
    assert store.undo() == (regions[1].id, "reject")
    assert store.undo() == (regions[1].id, None)
    assert store.verdicts() == {regions[0].id: "accept"}
    assert store.undo() == (regions[0].id, None)
    assert store.undo() is None
    with pytest.raises(ValueError, match="verdict"):
        store.set(regions[0], "maybe")
    store.set(regions[0], "accept")
    store.set(regions[1], "reject")
    s = VerdictStore(tmp_path / "v.sqlite").stats()  # persisted: a new store reads it back
    assert (s["accepted"], s["rejected"], s["accuracy"]) == (1, 1, 0.5)
    assert set(s["per_label"]) == {regions[0].label, regions[1].label}


def test_render_outlines_the_mask(dataset: Path) -> None:
    region = load_dataset(dataset)[0]
    img = Image.open(io.BytesIO(render_region(region, max_side=320)))  # small images are scaled up
    assert img.size == (320, 240) and img.mode == "RGB"
    arr = np.asarray(img)
    assert (np.all(arr == (255, 214, 0), axis=-1)).sum() > 30  # the outline is drawn
    plain = np.asarray(Image.open(io.BytesIO(render_region(region, overlay=False))))
    assert not np.all(plain == (255, 214, 0), axis=-1).any()
    big = render_region(region, max_side=80)
    assert Image.open(io.BytesIO(big)).size == (80, 60)


# ---- API ------------------------------------------------------------------------------------------------
def test_api_roundtrip(dataset: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    db = tmp_path / "r.sqlite"
    client = TestClient(build_app(dataset, db=db, sample=6, seed=0))
    assert "Label review" in client.get("/").text
    assert client.get("/static/review.js").status_code == 200
    items = client.get("/api/items").json()["items"]
    assert len(items) == 6 and all(it["verdict"] is None for it in items)
    png = client.get(f"/{items[0]['image_url']}")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert client.get("/api/render/99.png").status_code == 404
    r = client.post("/api/verdict", json={"id": items[0]["id"], "verdict": "accept"}).json()
    assert r["stats"]["accepted"] == 1 and r["stats"]["sample_reviewed"] == 1
    r = client.post("/api/verdict", json={"id": items[1]["id"], "verdict": "reject"}).json()
    assert r["stats"]["accuracy"] == 0.5 and r["stats"]["ci_low"] is not None
    assert client.post("/api/verdict", json={"id": "nope", "verdict": "accept"}).status_code == 404
    assert client.post("/api/verdict", json={"id": items[2]["id"], "verdict": "maybe"}).status_code == 422
    u = client.post("/api/undo").json()
    assert (u["id"], u["index"], u["verdict"]) == (items[1]["id"], 1, None) and u["stats"]["reviewed"] == 1
    assert client.get("/api/items").json()["items"][0]["verdict"] == "accept"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT region_id, verdict FROM verdicts").fetchall() == [(items[0]["id"], "accept")]


def test_cli_report(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_review_parser(parser.add_subparsers())
    args = parser.parse_args(["review", str(dataset), "--report"])
    assert (args.sample, args.seed, args.host, args.port) == (200, 0, "127.0.0.1", 0)
    with pytest.raises(FileNotFoundError, match="no verdicts yet"):
        run_review(args)
    store = VerdictStore(dataset / "review.sqlite")
    for i, region in enumerate(load_dataset(dataset)[:10]):
        store.set(region, "reject" if i == 0 else "accept")
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "label accuracy 90.0% (95% Wilson CI 59.6%-98.2%)" in out and "9 accepted, 1 rejected" in out


# ---- the page in a real browser ---------------------------------------------------------------------
@pytest.fixture()
def live_server(dataset: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    import uvicorn

    db = tmp_path / "live.sqlite"
    app = build_app(dataset, db=db, sample=8, seed=3)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", db
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _rows(db: Path) -> dict[str, str]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT region_id, verdict FROM verdicts").fetchall())


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium: apt-get install -y chromium chromium-driver")
def test_review_page_in_chromium(live_server: tuple[str, Path]) -> None:
    pytest.importorskip("playwright.sync_api", reason="needs the playwright client: pip install playwright")
    from playwright.sync_api import expect, sync_playwright

    url, db = live_server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("body[data-ready='1']", timeout=15000)
            stats = page.get_by_test_id("stats")
            expect(stats).to_have_text("no verdicts yet")
            first_id = page.locator("#rid").inner_text().split()[0]
            page.wait_for_function("document.getElementById('image').naturalWidth > 0")

            page.keyboard.press("a")
            expect(stats).to_contain_text("label accuracy 100.0%")
            expect(stats).to_contain_text("1 accepted · 0 rejected")
            second_id = page.locator("#rid").inner_text().split()[0]
            assert second_id != first_id

            page.keyboard.press("r")
            expect(stats).to_contain_text("label accuracy 50.0% (95% CI 9.5%–90.5%)")
            assert _rows(db) == {first_id: "accept", second_id: "reject"}

            page.keyboard.press("s")  # skip: no verdict
            page.keyboard.press("ArrowRight")
            expect(page.locator("#progress")).to_contain_text("2 of 8")
            assert len(_rows(db)) == 2

            page.keyboard.press("u")  # undo the reject: back on that item, verdict gone
            expect(stats).to_contain_text("1 accepted · 0 rejected")
            expect(page.locator("#rid")).to_contain_text(second_id)
            expect(page.get_by_test_id("verdict")).to_have_text("no verdict")
            assert _rows(db) == {first_id: "accept"}

            page.keyboard.press("r")
            expect(stats).to_contain_text("1 accepted · 1 rejected")
            page.wait_for_function("document.getElementById('image').complete")
            page.wait_for_timeout(300)  # let the verdict flash fade before the screenshot
            page.screenshot(path="/tmp/fmmc_review_page.png")
            page.keyboard.press("o")  # overlay toggle swaps to the plain image
            expect(page.locator("#image")).to_have_attribute("src", "api/render/2.png?overlay=0")
            assert not errors, errors
        finally:
            browser.close()
    assert _rows(db) == {first_id: "accept", second_id: "reject"}
