"""The page when SAM / Grounding DINO cannot load here: ``/v1/model`` says so per component, and the page
starts on what works (the Box tool without SAM, the fast grid map) with the SAM controls greyed out and
the reason shown. Browser tests drive Debian's /usr/bin/chromium through the playwright client."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest
from fixtures_serve import LiveServer, overrides, scene, tiny_component_dirs, tiny_model_dir
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from fmmc.grounding.prompts import component_availability, set_component  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
MISSING = {"segmenter": "hf:/nonexistent/sam", "grounder": "hf:/nonexistent/gdino"}


def _model(tmp_path_factory, **comp):
    from fmmc.model.classifier import MaterialClassifier

    return MaterialClassifier.from_pretrained(tiny_model_dir(tmp_path_factory), **comp)


@pytest.fixture(scope="module")
def no_sam_url(tmp_path_factory):
    from fmmc.serve import ServeSettings, create_app

    app = create_app(_model(tmp_path_factory, **MISSING), ServeSettings(), name="no-sam model")
    with LiveServer(app) as base:
        yield base


# ----- /v1/model availability (no browser) ---------------------------------------------------------------
def test_model_info_reports_missing_components_and_tiny_ones(no_sam_url, tmp_path_factory):
    info = httpx.get(no_sam_url + "/v1/model", timeout=30).json()
    assert set(info["availability"]) == {"segmenter", "grounder"}  # vision-only: no text encoder, no describer
    for kind, spec in MISSING.items():
        av = info["availability"][kind]
        assert av["spec"] == spec and av["available"] is False
        assert f"{spec[3:]} does not exist" in av["reason"] and f"--{kind}" in av["reason"]

    from fmmc.serve import ServeSettings, create_app

    comp = overrides(tiny_component_dirs(tmp_path_factory))
    with LiveServer(create_app(_model(tmp_path_factory, **comp), ServeSettings())) as base:
        info = httpx.get(base + "/v1/model", timeout=30).json()
    for kind in ("segmenter", "grounder"):
        assert info["availability"][kind] == {"spec": comp[kind], "available": True,
                                              "reason": f"local directory {comp[kind][3:]}"}


def test_availability_of_hub_ids_built_and_failed_components(tmp_path_factory, monkeypatch):
    model = _model(tmp_path_factory, segmenter="hf:fmmc-tests/not-cached-anywhere")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    av = component_availability(model, "segmenter")
    assert av["available"] is False
    assert av["reason"].startswith("not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "0")
    av = component_availability(model, "segmenter")
    assert av["available"] is True and "needs download from the hub" in av["reason"]

    # a build that already failed is unavailable with its error; a built one is available
    missing = _model(tmp_path_factory, **MISSING)
    from fmmc.grounding.prompts import get_component

    with pytest.raises(Exception) as failed:
        get_component(missing, "segmenter")
    av = component_availability(missing, "segmenter")
    assert av["available"] is False and av["reason"] == " ".join(str(failed.value).split())
    set_component(missing, "grounder", object())
    assert component_availability(missing, "grounder") == {"spec": MISSING["grounder"], "available": True,
                                                           "reason": "loaded"}
    with pytest.raises(ValueError, match="unknown component kind"):
        component_availability(missing, "backbone")


# ----- the page --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, no_sam_url):
    from playwright.sync_api import expect

    pg = browser.new_page(viewport={"width": 1280, "height": 800})
    pg.set_default_timeout(15_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    pg.goto(no_sam_url)
    expect(pg.locator("#model-name")).to_have_text("no-sam model")
    yield pg
    pg.close()
    assert not errors, errors


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("page-photo") / "scene.png"
    Image.fromarray(scene((160, 120))).resize((640, 480), Image.BILINEAR).save(path)
    return path


def _open(page, photo: Path) -> None:
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#canvas-wrap:not([hidden])")


def _drag(page, fx0: float, fy0: float, fx1: float, fy1: float) -> None:
    box = page.locator("#draw").bounding_box()
    page.mouse.move(box["x"] + fx0 * box["width"], box["y"] + fy0 * box["height"])
    page.mouse.down()
    page.mouse.move(box["x"] + fx1 * box["width"], box["y"] + fy1 * box["height"], steps=5)
    page.mouse.up()


@pytest.mark.browser
def test_page_starts_on_box_and_grid_with_sam_controls_off(page):
    from playwright.sync_api import expect

    box_tool, point_tool = page.locator(".tool[data-tool=box]"), page.locator(".tool[data-tool=point]")
    expect(box_tool).to_have_attribute("aria-pressed", "true")
    expect(box_tool).to_be_enabled()
    expect(point_tool).to_have_attribute("aria-pressed", "false")
    for sel in (".tool[data-tool=point]", "#refine", "#object", "#find"):
        expect(page.locator(sel)).to_be_disabled()
        expect(page.locator(sel)).to_have_attribute("title", re.compile(r"/nonexistent/(sam|gdino) does not exist"))
    expect(page.locator("#refine")).not_to_be_checked()
    assert page.locator("#map-mode").input_value() == "grid"
    assert page.locator('#map-mode option[value="sam"]').is_disabled()
    note = page.locator("#avail-note")
    expect(note).to_be_visible()
    expect(note).to_contain_text("SAM is not available")
    expect(note).to_contain_text("/nonexistent/sam does not exist")
    assert page.locator("#result-title").inner_text() == "Materials"  # no error at load


@pytest.mark.browser
def test_box_classifies_and_grid_map_works_without_sam(page, photo):
    from playwright.sync_api import expect

    _open(page, photo)
    t0 = time.monotonic()
    _drag(page, 0.05, 0.1, 0.4, 0.9)
    expect(page.locator("#result-body .meta")).to_contain_text("(rectangle)", timeout=10_000)
    assert time.monotonic() - t0 < 10
    assert page.locator("#result-title").inner_text() == "wood"
    assert page.locator("#result-body .top-row").count() == 5

    # a click with the box tool would be a point prompt (SAM): the page says to drag instead, no request
    box = page.locator("#draw").bounding_box()
    page.mouse.click(box["x"] + 0.7 * box["width"], box["y"] + 0.5 * box["height"])
    expect(page.locator("#result-title")).to_have_text("Drag a box instead")
    expect(page.locator("#result-body .error-box")).to_contain_text("needs SAM")

    page.click("#whole")
    page.wait_for_selector("#legend .legend-row")
    expect(page.locator("#result-body .meta")).to_contain_text("grid map")
    assert "wood" in page.locator("#legend").inner_text()
    page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + 0.5 * box["height"], steps=3)
    expect(page.locator("#hover")).to_have_text(re.compile(r"^wood · \d+%$"))
    # the tools stay as they were after a request: the point tool is still off
    expect(page.locator(".tool[data-tool=point]")).to_be_disabled()
    expect(page.locator("#whole")).to_be_enabled()


@pytest.mark.browser
def test_api_errors_show_their_message(page, photo):
    from playwright.sync_api import expect

    _open(page, photo)
    # a proxy in between answering without the API's JSON: the page still says what happened and what to do
    page.route("**/v1/segment", lambda route: route.fulfill(status=502, body="<html>bad gateway</html>",
                                                             content_type="text/html"))
    page.click("#whole")
    expect(page.locator("#result-body .error-box")).to_contain_text("HTTP 502")
    expect(page.locator("#result-body .error-box")).to_contain_text("check the server log")
    assert page.locator("#result-title").inner_text() != "Something went wrong"
    page.unroute("**/v1/segment")

    # the server's own error: a segmenter the page believes in (e.g. cached but broken) fails to load
    page.evaluate("""() => { state.avail.segmenter = { available: true };
        const b = document.querySelector('.tool[data-tool=point]');
        delete b.dataset.unavailable; b.disabled = false; b.click(); }""")
    box = page.locator("#draw").bounding_box()
    page.mouse.click(box["x"] + 0.3 * box["width"], box["y"] + 0.5 * box["height"])
    expect(page.locator("#result-title")).to_have_text("Component not available here")
    expect(page.locator("#result-body .error-box")).to_contain_text("/nonexistent/sam")
    # the page asked /v1/model again: the point tool is off again, the box tool selected
    expect(page.locator(".tool[data-tool=point]")).to_be_disabled()
    expect(page.locator(".tool[data-tool=box]")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#result-body .error-box")).to_be_visible()  # the message stays
