"""`fmmc eval` and `fmmc compare` end to end on a tiny trained model (random DINOv2 + random CLIP text tower)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_eval import (
    make_tiny_clip,
    make_tiny_dinov2,
    shared,
    write_dms,
    write_fmd,
    write_folder,
    write_train,
)

from fmmc.cli.main import main

STATS = "fmmc.evaluation.toydata:build_stats_describer"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval_world")
    w = {"root": root, "train": write_train(root / "train", n=6), "fmd": write_fmd(root / "fmd", n=3),
         "dms": write_dms(root / "dms", n=2), "folder": write_folder(root / "google"),
         "dino": make_tiny_dinov2(root / "dino"), "clip": shared("clip", make_tiny_clip), "cache": root / "cache"}
    (root / "tax3.json").write_text(json.dumps({"name": "three", "classes": ["metal", "wood", "fabric"]}))
    rc = main(["train", "--data", str(w["train"]), "--out", str(root / "run"), "--backbone", f"hf:{w['dino']}",
               "--text-encoder", f"hf:{w['clip']}", "--describer", "metadata", "--epochs", "20", "--quiet",
               "image_size=56", f"cache_dir={w['cache']}", "lr=1e-3", f"taxonomy={root / 'tax3.json'}"])
    assert rc == 0
    w["model"] = root / "run" / "model"
    return w


def _eval(w: dict[str, Path], data: str, out: Path, *extra: str) -> int:
    return main(["eval", str(w["model"]), "--data", data, "--out", str(out), "--quiet", "--cache-dir",
                 str(w["cache"]), "--bootstrap", "200", *extra])


def test_eval_fmd(world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "fmd"
    assert _eval(world, f"fmd:{world['fmd']}", out, "--describer", STATS) == 0
    printed = capsys.readouterr().out
    assert "acc [95% CI]" in printed and "mIoU" in printed and f"written to {out}" in printed
    assert {p.name for p in out.iterdir()} == {".fmmc-output.json", "metrics.json", "predictions.jsonl", "report.md", "confusion.png",
                                               "reliability.png"}
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 9 and sorted(m["classes_present"]) == ["fabric", "metal", "wood"]
    for key in ("acc", "macc", "miou", "top3", "top5", "ece", "ci95", "per_class", "calibration", "confusion"):
        assert key in m
    assert 0 <= m["ci95"]["acc"][0] <= m["acc"] <= m["ci95"]["acc"][1] <= 1
    assert m["model_config"]["describer"] == STATS and m["model_config"]["kind"] == "fmmc"
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 9 and all(r["description"].startswith("a ") for r in rows)
    assert all(set(r) >= {"id", "image", "mask", "true", "pred", "confidence", "correct", "top"} for r in rows)
    report = (out / "report.md").read_text()
    for part in ("# Evaluation", "## Per class", "![confusion matrix](confusion.png)",
                 "![reliability diagram](reliability.png)", "## Resolved configuration", "describer: " + STATS):
        assert part in report
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_dms_folder_and_jsonl(world: dict[str, Path], tmp_path: Path):
    dms = f"dms:{world['dms']}"
    assert _eval(world, dms, tmp_path / "dms", "--describer", STATS) == 0
    m = json.loads((tmp_path / "dms/metrics.json").read_text())
    assert m["n"] == 4 and m["test_set"]["stats"]["unmapped"] == {"Sky": 2}
    assert "Sky (2)" in (tmp_path / "dms/report.md").read_text()
    assert (world["cache"] / "dms-masks").is_dir()  # masks materialised under --cache-dir
    assert _eval(world, f"folder:{world['folder']}", tmp_path / "g", "--describer", STATS, "--classes", "all") == 0
    m = json.loads((tmp_path / "g/metrics.json").read_text())
    assert m["classes_mode"] == "all" and m["scored_classes"] == ["metal", "wood", "fabric"]
    # the training set itself (metadata.jsonl, descriptions in the data): the model's own describer works
    assert _eval(world, str(world["train"]), tmp_path / "t") == 0
    assert json.loads((tmp_path / "t/metrics.json").read_text())["n"] == 18


def test_eval_errors_write_nothing(world: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "out"
    # metadata describer, but FMD has no descriptions
    assert _eval(world, f"fmd:{world['fmd']}", out) == 1
    assert "--describer" in capsys.readouterr().err and not out.exists()
    # wrong layout
    assert _eval(world, f"fmd:{world['folder']}", out) == 1
    assert "not an FMD folder" in capsys.readouterr().err and not out.exists()
    # test classes the model's taxonomy does not have
    glass = write_fmd(tmp_path / "fmd_glass", classes=("metal", "glass"), n=1)
    assert _eval(world, f"fmd:{glass}", out, "--describer", STATS) == 1
    err = capsys.readouterr().err
    assert "cannot predict test class(es) 'glass' (1 regions)" in err and "taxonomy 'three'" in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))
    # an image without a mask names the file
    (world["fmd"] / "mask/wood/wood_002.jpg").rename(tmp_path / "moved.jpg")
    try:
        assert _eval(world, f"fmd:{world['fmd']}", out, "--describer", STATS) == 1
        assert "image/wood/wood_002.jpg: no mask" in capsys.readouterr().err and not out.exists()
    finally:
        (tmp_path / "moved.jpg").rename(world["fmd"] / "mask/wood/wood_002.jpg")


def test_eval_replaces_old_result_and_compare(world: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "e"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    # a folder holding a user's files is refused before any work, and left as it was
    assert _eval(world, f"fmd:{world['fmd']}", out, "--describer", STATS, "--no-plots") == 1
    assert "holds files fmmc did not write" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert _eval(world, f"fmd:{world['fmd']}", out, "--describer", STATS, "--no-plots") == 0
    first = (out / "predictions.jsonl").read_text()
    # an earlier eval result is replaced only with --overwrite
    assert _eval(world, f"fmd:{world['fmd']}", out, "--describer", STATS, "--no-plots") == 1
    assert "--overwrite" in capsys.readouterr().err
    assert _eval(world, f"fmd:{world['fmd']}", out, "--describer", STATS, "--no-plots", "--overwrite") == 0
    assert (out / "predictions.jsonl").read_text() == first and not list(tmp_path.glob(".e.*"))
    assert _eval(world, f"fmd:{world['fmd']}", tmp_path / "f", "--describer", STATS, "--no-plots",
                 "--classes", "all") == 0
    capsys.readouterr()
    assert main(["compare", str(out), str(tmp_path / "f")]) == 0
    text = capsys.readouterr().out
    a = json.loads((out / "metrics.json").read_text())["acc"]
    b = json.loads((tmp_path / "f/metrics.json").read_text())["acc"]
    assert f"{a:.3f}" in text and f"({b - a:+.3f})" in text and "macc" in text and "miou" in text
    assert main(["compare", str(out)]) == 1
    assert main(["compare", str(out), str(tmp_path)]) == 1
    assert "neither an eval folder" in capsys.readouterr().err
