"""Splits that cannot leak (normalised, typos refused, the automatic split by image and group) and models that
answer with the classes they were trained on (predict, predict_regions, classify, grid maps, the service)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fixtures_serve import LiveServer, png_bytes, scene, tiny_model_dir
from PIL import Image

from fmmc.cli.main import main
from fmmc.data.dataset import DatasetError, group_regions, load_dataset, split_regions
from fmmc.data.validate import validate_dataset
from fmmc.taxonomy import load_taxonomy
from fmmc.train.config import TrainConfig
from fmmc.train.trainer import split_for_training

TAX = load_taxonomy("default")
TRAINED = ("wood", "metal", "foliage")  # the classes of fixtures_serve.tiny_model_dir


def write_lines(root: Path, lines: list[dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


# ----- task 1: split values -----
def test_split_values_are_normalised(tmp_path):
    raw = ["Test", "TEST ", "validation", " Valid", "dev", "train", "VAL", None]
    lines = [{"file_name": f"{i}.png", "label": "wood", **({"split": s} if s else {})} for i, s in enumerate(raw)]
    root = write_lines(tmp_path / "ds", lines)
    assert [r.split for r in load_dataset(root)] == ["test", "test", "val", "val", "val", "train", "val", None]
    assert len(load_dataset(root, split="Validation")) == 4 and len(load_dataset(root, split="test")) == 2
    with pytest.raises(DatasetError, match="no split 'tst'.*train, val, test"):
        load_dataset(root, split="tst")
    assert validate_dataset(root, TAX, check_files=False)[1] == []


def test_misspelt_split_is_refused_with_file_and_line(tmp_path, capsys):
    lines = [{"file_name": "a.png", "label": "wood", "split": "train"},
             {"file_name": "b.png", "label": "wood", "split": "tset"}]
    root = write_lines(tmp_path / "ds", lines)
    meta = root / "metadata.jsonl"
    _, problems = validate_dataset(root, TAX, check_files=False)
    assert [p.where for p in problems] == [f"{meta}:2"]
    assert "'tset'" in problems[0].message and "train, val, test" in problems[0].message
    assert main(["validate", str(root), "--no-files"]) == 1
    assert f"{meta}:2: split 'tset'" in capsys.readouterr().out
    with pytest.raises(DatasetError, match=r"metadata.jsonl:2: split 'tset'.*train, val, test"):
        load_dataset(root)
    rc = main(["train", "--data", str(root), "--out", str(tmp_path / "run"), "--streams", "vision", "--quiet"])
    err = capsys.readouterr().err
    assert rc != 0 and f"{meta}:2: split 'tset'" in err and "train, val, test" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model").exists()


def test_group_must_be_a_string_or_integer(tmp_path):
    root = write_lines(tmp_path / "ds", [{"file_name": "a.png", "group": ["x"]}, {"file_name": "b.png", "group": 3}])
    _, problems = validate_dataset(root, TAX, check_files=False)
    assert len(problems) == 1 and problems[0].where.endswith(":1") and "'group'" in problems[0].message


# ----- task 1: the automatic split keeps images and groups on one side -----
def grouped_dataset(root: Path) -> Path:
    """36 photos, 2-4 regions each (boxes); photos 3k..3k+2 of one label share a group (one object)."""
    lines = []
    for p in range(36):
        label = ("wood", "metal", "fabric")[p % 3]
        for k in range(2 + p % 3):
            lines.append({"file_name": f"images/{p:02d}.jpg", "box": [k, k, k + 10, k + 10], "label": label,
                          "id": f"{p}/{k}", **({"group": f"obj{p // 9}-{label}"} if p < 18 else {})})
    return write_lines(root, lines)


@pytest.mark.parametrize("seed", range(6))
def test_automatic_split_never_shares_an_image_or_group(tmp_path, seed):
    root = grouped_dataset(tmp_path / "ds")
    cfg = TrainConfig(data=str(root), val_fraction=0.25, seed=seed)
    train, val = split_for_training(cfg)
    assert len(train) + len(val) == len(load_dataset(root)) and val
    for key in (lambda r: r.image, lambda r: r.extra.get("group")):
        shared = {key(r) for r in train} & {key(r) for r in val} - {None}
        assert not shared
    for label in ("wood", "metal", "fabric"):  # stratified: every label on both sides, about a quarter in val
        n_val = sum(r.label == label for r in val)
        n_all = n_val + sum(r.label == label for r in train)
        assert 0 < n_val < n_all and abs(n_val / n_all - 0.25) < 0.2
    again = split_for_training(cfg)
    assert [r.id for r in again[0]] == [r.id for r in train] and [r.id for r in again[1]] == [r.id for r in val]


def test_groups_join_transitively_through_images(tmp_path):
    lines = [{"file_name": "a.jpg", "group": "g1", "id": "a"}, {"file_name": "b.jpg", "group": "g1", "id": "b1"},
             {"file_name": "b.jpg", "group": "g2", "id": "b2"}, {"file_name": "c.jpg", "group": "g2", "id": "c"},
             {"file_name": "d.jpg", "id": "d1"}, {"file_name": "d.jpg", "id": "d2"}, {"file_name": "e.jpg", "id": "e"}]
    groups = group_regions(load_dataset(write_lines(tmp_path / "ds", lines)))
    assert [[r.id for r in g] for g in groups] == [["a", "b1", "b2", "c"], ["d1", "d2"], ["e"]]


def test_one_region_per_image_splits_as_before(tmp_path):
    lines = [{"file_name": f"{lab}_{i}.jpg", "label": lab} for lab in ("wood", "metal", "fabric") for i in range(10)]
    regions = load_dataset(write_lines(tmp_path / "ds", lines))
    train, val = split_regions(regions, 0.2, seed=0)
    assert (len(train), len(val)) == (24, 6) and {r.label for r in val} == {"wood", "metal", "fabric"}


# ----- task 2: models answer with the classes they saw -----
@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def model(model_dir):
    from fmmc.model.classifier import MaterialClassifier

    return MaterialClassifier.from_pretrained(model_dir)


def outside(probs: np.ndarray) -> np.ndarray:
    keep = np.zeros(len(TAX), dtype=bool)
    keep[TAX.subset(list(TRAINED))] = True
    return np.asarray(probs)[..., ~keep]


def assert_trained_only(probs: np.ndarray) -> None:
    assert np.all(outside(probs) == 0) and np.allclose(np.sum(probs, axis=-1), 1, atol=1e-4)


def assert_full(probs: np.ndarray) -> None:
    assert np.all(np.asarray(probs) > 0) and np.allclose(np.sum(probs, axis=-1), 1, atol=1e-4)


def test_config_records_the_trained_classes(model, model_dir):
    cfg = json.loads((model_dir / "config.json").read_text())
    expected = [n for n in TAX.names if n in TRAINED]
    assert cfg["trained_classes"] == expected and model.trained_classes == tuple(expected)
    assert len(cfg["taxonomy"]["classes"]) == 21


def test_predict_and_predict_regions_default_to_the_trained_classes(model, model_dir):
    img = Image.fromarray(scene())
    assert_trained_only(model.predict(img).probs)
    assert_full(model.predict(img, classes="all").probs)
    assert_full(model.predict(img, classes="ALL").probs)
    chosen = model.predict(img, classes=["glass", "wood"])  # outside the trained classes: the caller's choice
    assert {lab for lab, p in chosen.top(21) if p > 0} == {"glass", "wood"}
    with pytest.raises(ValueError, match="'all'"):
        model.predict(img, classes="everything")
    regions = load_dataset(model_dir.parent.parent / "data")[:4]
    preds, failures = model.predict_regions(regions, progress=False)
    assert not failures
    assert_trained_only(np.stack([p.probs for p in preds]))
    preds_all, _ = model.predict_regions(regions, classes="all", progress=False)
    assert_full(np.stack([p.probs for p in preds_all]))


def test_classify_follows_the_same_default(model):
    from fmmc.model.prediction import RegionInput

    img = Image.fromarray(scene())
    mask = np.zeros((120, 160), dtype=bool)
    mask[:, :80] = True
    default, everything, two = model.classify([RegionInput(img, mask), RegionInput(img, mask, classes="all"),
                                               RegionInput(img, mask, classes=["metal", "glass"])])
    assert_trained_only(default.probs)
    assert_full(everything.probs)
    assert {lab for lab, p in two.top(21) if p > 0} == {"metal", "glass"}


def test_grid_map_follows_the_same_default(model):
    img = Image.fromarray(scene())
    trained_idx = set(TAX.subset(list(TRAINED)))
    mmap = model.segment(img, mode="grid")
    assert set(np.unique(mmap.labels)) <= trained_idx
    assert_trained_only(np.stack([r.probs for r in mmap.regions]))
    everything = model.segment(img, mode="grid", classes="all")
    assert_full(np.stack([r.probs for r in everything.regions]))


def test_cli_predict_classes_all(model, model_dir, tmp_path, capsys):
    path = tmp_path / "scene.png"
    Image.fromarray(scene()).save(path)
    for flag, classes in (([], None), (["--classes", "all"], "all")):
        assert main(["predict", str(model_dir), str(path), "--json", "--top-k", "21", *flag]) == 0
        top = {t["label"]: t["prob"] for t in json.loads(capsys.readouterr().out)["top"]}
        expected = model.predict(path, classes=classes)
        assert top == {lab: round(p, 6) for lab, p in expected.top(21)}
    assert_trained_only(model.predict(path).probs)


def test_top_k_lists_only_the_classes_chosen_among(model, model_dir, tmp_path, capsys):
    """Found trying it as a new user: a model trained on a few classes listed untrained ones at 0.000 in
    `fmmc predict` (top 5) and in Prediction.top, and `--classes metal,wood` listed others at 0.000 too,
    while model(image, top_k=) did not. One rule now: top-k is over the classes the prediction chose among."""
    img = Image.fromarray(scene())
    trained = set(TRAINED)
    assert {lab for lab, _ in model.predict(img).top(21)} == trained
    assert len(model.predict(img).top(21)) == len(trained)
    assert [lab for lab, _ in model.predict(img, classes=["glass", "wood"]).top(5)] in (["glass", "wood"],
                                                                                        ["wood", "glass"])
    assert len(model.predict(img, classes="all").top(21)) == 21
    assert [d["label"] for d in model(img, top_k=21)] == [lab for lab, _ in model.predict(img).top(21)]
    path = tmp_path / "scene.png"
    img.save(path)
    assert main(["predict", str(model_dir), str(path), "--json", "--top-k", "21", "--classes", "glass,wood"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert {t["label"] for t in row["top"]} == {"glass", "wood"} == {t["label"] for t in row["scores"]}
    assert main(["predict", str(model_dir), str(path), "--top-k", "21"]) == 0
    assert {line.split()[0] for line in capsys.readouterr().out.strip().splitlines()} == trained


def test_service_defaults_to_the_trained_classes(model):
    import httpx

    pytest.importorskip("fastapi")
    from fmmc.serve import ServeSettings, create_app

    app = create_app(model, ServeSettings(timeout=60))
    files = {"image": ("scene.png", png_bytes(scene()), "image/png")}
    with LiveServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        def probs(**data: str) -> np.ndarray:
            r = client.post("/v1/classify", files=files, data={"top_k": "21", **data})
            assert r.status_code == 200, r.text
            by_name = {t["label"]: t["prob"] for t in r.json()["top"]}
            return np.array([by_name[n] for n in TAX.names])

        assert_trained_only(probs())
        assert_full(probs(classes="all"))
        assert set(np.flatnonzero(probs(classes="glass, wood"))) == set(TAX.subset(["glass", "wood"]))
        seg = client.post("/v1/segment", files=files, data={"mode": "grid"})
        assert seg.status_code == 200, seg.text
        assert {e["label"] for e in seg.json()["legend"]} <= set(TRAINED)
        seg_all = client.post("/v1/segment", files=files, data={"mode": "grid", "classes": "all"})
        assert seg_all.status_code == 200, seg_all.text
        bad = client.post("/v1/classify", files=files, data={"classes": "unobtainium"})
        assert bad.status_code == 422


def test_old_config_without_trained_classes_uses_the_whole_taxonomy(model, model_dir, tmp_path):
    from fmmc.model.classifier import MaterialClassifier

    old = tmp_path / "old"
    shutil.copytree(model_dir, old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["trained_classes"]
    (old / "config.json").write_text(json.dumps(cfg))
    legacy = MaterialClassifier.from_pretrained(old)
    assert legacy.config.trained_classes is None and legacy.trained_classes == TAX.names
    img = Image.fromarray(scene())
    assert_full(legacy.predict(img).probs)
    assert np.allclose(legacy.predict(img).probs, model.predict(img, classes="all").probs, atol=1e-6)
    cfg["trained_classes"] = ["wood", "mithril"]
    (old / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="mithril"):
        MaterialClassifier.from_pretrained(old)
