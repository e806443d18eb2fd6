"""Head recipes (issue 13, item 1): standardisation, linear head, class-balanced loss, label smoothing and
``recipe=auto`` (cross-validation on the training split only), through ``train()`` on a tiny DINOv2."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import write_dataset
from safetensors.torch import load_file

from fmmc.cli.main import main
from fmmc.core.config import load_config
from fmmc.data.dataset import load_dataset
from fmmc.model.classifier import MaterialClassifier
from fmmc.model.head import MaterialHead
from fmmc.train import recipes
from fmmc.train.config import TrainConfig
from fmmc.train.feature_data import HeadData
from fmmc.train.feature_rows import FeatureRows
from fmmc.train.trainer import split_for_training, train

CLASSES = ("metal", "wood", "fabric")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recipes_cache")


def _cfg(dino: Path, data: Path, out: Path, cache: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), out=str(out), backbone=f"hf:{dino}", image_size=56, streams="vision",
                progress=False, cache_dir=str(cache))
    return TrainConfig(**{**base, **kw})


def _head_state(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "model.safetensors"))


def _probs(run: Path, data: Path, classes: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities of the 3 classes [N, 3], true class index [N]) of every region of ``data``, chosen among
    the trained classes (``classes="all"``: among the whole taxonomy)."""
    model = MaterialClassifier.from_pretrained(run / "model")
    regions = load_dataset(data)
    preds, failures = model.predict_regions(regions, classes=classes, progress=False)
    assert not failures
    cols = [model.labels.index(c) for c in CLASSES]
    return np.stack([p.probs[cols] for p in preds]), np.array([CLASSES.index(r.label) for r in regions])


def test_paper_default_is_unchanged(tiny_dinov2, tmp_path, cache):
    """The default recipe gives the head weights it gave before recipes existed (stored from that code:
    this dataset, seed 1, 15 epochs of batch 8)."""
    cfg = _cfg(tiny_dinov2, write_dataset(tmp_path / "ds", n_per_class=8, seed=3, size=64, describe=False),
               tmp_path / "run", cache, epochs=15, batch_size=8, seed=1)
    assert (cfg.recipe, cfg.hidden, cfg.standardize, cfg.lr, cfg.class_weights, cfg.label_smoothing) == \
        ("paper", 512, False, 5e-5, False, 0.0)
    run = train(cfg)
    st = _head_state(run)
    assert sorted(st) == ["head.mlp.0.bias", "head.mlp.0.weight", "head.mlp.3.bias", "head.mlp.3.weight",
                          "head.temperature", "head.vis_norm.bias", "head.vis_norm.weight"]
    stored = {"head.mlp.0.weight": (3.420203096595287, 13.06611446224091),
              "head.mlp.0.bias": (2.0335198790198774, 2.321095161772492),
              "head.mlp.3.weight": (-10.199707017746732, 2.656732275900763),
              "head.vis_norm.bias": (0.02169401868013665, 0.00917770674566721)}
    for name, (total, norm) in stored.items():
        assert float(st[name].double().sum()) == pytest.approx(total, abs=1e-4), name
        assert float(st[name].double().norm()) == pytest.approx(norm, abs=1e-4), name
    np.testing.assert_allclose(st["head.mlp.0.bias"][:3].numpy(), [-0.04857155, -0.08527221, -0.15304995], atol=1e-5)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_epoch"] == 15 and summary["recipe"]["name"] == "paper"
    assert "recipe=auto chooses them" in summary["recipe"]["why"]


def test_auto_learns_a_small_set_the_paper_recipe_leaves_uniform(tiny_dinov2, tmp_path, cache, caplog):
    """18 images, 15 epochs: the paper's recipe (15 steps at lr 5e-5) stays near uniform; auto does not, and
    says what it chose and why (log, summary.json, train_config.yaml)."""
    data = write_dataset(tmp_path / "ds", n_per_class=6, seed=11, size=64, describe=False)
    test = write_dataset(tmp_path / "test", n_per_class=4, seed=12, size=64, describe=False)
    paper = train(_cfg(tiny_dinov2, data, tmp_path / "paper", cache, epochs=15))
    p_paper, y = _probs(paper, test)
    assert p_paper.max(1).mean() < 0.45  # 3 classes: near 1/3
    with caplog.at_level(logging.INFO, logger="fmmc.train.trainer"):
        auto = train(_cfg(tiny_dinov2, data, tmp_path / "auto", cache, epochs=15, recipe="auto"))
    p_auto, y = _probs(auto, test)
    assert (p_auto.argmax(1) == y).mean() >= 0.9
    assert p_auto.max(1).mean() > 0.7
    rec = json.loads((auto / "summary.json").read_text())["recipe"]
    assert rec["name"] == "auto" and rec["folds"] == 5 and rec["cv_rows"] == rec["train_rows"] == 15
    assert set(rec["chosen"]) == {"hidden", "standardize", "lr", "weight_decay", "epochs"}
    assert rec["settings"][0]["cv_acc"] >= 0.9 and len(rec["settings"]) == 7
    assert "recipe=auto chose" in caplog.text and rec["why"] in caplog.text
    written = yaml.safe_load((auto / "train_config.yaml").read_text())
    assert {k: written[k] for k in rec["chosen"]} == rec["chosen"]  # the run is reproducible from its config
    rerun = train(load_config(TrainConfig, auto / "train_config.yaml", [f"out={tmp_path / 'again'}"]))
    assert all(torch.equal(a, b) for a, b in zip(_head_state(auto).values(), _head_state(rerun).values()))


def _with_splits(root: Path, poison: bool) -> Path:
    """24 train regions, 3 val, 3 test (split fields); ``poison``: val and test labels all wrong."""
    data = write_dataset(root, n_per_class=10, seed=21, size=64, describe=False)
    lines = [json.loads(x) for x in (data / "metadata.jsonl").read_text().splitlines()]
    for i, x in enumerate(lines):
        x["split"] = "val" if i % 10 == 8 else "test" if i % 10 == 9 else "train"
        if poison and x["split"] != "train":
            x["label"] = CLASSES[(CLASSES.index(x["label"]) + 1) % 3]
    (data / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return data


def test_cross_validation_never_reads_val_or_test(tiny_dinov2, tmp_path, cache):
    runs = [train(_cfg(tiny_dinov2, _with_splits(tmp_path / f"ds{p}", p), tmp_path / f"run{p}", cache,
                       recipe="auto", cv_folds=4)) for p in (False, True)]
    clean, poisoned = (json.loads((r / "summary.json").read_text()) for r in runs)
    assert clean["n_train"] == 24 and clean["n_val"] == 3
    assert clean["recipe"]["settings"] == poisoned["recipe"]["settings"]
    assert clean["recipe"]["chosen"] == poisoned["recipe"]["chosen"]
    a, b = (_head_state(r) for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # no early stop / choice on val
    assert clean["val_acc"] == 1.0 and poisoned["val_acc"] == 0.0  # the poison did reach validation


def test_standardized_linear_head_saves_and_reloads(tiny_dinov2, tmp_path, cache):
    data = write_dataset(tmp_path / "ds", n_per_class=6, seed=31, size=64, describe=False)
    cfg = _cfg(tiny_dinov2, data, tmp_path / "run", cache, hidden=0, standardize=True, lr=1e-2, epochs=60)
    run = train(cfg)
    model = MaterialClassifier.from_pretrained(run / "model")
    assert model.head.hidden == 0 and len(model.head.mlp) == 1 and model.head.standardize
    conf = json.loads((run / "model" / "config.json").read_text())["head"]
    assert conf["hidden"] == 0 and conf["standardize"] is True
    train_r, _ = split_for_training(cfg)
    feats = model.encoder.encode_regions(train_r, progress=False).vis.double()
    torch.testing.assert_close(model.head.in_mean.double(), feats.mean(0), atol=1e-4, rtol=1e-5)  # train split only
    torch.testing.assert_close(model.head.in_std.double(), feats.std(0, unbiased=False), atol=1e-4, rtol=1e-4)
    p1, y = _probs(run, data)
    assert (p1.argmax(1) == y).mean() >= 0.9
    model.save_pretrained(tmp_path / "copy")
    again = MaterialClassifier.from_pretrained(tmp_path / "copy")
    regions = load_dataset(data)
    q1, _ = model.predict_regions(regions, progress=False)
    q2, _ = again.predict_regions(regions, progress=False)
    assert all(np.array_equal(a.probs, b.probs) for a, b in zip(q1, q2))
    with pytest.raises(ValueError, match="standardize=False"):
        MaterialHead(4, 0, 3, streams="vision").set_standardization(torch.zeros(4), torch.ones(4))


def test_models_saved_before_standardisation_still_load(tiny_dinov2, tmp_path, cache):
    run = train(_cfg(tiny_dinov2, write_dataset(tmp_path / "ds", n_per_class=3, seed=41, size=64, describe=False),
                     tmp_path / "run", cache, epochs=5))
    cfg_file = run / "model" / "config.json"
    before = MaterialClassifier.from_pretrained(run / "model")
    conf = json.loads(cfg_file.read_text())
    del conf["head"]["standardize"]  # as an older fmmc wrote it
    cfg_file.write_text(json.dumps(conf))
    after = MaterialClassifier.from_pretrained(run / "model")
    assert not after.head.standardize and not hasattr(after.head, "in_mean")
    x = torch.randn(5, before.head.vision_dim)
    assert torch.equal(before.logits(x, None), after.logits(x, None))


def test_class_balanced_loss_lifts_the_minority_classes(tiny_dinov2, tmp_path, cache):
    data = write_dataset(tmp_path / "ds", n_per_class=12, seed=51, size=64, describe=False)
    lines = [json.loads(x) for x in (data / "metadata.jsonl").read_text().splitlines()]
    keep = [x for x in lines if x["label"] == "metal" or int(x["file_name"][-7:-4]) < 3]  # 12 metal, 3, 3
    (data / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in keep))
    probs = {}
    for balanced in (False, True):
        run = train(_cfg(tiny_dinov2, data, tmp_path / f"run{balanced}", cache, hidden=0, lr=3e-3, epochs=20,
                         val_fraction=0.0, class_weights=balanced, calibrate=False))
        p, y = _probs(run, data)
        probs[balanced] = p[:, 1:].sum(1).mean()  # mass on wood + fabric
    assert probs[True] > probs[False] + 0.05
    w = recipes.class_weights(torch.tensor([0] * 12 + [1] * 3 + [2] * 3), 4)
    torch.testing.assert_close(w, torch.tensor([0.375, 1.5, 1.5, 0.0]))  # n / (k * count); absent class 0


def test_label_smoothing_caps_confidence(tiny_dinov2, tmp_path, cache):
    data = write_dataset(tmp_path / "ds", n_per_class=6, seed=61, size=64, describe=False)
    top = {}
    for ls in (0.0, 0.3):
        run = train(_cfg(tiny_dinov2, data, tmp_path / f"run{ls}", cache, hidden=0, standardize=True, lr=3e-2,
                         epochs=150, val_fraction=0.0, label_smoothing=ls, calibrate=False))
        p, y = _probs(run, data, classes="all")
        assert (p.argmax(1) == y).mean() == 1.0
        top[ls] = p.max(1).mean()
    # smoothed targets: 0.3 spread over the 21 classes, 0.714 on the true one, which the head approaches
    assert top[0.0] > 0.97 and 0.6 < top[0.3] < 0.8
    with pytest.raises(ValueError, match="label_smoothing=1.5"):
        recipes.loss_function(TrainConfig(label_smoothing=1.5), torch.tensor([0]), 2)


def test_folds_are_stratified_and_bad_recipes_fail_in_one_line(tmp_path):
    y = torch.tensor([0] * 7 + [1] * 5 + [2] * 3)
    folds = recipes.stratified_folds(y, 3, seed=0)
    for c in range(3):
        counts = torch.bincount(folds[y == c], minlength=3)
        assert counts.max() - counts.min() <= 1
    assert torch.bincount(folds).tolist() == [5, 5, 5]
    sub = recipes.stratified_subsample(torch.tensor([0] * 80 + [1] * 20), 10, seed=0)
    assert torch.bincount(torch.tensor([0] * 80 + [1] * 20)[sub]).tolist() == [8, 2]
    with pytest.raises(ValueError, match="recipe='magic': choose paper"):
        train(TrainConfig(data=str(tmp_path), out=str(tmp_path / "r"), recipe="magic"))
    with pytest.raises(ValueError, match="recipe=auto .* needs mode=head"):
        train(TrainConfig(data=str(tmp_path), out=str(tmp_path / "r"), recipe="auto", mode="full"))


def test_cli_reports_the_choice_and_too_small_sets_fall_back(tiny_dinov2, tmp_path, cache, capsys):
    data = write_dataset(tmp_path / "ds", n_per_class=4, seed=71, size=64, describe=False)
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--backbone", f"hf:{tiny_dinov2}",
                 "--streams", "vision", "--quiet", "image_size=56", "recipe=auto", "cv_folds=3",
                 f"cache_dir={cache}"]) == 0
    out = capsys.readouterr().out
    assert "recipe=auto chose" in out and "3-fold CV on the" in out
    one = HeadData(FeatureRows.from_tensor(torch.randn(3, 4)), None, [0, 1, 2], [])
    choice = recipes.choose_recipe(TrainConfig(recipe="auto", streams="vision"), one, torch.tensor([2, 2, 2]), 3)
    assert "too few to cross-validate" in choice.reason and choice.report["asked"] == "auto"
    assert choice.values["lr"] == 5e-5 and not choice.keep_last
