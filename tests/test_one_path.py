"""One path from pixels to prediction (issue 9): every entry point gives the same answer for the same photo.

Each test here failed on the code before the one-path rework:
* a large JPEG gave other probabilities through ``predict(path)`` than through a folder, eval or the
  service (JPEG draft decoding on one path only);
* a JPEG mask loaded in the language stream but was refused as "not binary" everywhere else;
* the feature cache was keyed by the backbone's spec string, so new weights at the same path got old features;
* a trained model whose backbone lost its processor file was silently served with ImageNet statistics;
* a config.json without ``head`` ended in a raw KeyError.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fixtures_serve import LiveServer, tiny_model_dir
from PIL import Image

from fmmc.cli.main import main
from fmmc.data.records import Region
from fmmc.model.classifier import MaterialClassifier


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory)  # EfficientNet-Lite0 at 128 px, vision only, 3 classes


@pytest.fixture(scope="module")
def model(model_dir):
    return MaterialClassifier.from_pretrained(model_dir, cache_dir=None)


def _big_jpeg(path: Path, size=(1600, 1200), seed=3) -> Path:
    """A photo-sized JPEG with fine detail (where draft decoding and a full decode differ)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 60 * np.sin(xx / 7.0), 128 + 60 * np.cos(yy / 5.0), 90 + 40 * np.sin((xx + yy) / 3.0)], -1)
    arr = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, quality=92)
    return path


def _jpeg_mask(path: Path, size=(200, 150)) -> np.ndarray:
    """A JPEG-compressed mask (values spread around 0 and 255 at the edges, as FMD's masks are)."""
    w, h = size
    m = np.zeros((h, w), np.uint8)
    m[30:110, 40:150] = 255
    Image.fromarray(m).save(path, quality=60)
    arr = np.asarray(Image.open(path).convert("L"))
    assert len(np.unique(arr)) > 2  # really not binary
    return arr >= 128


def test_large_jpeg_same_probabilities_everywhere(model, model_dir, tmp_path, capsys):
    folder = tmp_path / "photos" / "wood"
    folder.mkdir(parents=True)
    jpg = _big_jpeg(folder / "big.jpg")

    single = model.predict(jpg).probs
    # an already-open image and the file's bytes decode to the same pixels
    assert np.array_equal(model.predict(Image.open(jpg)).probs, single)
    (from_folder,), failures = model.predict_regions([Region(image=jpg)], progress=False)
    assert not failures and np.array_equal(from_folder.probs, single)

    # the CLI: one image vs a folder of images (rounded the same way in both outputs)
    assert main(["predict", str(model_dir), str(jpg), "--json", "--top-k", "3"]) == 0
    one = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(model_dir), str(tmp_path / "photos"), "--out", str(out), "--top-k", "3", "--quiet"]) == 0
    row = json.loads(out.read_text().splitlines()[0])
    assert row["top"] == one["top"]
    assert one["top"][0]["prob"] == round(float(single.max()), 6)

    # evaluation (folder test set; it restricts to the test set's classes)
    from fmmc.data.readers.spec import load_test_set
    from fmmc.evaluation.evaluate import EvalSettings, evaluate

    ev = evaluate(model, load_test_set(f"folder:{tmp_path / 'photos'}"), EvalSettings(progress=False, n_boot=10))
    restricted = model.predict(jpg, classes=["wood"])
    assert ev.rows[0]["top"][0] == ["wood", round(float(restricted.probs.max()), 6)]

    # the service
    from fmmc.serve.app import create_app

    with LiveServer(create_app(model)) as url, httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/classify", files={"image": ("big.jpg", jpg.read_bytes(), "image/jpeg")},
                   data={"top_k": str(len(model.labels))})
        assert r.status_code == 200, r.text
        served = {t["label"]: t["prob"] for t in r.json()["top"]}
    assert all(served[lab] == pytest.approx(float(p), abs=0, rel=1e-7) for lab, p in zip(model.labels, single))


def test_jpeg_mask_through_every_entry_point(model, model_dir, tmp_path, capsys):
    img_path = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(img_path)
    want = _jpeg_mask(tmp_path / "mask.jpg")

    # API, with the path or an array of the same values
    pred = model.predict(img_path, mask=tmp_path / "mask.jpg")
    assert np.array_equal(pred.mask, want)
    assert np.array_equal(model.predict(img_path, mask=want).probs, pred.probs)
    raw = np.asarray(Image.open(tmp_path / "mask.jpg").convert("L"))
    assert np.array_equal(model.predict(img_path, mask=raw).probs, pred.probs)
    # the threshold is an option everywhere: a high one gives a smaller region
    assert model.predict(img_path, mask=tmp_path / "mask.jpg", mask_threshold=250).mask.sum() < want.sum()

    # CLI, with --mask-threshold
    assert main(["predict", str(model_dir), str(img_path), "--mask", str(tmp_path / "mask.jpg"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["top"][0]["prob"] == round(pred.confidence, 6)
    saved = tmp_path / "used.png"
    assert main(["predict", str(model_dir), str(img_path), "--mask", str(tmp_path / "mask.jpg"),
                 "--mask-threshold", "250", "--save-mask", str(saved), "--json"]) == 0
    capsys.readouterr()

    # a dataset with a JPEG mask: features, training and validation accept it
    ds = tmp_path / "ds"
    (ds / "images").mkdir(parents=True)
    shutil.copy(img_path, ds / "images" / "a.png")
    shutil.copy(tmp_path / "mask.jpg", ds / "images" / "a_mask.jpg")
    (ds / "metadata.jsonl").write_text(json.dumps({"file_name": "images/a.png", "mask_file_name": "images/a_mask.jpg",
                                                   "label": "wood"}) + "\n")
    from fmmc.data.dataset import load_dataset
    from fmmc.data.regions import load_region
    from fmmc.data.validate import validate_dataset

    (from_ds,), failures = model.predict_regions(load_dataset(ds), progress=False)
    assert not failures and np.array_equal(from_ds.probs, pred.probs)
    assert np.array_equal(load_region(load_dataset(ds)[0])[1], want)  # what describers and baselines see
    n, problems = validate_dataset(ds)
    assert n == 1 and not problems, problems

    # the service, with the same default and the same option
    from fmmc.serve.app import create_app

    with LiveServer(create_app(model)) as url, httpx.Client(base_url=url, timeout=60) as c:
        files = {"image": ("img.png", img_path.read_bytes(), "image/png"),
                 "mask": ("mask.jpg", (tmp_path / "mask.jpg").read_bytes(), "image/jpeg")}
        r = c.post("/v1/classify", files=files, data={"mask_format": "rle"})
        assert r.status_code == 200, r.text
        assert r.json()["confidence"] == pytest.approx(pred.confidence, rel=1e-6)
        r2 = c.post("/v1/classify", files=files, data={"mask_threshold": "250"})
        assert r2.status_code == 200, r2.text


def _tiny_dinov2(path: Path, seed: int, preprocessor: dict | None = None) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       patch_size=14, image_size=56)
    Dinov2Model(cfg).eval().save_pretrained(path)
    if preprocessor is not None:
        (path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    return path


def test_new_weights_at_the_same_path_never_get_old_features(tiny_dataset, tmp_path):
    from fmmc.train.config import TrainConfig
    from fmmc.train.trainer import train

    bb = _tiny_dinov2(tmp_path / "backbone", seed=1)

    def run(name: str, cache: Path) -> dict[str, torch.Tensor]:
        cfg = TrainConfig(data=str(tiny_dataset), out=str(tmp_path / f"run-{name}"), backbone=f"hf:{bb}", image_size=56,
                          streams="vision", epochs=3, lr=1e-3, progress=False, cache_dir=str(cache), seed=0)
        from safetensors.torch import load_file

        return load_file(str(train(cfg) / "model" / "model.safetensors"))

    run("first", tmp_path / "warm")  # fills the cache with the first weights' features
    shutil.rmtree(bb)
    _tiny_dinov2(bb, seed=2)  # a fine-tune / re-download / re-export saved to the same directory
    warm = run("warm", tmp_path / "warm")
    empty = run("empty", tmp_path / "empty")
    assert warm.keys() == empty.keys()
    assert all(torch.equal(warm[k], empty[k]) for k in warm)
    # and the two weight sets live in two cache namespaces
    assert len([d for d in (tmp_path / "warm" / "features").iterdir() if d.is_dir()]) == 2


def test_recorded_preprocessing_wins_over_a_lost_processor_file(tiny_dataset, tmp_path, caplog):
    from fmmc.train.config import TrainConfig
    from fmmc.train.trainer import train

    bb = _tiny_dinov2(tmp_path / "backbone", seed=0, preprocessor={
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "do_normalize": True})
    run = train(TrainConfig(data=str(tiny_dataset), out=str(tmp_path / "run"), backbone=f"hf:{bb}", image_size=56,
                            streams="vision", epochs=2, progress=False, cache_dir=str(tmp_path / "cache")))
    r = Region(image=tiny_dataset / "images" / "wood_000.jpg")
    before = MaterialClassifier.from_pretrained(run / "model", cache_dir=tmp_path / "c1").predict(r.image).probs
    recorded = json.loads((run / "model" / "config.json").read_text())["preprocess"]
    assert recorded["mean"] == [0.5, 0.5, 0.5] and recorded["resample"] == "bilinear"

    (bb / "preprocessor_config.json").unlink()
    caplog.set_level(logging.WARNING)
    after_model = MaterialClassifier.from_pretrained(run / "model", cache_dir=tmp_path / "c2")
    after = after_model.predict(r.image).probs
    assert np.array_equal(after, before)
    assert after_model.encoder.extractor.pre.mean == (0.5, 0.5, 0.5)
    msgs = " ".join(rec.getMessage() for rec in caplog.records)
    assert "trained with" in msgs and "0.5" in msgs


@pytest.mark.parametrize("broken, field", [
    ({"streams": "vision", "taxonomy": "default"}, "head"),
    ({"streams": "vision", "head": {"vision_dim": 4, "text_dim": 0, "num_classes": 3}}, "taxonomy"),
    ({"streams": "vision", "taxonomy": "default", "head": {"vision_dim": 4}}, "num_classes"),
])
def test_damaged_config_names_the_missing_field(model_dir, tmp_path, broken, field):
    d = tmp_path / "m"
    shutil.copytree(model_dir, d)
    (d / "config.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=f"config.json.*{field}"):
        MaterialClassifier.from_pretrained(d)
    assert main(["predict", str(d), str(tmp_path / "x.jpg")]) != 0


def test_config_round_trips_and_overrides_are_checked(model_dir, tmp_path):
    m = MaterialClassifier.from_pretrained(model_dir)
    m.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == json.loads((model_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="unknown model config field"):
        MaterialClassifier.from_pretrained(model_dir, describr="none")


def test_quoted_reply_loses_its_label():
    from fmmc.language.marking import clean_description

    assert clean_description('"Description: brushed steel with fine scratches"') == "brushed steel with fine scratches"
    assert clean_description('Description: "brushed steel"') == "brushed steel"
    assert clean_description("**Description:** matte oak") == "matte oak"
    assert clean_description('a "quoted" word inside') == 'a "quoted" word inside'
