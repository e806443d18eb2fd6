"""A two-stream model trained on dataset descriptions (describer ``metadata``) on a NEW photo: it predicts with
``--description`` or ``--describer``, and without either refuses at once with the fix; training on a dataset
without descriptions trains the vision stream only; batch commands that predict nothing exit non-zero.

One tiny model (EfficientNet-Lite0 at 64 px + MiniLM, both offline) is trained once for the module.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import make_region_image, write_dataset

from fmmc.cli.main import main
from fmmc.model.classifier import MaterialClassifier

TRAIN_ARGS = ["--backbone", "builtin:efficientnet-lite0", "--text-encoder", "builtin:minilm", "--describer",
              "metadata", "--epochs", "3", "--quiet", "image_size=64", "lr=1e-3"]
FIX_WORDS = ("--description", "--describer", "openai:gpt-4o-mini", "none")


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _train(data: Path, out: Path, cache: Path, *extra: str) -> tuple[int, list[str]]:
    """``fmmc train`` through main(); the exit code and what fmmc.train logged."""
    logger = logging.getLogger("fmmc.train.trainer")
    handler = _Records()
    logger.addHandler(handler)
    try:
        rc = main(["train", "--data", str(data), "--out", str(out), *TRAIN_ARGS, f"cache_dir={cache}", *extra])
    finally:
        logger.removeHandler(handler)
    return rc, handler.messages


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("inference_ready")
    data = write_dataset(root / "data", n_per_class=4, size=64)
    rc, logged = _train(data, root / "run", root / "cache")
    assert rc == 0
    return root / "run" / "model", logged


@pytest.fixture(scope="module")
def model_dir(trained: tuple[Path, list[str]]) -> Path:
    return trained[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of two new photos (no dataset, no descriptions)."""
    folder = tmp_path_factory.mktemp("new_photos")
    rng = np.random.default_rng(7)
    for label in ("metal", "wood"):
        make_region_image(rng, label, 64)[0].save(folder / f"{label}.jpg")
    return folder


@pytest.fixture()
def broken(tmp_path: Path) -> Path:
    """A folder of 'photos' that cannot be decoded: an answer other than the fix means work was done first."""
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        (folder / name).write_bytes(b"not an image")
    return folder


def _assert_fix(rc: int, err: str) -> None:
    assert rc != 0
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for word in FIX_WORDS:
        assert word in lines[0], (word, lines[0])


def test_training_records_what_inference_needs(trained):
    model_dir, logged = trained
    cfg = json.loads((model_dir / "config.json").read_text())
    assert (cfg["streams"], cfg["describer"]) == ("both", "metadata")
    assert MaterialClassifier.from_pretrained(model_dir).config.needs_description
    assert MaterialClassifier.from_pretrained(model_dir, describer="none").config.needs_description is False
    note = [m for m in logged if "new photo has no" in m or "new photo has none" in m]
    assert len(note) == 1 and "openai:gpt-4o-mini" in note[0] and "streams=vision" in note[0]
    assert note[0] in json.loads((model_dir.parent / "summary.json").read_text())["notes"]


def test_predict_new_photo_with_description(model_dir, photos, capsys):
    rc = main(["predict", str(model_dir), str(photos / "metal.jpg"), "--box", "8,8,56,56",
               "--description", "cold grey sheen with fine lines", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["label"] in ("metal", "wood", "fabric")
    assert out["description"] == "cold grey sheen with fine lines"


def test_predict_folder_with_description(model_dir, photos, tmp_path, capsys):
    preds = tmp_path / "preds.jsonl"
    rc = main(["predict", str(model_dir), str(photos), "--description", "warm brown with wide grain",
               "--out", str(preds), "--quiet"])
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert rc == 0 and len(rows) == 2
    assert {r["description"] for r in rows} == {"warm brown with wide grain"}
    assert "2 predictions written" in capsys.readouterr().err


def test_predict_with_describer_none(model_dir, photos, tmp_path):
    assert main(["predict", str(model_dir), str(photos / "wood.jpg"), "--describer", "none", "--json"]) == 0
    preds = tmp_path / "p.jsonl"
    assert main(["predict", str(model_dir), str(photos), "--describer", "none", "--out", str(preds), "--quiet"]) == 0
    assert len(preds.read_text().splitlines()) == 2


def test_dataset_lines_use_their_own_descriptions(model_dir, tmp_path):
    data = write_dataset(tmp_path / "ds", n_per_class=1, size=64, seed=3)
    preds = tmp_path / "p.jsonl"
    assert main(["predict", str(model_dir), str(data), "--out", str(preds), "--quiet"]) == 0
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 3 and {r["description"] for r in rows} >= {"soft blue woven threads"}


def test_predict_without_description_fails_fast(model_dir, broken, capsys):
    _assert_fix(main(["predict", str(model_dir), str(broken / "a.jpg"), "--box", "1,1,5,5"]), capsys.readouterr().err)
    _assert_fix(main(["predict", str(model_dir), str(broken), "--quiet"]), capsys.readouterr().err)


def test_api_without_description_fails_before_any_work(model_dir, broken, photos):
    model = MaterialClassifier.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="--description") as e:
        model.predict(broken / "a.jpg")
    assert "describer=SPEC" in str(e.value)
    assert model._encoder is None  # no backbone was built, no image decoded
    pred = model.predict(photos / "metal.jpg", description="cold grey sheen with fine lines")
    assert pred.label in model.trained_classes
    assert MaterialClassifier.from_pretrained(model_dir, describer="none").predict(photos / "wood.jpg").description == ""


def test_folder_where_every_item_fails_exits_nonzero(model_dir, broken, tmp_path, capsys):
    rc = main(["predict", str(model_dir), str(broken), "--description", "x", "--out", str(tmp_path / "p.jsonl"),
               "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and "nothing predicted" in err and "Traceback" not in err


def test_segment_needs_a_description_and_predicts_with_one(model_dir, photos, broken, tmp_path, capsys):
    _assert_fix(main(["segment", str(model_dir), str(broken), "--out", str(tmp_path / "m0"), "--mode", "grid"]),
                capsys.readouterr().err)
    assert main(["segment", str(model_dir), str(photos), "--out", str(tmp_path / "m1"), "--mode", "grid",
                 "--description", "soft blue woven threads"]) == 0
    assert (tmp_path / "m1" / "metal" / "labels.png").is_file()
    rc = main(["segment", str(model_dir), str(broken), "--out", str(tmp_path / "m2"), "--mode", "grid",
               "--description", "x"])
    assert rc != 0 and "nothing segmented" in capsys.readouterr().err


def test_serve_asks_for_a_description_before_decoding(model_dir, photos):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from fmmc.serve import ServeSettings, create_app

    with TestClient(create_app(str(model_dir), ServeSettings())) as client:
        r = client.post("/v1/classify", files={"image": ("x.png", b"not an image", "image/png")})
        assert r.status_code == 422 and r.json()["error"]["code"] == "description_required"
        assert "'description'" in r.json()["error"]["message"]
        img = (photos / "wood.jpg").read_bytes()
        r = client.post("/v1/classify", files={"image": ("w.jpg", img, "image/jpeg")},
                        data={"description": "warm brown with wide grain"})
        assert r.status_code == 200 and r.json()["description"] == "warm brown with wide grain"


def test_dataset_without_descriptions_trains_vision_only(tmp_path):
    data = write_dataset(tmp_path / "data", n_per_class=3, size=64, describe=False)
    rc, logged = _train(data, tmp_path / "run", tmp_path / "cache")
    assert rc == 0
    notice = [m for m in logged if "vision stream only" in m]
    assert len(notice) == 1 and "\n" not in notice[0]
    model = MaterialClassifier.from_pretrained(tmp_path / "run" / "model")
    assert model.config.streams == "vision" and not model.config.needs_description


def test_partial_descriptions_are_an_error(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", n_per_class=3, size=64)
    lines = (data / "metadata.jsonl").read_text().splitlines()
    first = json.loads(lines[1])
    del first["description"]
    lines[1] = json.dumps(first)
    (data / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    rc, _ = _train(data, tmp_path / "run", tmp_path / "cache")
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert "1 of 9 regions have no 'description'" in err and "metal_001" in err
    assert "streams=vision" in err and "openai:gpt-4o-mini" in err
