"""Knobs users reach for: ``--device`` (clear errors for a device that is not there), ``--threads`` /
``FMMC_THREADS`` (one rule, capped at the CPUs available), ``model.predict([...])`` batched, and training
from / converting an imagefolder tree (``folder:DIR``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures_serve import texture, tiny_model_dir
from PIL import Image

from fmmc.cli.main import main
from fmmc.core import threads
from fmmc.core.device import resolve_device
from fmmc.model.classifier import MaterialClassifier
from fmmc.model.prediction import Prediction

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
FAST = ["--backbone", "builtin:efficientnet-lite0", "--streams", "vision", "--epochs", "2", "--quiet"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory)  # EfficientNet-Lite0 at 128 px, vision only, wood/metal/foliage


@pytest.fixture(scope="module")
def model(model_dir):
    return MaterialClassifier.from_pretrained(model_dir, cache_dir=None)


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """An imagefolder tree: ``<class>/*.jpg``, 4 small photos per class."""
    root = tmp_path_factory.mktemp("photos")
    for label in ("wood", "metal", "foliage"):
        (root / label).mkdir()
        for i in range(4):
            Image.fromarray(texture(label, (64, 48), seed=7 * i + len(label))).save(root / label / f"{i}.jpg")
    return root


# ------------------------------------------------------------------------------------------ --device
@NO_CUDA
def test_resolve_device_names_the_fix():
    with pytest.raises(ValueError, match="--device cpu or --device auto") as e:
        resolve_device("cuda")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu")
    assert resolve_device("auto") in ("cpu", "mps") and resolve_device(None) == resolve_device("auto")
    assert resolve_device(" CPU ") == "cpu"
    if not torch.backends.mps.is_available():
        with pytest.raises(ValueError, match="MPS.*--device cpu"):
            resolve_device("mps")


@NO_CUDA
def test_predict_device_cuda_is_one_line(model_dir, tmp_path, capsys):
    img = tmp_path / "wood.jpg"
    Image.fromarray(texture("wood", (64, 48), seed=1)).save(img)
    assert main(["predict", str(model_dir), str(img), "--device", "cuda"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("fmmc predict: error:") and "--device cpu" in err and "auto" in err
    for device in ("cpu", "auto"):
        assert main(["predict", str(model_dir), str(img), "--device", device, "--json"]) == 0
        assert json.loads(capsys.readouterr().out.strip())["label"]


def test_device_flag_on_segment_and_serve():
    from fmmc.cli.main import build_parser

    parser = build_parser()
    assert parser.parse_args(["segment", "m", "x.jpg", "--device", "auto"]).device == "auto"
    assert parser.parse_args(["serve", "m", "--device", "cuda:1"]).device == "cuda:1"


# ----------------------------------------------------------------------------------------- --threads
def test_configure_threads_sets_torch_and_reads_env(keep_threads, monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    assert threads.configure_threads(1) == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv(threads.THREADS_ENV, "1")
    torch.set_num_threads(2)
    assert threads.configure_threads() == 1 and torch.get_num_threads() == 1
    monkeypatch.setenv(threads.THREADS_ENV, "lots")
    with pytest.raises(ValueError, match="FMMC_THREADS"):
        threads.configure_threads()
    with pytest.raises(ValueError, match="--threads"):
        threads.configure_threads(0)


def test_default_threads_capped_at_available_cpus(keep_threads, monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: 1)
    torch.set_num_threads(2)
    assert threads.configure_threads() == 1 and torch.get_num_threads() == 1
    assert threads.available_cpus() == 1


def test_threads_flag_reaches_torch(model_dir, tmp_path, keep_threads, monkeypatch, capsys):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    img = tmp_path / "wood.png"
    Image.fromarray(texture("wood", (64, 48), seed=2)).save(img)
    torch.set_num_threads(2)
    assert main(["predict", str(model_dir), str(img), "--threads", "1"]) == 0  # after the subcommand
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    assert main(["--threads", "1", "predict", str(model_dir), str(img)]) == 0  # before it
    assert torch.get_num_threads() == 1


def test_importing_fmmc_leaves_threads_alone():
    code = ("import torch; n = torch.get_num_threads(); import fmmc, fmmc.model.classifier, fmmc.core.threads; "
            "from fmmc.cli.main import build_parser; build_parser(); assert torch.get_num_threads() == n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "FMMC_THREADS": "1"})


# ---------------------------------------------------------------------------------- predict([...])
def test_predict_list_equals_single_calls(model, model_dir, tmp_path, keep_threads):
    torch.set_num_threads(1)  # bit-for-bit: one thread (more may split a batched forward differently)
    path = tmp_path / "wood.png"
    Image.fromarray(texture("wood", (128, 96), seed=3)).save(path)
    images = [path, Image.fromarray(texture("metal", (160, 120), seed=4)), texture("foliage", (96, 96), seed=5),
              str(path)]
    boxes = [None, (0, 0, 80, 60), None, (10, 10, 60, 50)]
    single = [model.predict(im, box=b) for im, b in zip(images, boxes)]
    many = model.predict(images, boxes=boxes)
    assert isinstance(single[0], Prediction) and isinstance(many, list) and len(many) == len(images)
    for a, b in zip(single, many):
        assert np.array_equal(a.probs, b.probs) and a.id == b.id
        assert (a.mask is None and b.mask is None) or np.array_equal(a.mask, b.mask)
    assert model.predict([]) == []


def test_predict_list_is_one_classify_call(model, monkeypatch):
    calls = []
    real = model.classify
    monkeypatch.setattr(model, "classify", lambda items: calls.append(len(items)) or real(items))
    model.predict([texture("wood", (64, 48), 1), texture("metal", (64, 48), 2), texture("wood", (64, 48), 3)])
    assert calls == [3]


def test_predict_list_argument_errors(model):
    imgs = [texture("wood", (64, 48), 1), texture("metal", (64, 48), 2)]
    with pytest.raises(ValueError, match="boxes= has 1 entries for 2 images"):
        model.predict(imgs, boxes=[None])
    with pytest.raises(ValueError, match="masks= must be a list"):
        model.predict(imgs, masks=np.ones((48, 64), bool))
    with pytest.raises(ValueError, match="takes boxes="):
        model.predict(imgs, box=(0, 0, 10, 10))
    with pytest.raises(ValueError, match="one image"):
        model.predict(imgs, point=(3, 3))
    with pytest.raises(ValueError, match="go with a list of images"):
        model.predict(imgs[0], masks=[None])


# ------------------------------------------------------------------------------- folder:DIR trees
def test_train_from_folder_spec(photos, tmp_path, keep_threads):
    run = tmp_path / "run"
    rc = main(["train", "--data", f"folder:{photos}", "--out", str(run), *FAST, "--threads", "1",
               "image_size=64", f"cache_dir={tmp_path / 'cache'}"])
    assert rc == 0
    model = MaterialClassifier.from_pretrained(run / "model")
    assert set(model.trained_classes) == {"wood", "metal", "foliage"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["n_train"] + summary["n_val"] == 12


def test_train_from_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["train", "--data", f"folder:{tmp_path / 'nope'}", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_convert_folder_writes_a_valid_dataset(photos, tmp_path, capsys):
    out = tmp_path / "ds"
    assert main(["convert", f"folder:{photos}", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and {ln["label"] for ln in lines} == {"wood", "metal", "foliage"}
    for ln in lines:  # hard links inside the dataset: self-contained, no extra disk space, confinement holds
        assert ln["file_name"] == f"images/{ln['id']}"
        assert (out / ln["file_name"]).samefile(photos / ln["id"])
    assert main(["validate", str(out)]) == 0
    # --images refer names the photos where they are: readable only with the opt-in
    ref = tmp_path / "ref"
    assert main(["convert", f"folder:{photos}", str(ref), "--images", "refer"]) == 0
    first = json.loads((ref / "metadata.jsonl").read_text().splitlines()[0])
    assert first["file_name"].startswith("../") and (ref / first["file_name"]).resolve() == (photos / first["id"]).resolve()
    assert main(["validate", str(ref)]) == 1 and "outside the dataset folder" in capsys.readouterr().out
    assert main(["validate", str(ref), "--allow-outside-paths"]) == 0

    before = (out / "metadata.jsonl").read_text()
    capsys.readouterr()
    assert main(["convert", f"folder:{photos}", str(out)]) == 1
    assert "--force" in capsys.readouterr().err and (out / "metadata.jsonl").read_text() == before
    assert main(["convert", f"folder:{photos}", str(out), "--force"]) == 0


def test_convert_never_replaces_a_users_file_without_force(photos, tmp_path, capsys):
    """Found trying it as a new user: a file of the user's at OUT/images/<class>/<name> was replaced by a
    hard link to the photo (its content gone) without --force."""
    out = tmp_path / "mine"
    first = sorted(p.relative_to(photos) for p in photos.rglob("*.jpg"))[0]
    theirs = out / "images" / first
    theirs.parent.mkdir(parents=True)
    theirs.write_text("USER DATA")
    assert main(["convert", f"folder:{photos}", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(theirs) in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert theirs.read_text() == "USER DATA" and not (out / "metadata.jsonl").exists()
    assert sorted(p.name for p in (out / "images").rglob("*") if p.is_file()) == [first.name]  # nothing added
    assert main(["convert", f"folder:{photos}", str(out), "--force"]) == 0  # asked: replaced
    assert theirs.samefile(photos / first)


def test_folder_spec_in_features_validate_and_predict(photos, tmp_path, capsys):
    """Found trying it as a new user: folder:DIR worked for train and eval only; features, validate and
    predict said "folder:DIR/metadata.jsonl not found" or "no such image". features now reads it as train
    does (same regions, same cache), validate and predict say what to do instead."""
    spec = f"folder:{photos}"
    cache = tmp_path / "cache"
    assert main(["features", spec, "--backbone", "builtin:efficientnet-lite0", "--image-size", "64",
                 "--cache-dir", str(cache), "--quiet"]) == 0
    assert "features: 12 extracted" in capsys.readouterr().out
    assert main(["features", spec, "--backbone", "builtin:efficientnet-lite0", "--split", "train"]) == 1
    assert "no splits" in capsys.readouterr().err
    assert main(["validate", spec]) == 1
    assert f"fmmc convert {spec} OUT" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", "--data", spec, "--out", str(run), "--backbone", "builtin:efficientnet-lite0", "--streams",
                 "vision", "--epochs", "1", "image_size=64", f"cache_dir={cache}", "--quiet"]) == 0
    assert main(["predict", str(run), spec]) == 1
    assert f"fmmc predict MODEL {photos}" in capsys.readouterr().err


def test_convert_copy_and_bad_spec(photos, tmp_path, capsys):
    out = tmp_path / "copied"
    assert main(["convert", f"folder:{photos}", str(out), "--copy"]) == 0
    lines = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert all(ln["file_name"].startswith("images/") and (out / ln["file_name"]).is_file() for ln in lines)
    assert main(["validate", str(out)]) == 0
    assert main(["convert", str(photos), str(tmp_path / "x")]) == 1
    assert "folder:" in capsys.readouterr().err


def test_serve_device_reaches_from_pretrained():
    from fmmc.cli.main import build_parser
    from fmmc.cli.serve_cmd import settings_from_args

    parser = build_parser()
    assert settings_from_args(parser.parse_args(["serve", "m", "--device", "auto"])).model_overrides == {"device": "auto"}
    assert "device" not in settings_from_args(parser.parse_args(["serve", "m"])).model_overrides  # cpu default
