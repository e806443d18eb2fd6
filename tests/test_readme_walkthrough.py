"""The README's "Using it" commands in order, through ``main(argv)``, from a clean temporary home (issue 10).

The hub-backed defaults (DINOv2, CLIP) are swapped for the offline built-ins, as a user without the hub
would; everything else is the README's command line. The model is two-stream with the default describer
(``metadata``), so the new photo needs ``--description`` or ``--describer``, as the README says.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_dataset
from PIL import Image

from fmmc.cli.main import main

OFFLINE = ["--backbone", "builtin:efficientnet-lite0", "--text-encoder", "builtin:minilm"]
FAST = ["image_size=64", "epochs=3", "progress=false"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FMMC_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    return tmp_path


def test_readme_commands_in_order(home, capsys):
    pytest.importorskip("efficientnet_lite_pytorch")
    write_dataset(home / "my_dataset", n_per_class=6, size=64)
    photos = home / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (300, 260, 3), dtype=np.uint8)).save(photos / f"p{i}.jpg")
    photo = photos / "p0.jpg"
    region = np.zeros((300, 260), np.uint8)
    region[30:200, 40:220] = 255
    Image.fromarray(region).save(home / "region.png")

    assert main(["list", "backbones"]) == 0
    assert "builtin:efficientnet-lite0" in capsys.readouterr().out
    assert main(["validate", "my_dataset"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", "my_dataset", "--out", "runs/a", *OFFLINE, *FAST]) == 0
    assert main(["train", "--data", "my_dataset", "--out", "runs/b", "--streams", "vision", "lr=1e-3", *OFFLINE,
                 *FAST]) == 0
    capsys.readouterr()
    summary = json.loads((home / "runs/a/summary.json").read_text())
    assert any("description" in n for n in summary.get("notes", []))  # the warning the README describes

    # a two-stream metadata model on a new photo: refused with the fix, then with --description / --describer
    assert main(["predict", "runs/a/model", str(photo), "--box", "40,30,220,260", "--top-k", "3"]) == 1
    assert "--description" in capsys.readouterr().err
    assert main(["predict", "runs/a/model", str(photo), "--box", "40,30,220,260", "--top-k", "3",
                 "--description", "glossy white glaze"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    assert main(["predict", "runs/a/model", str(photo), "--mask", "region.png", "--json",
                 "--description", "glossy white glaze"]) == 0
    assert json.loads(capsys.readouterr().out)["description"] == "glossy white glaze"
    assert main(["predict", "runs/a/model", "photos/", "--out", "preds.jsonl", "--describer", "none", "--quiet"]) == 0
    assert len((home / "preds.jsonl").read_text().splitlines()) == 2
    assert main(["predict", "runs/b/model", str(photo), "--device", "auto", "--threads", "1"]) == 0
    capsys.readouterr()

    # an imagefolder tree: train on it, or convert it
    for label in ("metal", "wood"):
        (home / "tree" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(home / "tree" / label / f"{i}.png")
    assert main(["train", "--data", "folder:tree", "--out", "runs/c", "--streams", "vision", *OFFLINE, *FAST]) == 0
    assert main(["convert", "folder:tree", "my_photos"]) == 0
    assert main(["validate", "my_photos"]) == 0

    # the Python API lines
    from fmmc import MaterialClassifier

    model = MaterialClassifier.from_pretrained("runs/a/model")
    assert model.config.needs_description
    pred = model.predict(str(photo), box=(40, 30, 220, 260), description="glossy white glaze")
    assert len(pred.top(3)) == 3
    preds = MaterialClassifier.from_pretrained("runs/b/model").predict(
        [str(photo), Image.open(photo), np.asarray(Image.open(photo))], boxes=[None, (0, 0, 64, 64), None])
    assert len(preds) == 3 and np.array_equal(preds[0].probs, preds[2].probs)
    # nothing was written outside the temporary home (the cache went to $HOME/.cache/fmmc)
    assert (home / "home" / ".cache" / "fmmc" / "features").is_dir()
    assert Path.cwd() == home
