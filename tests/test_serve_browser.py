"""The web page in headless Chromium (Debian's /usr/bin/chromium via the playwright client): open a photo,
click a surface, drag a box, name an object, switch to the whole-image map and hover it.

Screenshots go to $FMMC_SCREENSHOT_DIR when set (else the test's tmp dir)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from fixtures_serve import LiveServer, overrides, scene, tiny_component_dirs, tiny_model_dir
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)"),
]
expect = None  # playwright's expect, set when the browser starts (playwright is an optional dev dependency)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    pytest.importorskip("fastapi")
    from fmmc.model.classifier import MaterialClassifier
    from fmmc.serve import ServeSettings, create_app

    comp = overrides(tiny_component_dirs(tmp_path_factory))
    model = MaterialClassifier.from_pretrained(tiny_model_dir(tmp_path_factory), **comp)
    # box_threshold=1: the random tiny grounder never finds an object, so the page must say so
    app = create_app(model, ServeSettings(pred_iou_thresh=-1.0, stability_thresh=-1.0, points_per_side=4, box_threshold=1.0),
                     name="tiny test model")
    with LiveServer(app) as base:
        yield base


@pytest.fixture(scope="module")
def page(url):
    sync_api = pytest.importorskip("playwright.sync_api")
    global expect
    expect = sync_api.expect
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
        pg.goto(url)
        yield pg
        browser.close()
        assert not errors, errors


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = Path(os.environ.get("FMMC_SCREENSHOT_DIR") or tmp_path_factory.mktemp("screens"))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "scene.png"
    Image.fromarray(scene((160, 120))).resize((640, 480), Image.BILINEAR).save(path)  # textures at the model's scale
    return path


def _click_stage(page, fx: float, fy: float) -> None:
    box = page.locator("#draw").bounding_box()
    page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])


def test_upload_click_box_object_and_map(page, photo, shots):
    expect(page.locator("#model-name")).to_have_text("tiny test model")
    page.screenshot(path=str(shots / "0-empty.png"))

    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#canvas-wrap:not([hidden])")
    assert page.locator("#status").inner_text() == "640×480"

    # click a surface on the left (wood): top materials with bars, mask outline drawn
    _click_stage(page, 0.25, 0.5)
    page.wait_for_selector("#result-body .top-row")
    assert page.locator("#result-body .top-row").count() == 5
    assert "region (point)" in page.locator("#result-body .meta").inner_text()
    drawn = page.evaluate("""() => { const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
    assert drawn > 0
    page.screenshot(path=str(shots / "1-point.png"))

    # drag a box with the box tool (SAM refinement off: the box itself)
    page.click("button[data-tool=box]")
    page.uncheck("#refine")
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + 0.05 * box["width"], box["y"] + 0.1 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + 0.4 * box["width"], box["y"] + 0.9 * box["height"], steps=5)
    page.mouse.up()
    expect(page.locator("#result-body .meta")).to_contain_text("(rectangle)")
    assert page.locator("#result-title").inner_text() == "wood"
    page.screenshot(path=str(shots / "2-box.png"))

    # an object name the grounder cannot find -> a clear message, never a random region
    page.fill("#object", "unicorn")
    page.click("#object-form button")
    expect(page.locator("#result-body .error-box")).to_contain_text("object 'unicorn' not found")
    page.screenshot(path=str(shots / "2b-object-not-found.png"))

    # whole image: the map overlay, a legend, and a hover read-out
    page.select_option("#map-mode", "grid")
    page.click("#whole")
    page.wait_for_selector("#legend .legend-row")
    box = page.locator("#draw").bounding_box()
    assert page.locator("#result-title").inner_text() == "Whole image"
    legend = page.locator("#legend").inner_text()
    assert "wood" in legend and "foliage" in legend
    page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.5 * box["height"])
    page.wait_for_selector("#hover:not([hidden])")
    expect(page.locator("#hover")).to_have_text(re.compile(r"^wood · \d+%$"))
    page.mouse.move(box["x"] + 0.85 * box["width"], box["y"] + 0.5 * box["height"], steps=3)
    page.screenshot(path=str(shots / "3-map-grid.png"))
    expect(page.locator("#hover")).to_have_text(re.compile(r"^foliage · \d+%$"))
    page.screenshot(path=str(shots / "3-map-grid.png"))

    page.select_option("#map-mode", "sam")
    page.click("#whole")
    expect(page.locator("#result-body .meta")).to_contain_text("sam map")
    page.screenshot(path=str(shots / "4-map-sam.png"))


def test_errors_show_in_the_page(page, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    page.set_input_files("#file", str(bad))
    expect(page.locator("#result-body .error-box")).to_contain_text("cannot read broken.png")


def test_a_real_photo(page, tmp_path, shots):
    data = pytest.importorskip("skimage.data")
    path = tmp_path / "coffee.png"
    Image.fromarray(data.coffee()).save(path)  # CC0 photo shipped with scikit-image
    page.set_input_files("#file", str(path))
    expect(page.locator("#status")).to_have_text("600×400")
    page.select_option("#map-mode", "grid")
    page.click("#whole")
    expect(page.locator("#result-body .meta")).to_contain_text("grid map")
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + 0.5 * box["width"], box["y"] + 0.4 * box["height"], steps=3)
    expect(page.locator("#hover")).to_have_text(re.compile(r"^\w+ · \d+%$"))
    page.screenshot(path=str(shots / "5-real-photo-map.png"))
