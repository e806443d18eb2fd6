"""Zero-shot baselines through `fmmc eval`: a tiny random CLIP saved to disk, a VLM behind a real local server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures_eval import decode_images, make_tiny_clip, nearest_class, openai_server, shared, write_fmd
from PIL import Image

from fmmc.cli.main import main
from fmmc.evaluation.baselines.clip import ClipZeroShot, masked_crop


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared("clip", make_tiny_clip)


@pytest.fixture(scope="module")
def fmd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fmd(tmp_path_factory.mktemp("fmd"), n=3)


def test_masked_crop():
    img = Image.fromarray(np.full((10, 12, 3), 200, dtype=np.uint8))
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    mask[4, 3] = False
    crop = np.asarray(masked_crop(img, mask, (1, 2, 3)))
    assert crop.shape == (3, 6, 3)  # the mask's bounding box
    assert crop[2, 0].tolist() == [1, 2, 3] and crop[0, 0].tolist() == [200, 200, 200]
    assert masked_crop(img, None, (0, 0, 0)) is img
    with pytest.raises(ValueError, match="empty"):
        masked_crop(img, np.zeros((10, 12), dtype=bool), (0, 0, 0))


def test_clip_class_weights(tiny_clip: Path):
    zs = ClipZeroShot(str(tiny_clip))
    w = zs.class_weights
    assert w.shape == (21, 64) and np.allclose(w.norm(dim=1).numpy(), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="'\\{\\}'"):
        ClipZeroShot(str(tiny_clip), templates=["no placeholder"])


def test_clip_zeroshot_eval(tmp_path: Path, tiny_clip: Path, fmd: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "clip"
    rc = main(["eval", f"zeroshot:clip:{tiny_clip}", "--data", f"fmd:{fmd}", "--out", str(out), "--quiet",
               "--cache-dir", str(tmp_path / "cache"), "--bootstrap", "100"])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {".fmmc-output.json", "metrics.json", "predictions.jsonl", "report.md", "confusion.png",
                                               "reliability.png"}
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 9 and m["classes_mode"] == "restrict" and m["scored_classes"] == ["fabric", "metal", "wood"]
    assert m["model_config"]["kind"] == "zeroshot-clip" and len(m["model_config"]["templates"]) >= 5
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and {r["pred"] for r in rows} <= {"fabric", "metal", "wood"}
    assert all(abs(sum(p for _, p in r["top"]) - 1) < 1e-4 for r in rows)  # restricted softmax
    assert "zeroshot:clip" in capsys.readouterr().out
    # all classes: the 21-way softmax may answer anything
    rc = main(["eval", f"zeroshot:clip:{tiny_clip}", "--data", f"fmd:{fmd}", "--out", str(tmp_path / "all"),
               "--quiet", "--classes", "all", "--no-plots", "--bootstrap", "0"])
    assert rc == 0
    m = json.loads((tmp_path / "all/metrics.json").read_text())
    assert len(m["scored_classes"]) == 21 and not (tmp_path / "all/confusion.png").exists()


def _reply(body: dict) -> str:
    crop = decode_images(body)[-1]  # the close-up crop of the region
    return {"metal": "Answer: Metal.", "wood": '{"material": "wood"}'}.get(nearest_class(crop), "I am not sure.")


def test_vlm_zeroshot_eval(tmp_path: Path, fmd: Path):
    cache = tmp_path / "cache"
    with openai_server(_reply) as server:
        spec = f"zeroshot:vlm:openai:tiny-vlm?base_url={server['base_url']}&workers=3"
        out = tmp_path / "vlm"
        rc = main(["eval", spec, "--data", f"fmd:{fmd}", "--out", str(out), "--quiet", "--cache-dir", str(cache)])
        assert rc == 0
        reqs = server["requests"]
        assert len(reqs) == 9
        body = reqs[0]
        assert body["model"] == "tiny-vlm" and body["temperature"] == 0
        text = body["messages"][-1]["content"][-1]["text"]
        assert "Choose exactly ONE of these materials: fabric, metal, wood." in text  # the test set's classes
        assert len(decode_images(body)) == 2  # outlined image + close-up
        m = json.loads((out / "metrics.json").read_text())
        # metal and wood answered (two formats), fabric unparseable -> counted wrong
        assert m["acc"] == pytest.approx(6 / 9) and m["abstained"] == 3 and m["unparsed"] == 3 and m["failed"] == 0
        assert m["per_class"]["fabric"]["recall"] == 0.0 and m["per_class"]["metal"]["recall"] == 1.0
        rows = {r["id"]: r for r in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}
        fab = rows["fabric/fabric_000.jpg"]
        assert fab["pred"] is None and fab["abstained"] and fab["answer"] == "I am not sure."
        assert rows["wood/wood_000.jpg"]["parsed_by"] == "json" and rows["metal/metal_000.jpg"]["confidence"] == 1.0
        report = (out / "report.md").read_text()
        assert "Regions without an answer" in report and "I am not sure." in report
        assert (cache / "vlm_answers.sqlite").is_file()
        # a second run is answered from the SQLite cache: no request reaches the server
        rc = main(["eval", spec, "--data", f"fmd:{fmd}", "--out", str(tmp_path / "vlm2"), "--quiet",
                   "--cache-dir", str(cache)])
        assert rc == 0 and len(server["requests"]) == 9
        assert json.loads((tmp_path / "vlm2/metrics.json").read_text())["acc"] == pytest.approx(6 / 9)


def test_vlm_unreachable_writes_nothing(tmp_path: Path, fmd: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "vlm"
    spec = "zeroshot:vlm:openai:x?base_url=http://127.0.0.1:9/v1&max_retries=0&timeout=2"
    rc = main(["eval", spec, "--data", f"fmd:{fmd}", "--out", str(out), "--quiet", "--cache-dir", str(tmp_path / "c")])
    assert rc == 1
    err = capsys.readouterr().err
    # the circuit breaker stops the run after a few failed connections, with one message naming the endpoint
    assert len(err.strip().splitlines()) == 1 and "127.0.0.1:9" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".vlm*"))


def test_unknown_zeroshot_kind(tmp_path: Path, fmd: Path, capsys: pytest.CaptureFixture[str]):
    rc = main(["eval", "zeroshot:blip:x", "--data", f"fmd:{fmd}", "--out", str(tmp_path / "o"), "--quiet"])
    assert rc == 1 and "unknown zero-shot baseline" in capsys.readouterr().err
