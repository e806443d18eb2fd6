"""`fmmc reproduce` end to end on a tiny grid: tables, report, and resuming after an interruption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures_eval import make_tiny_clip, make_tiny_dinov2, shared, write_fmd, write_folder, write_train

import fmmc.evaluation.reproduce as reproduce
from fmmc.cli.main import main
from fmmc.evaluation.grid import load_grid_config, plan

CONFIG = """
name: tiny grid
train:
  data: {train}
  backbone: "hf:{dino}"
  image_size: 56
  text_encoder: "hf:{clip}"
  describer: fmmc.evaluation.toydata:build_stats_describer
  epochs: 12
  lr: 1.0e-3
eval: {{n_boot: 50}}
test_sets:
  fmd: {{spec: "fmd:{fmd}", title: FMD}}
  google: {{spec: "folder:{google}", title: Google-test}}
baselines:
  CLIP: "zeroshot:clip:{clip}"
tables:
  - id: main
    metric: acc
    rows: {{CLIP: {{model: CLIP}}, Ours: {{}}}}
  - id: streams
    rows: {{vision: {{streams: vision}}, both: {{}}}}
  - id: backbones
    test_set: fmd
    overrides: {{streams: vision}}
    columns: {{DINOv2: {{}}, Other: {{backbone: "hf:{dino2}"}}}}
    rows: {{head: {{}}, full: {{mode: full, epochs: 2, batch_size: 8}}}}
  - id: masks
    columns: [fmd]
    overrides: {{streams: vision}}
    rows: {{null mask: {{null_mask: true}}, semantic grounding: {{}}}}
  - id: scale
    columns: [fmd]
    overrides: {{streams: vision}}
    plot: train_fraction
    rows: {{"1x": {{train_fraction: 0.5}}, "2x": {{train_fraction: 1.0}}}}
"""


@pytest.fixture(scope="module")
def grid_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("grid")
    paths = {"train": write_train(root / "train", n=6), "fmd": write_fmd(root / "fmd", n=2),
             "google": write_folder(root / "google", n=2), "dino": make_tiny_dinov2(root / "dino"),
             "dino2": make_tiny_dinov2(root / "dino2", seed=1), "clip": shared("clip", make_tiny_clip)}
    cfg = root / "grid.yaml"
    cfg.write_text(CONFIG.format(**paths))
    return cfg


def test_plan_shares_cells(grid_config: Path):
    cells = plan(load_grid_config(grid_config))
    assert len(cells) == 11
    assert sum(c.train is None for c in cells) == 2  # the CLIP baseline on two test sets
    assert len({c.model_id for c in cells if c.train is not None}) == 7  # trainings, shared across tables
    shared = next(c for c in cells if ("masks", "semantic grounding", "FMD") in c.places)
    assert {("streams", "vision", "FMD"), ("backbones", "head", "DINOv2"), ("scale", "2x", "FMD")} <= set(shared.places)
    assert shared.model_id.startswith("streams=vision-")


def test_grid_config_errors(grid_config: Path, tmp_path: Path):
    text = grid_config.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("{streams: vision}, both", "{stream: vision}, both"))
    with pytest.raises(ValueError, match=r"tables\[1\] \(streams\)\.rows\[vision\].*unknown field\(s\) \['stream'\]"):
        load_grid_config(bad)
    bad.write_text(text.replace("columns: [fmd]", "columns: [fmdd]", 1))
    with pytest.raises(ValueError, match=r"columns \['fmdd'\] are not test sets"):
        load_grid_config(bad)
    with pytest.raises(ValueError, match="unknown field"):
        load_grid_config(grid_config, overrides=["eval.colour=red"])


def test_reproduce_resumes_after_interruption(grid_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "run"
    calls: list[str] = []
    real_train = reproduce.train

    def interrupted_train(cfg):  # the third training is interrupted (Ctrl-C)
        calls.append(cfg.out)
        if len(calls) == 3:  # half-way: the run folder exists, the model does not
            Path(cfg.out).mkdir(parents=True)
            (Path(cfg.out) / "train_log.jsonl").write_text('{"epoch": 1}\n')
            raise KeyboardInterrupt
        return real_train(cfg)

    monkeypatch.setattr(reproduce, "train", interrupted_train)
    assert main(["reproduce", str(grid_config), "--out", str(out), "--quiet"]) == 130
    done = {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json")}
    assert len(done) == 6  # CLIP x 2, both-streams x 2, vision x 2
    assert not (out / "tables.md").exists()
    assert len(list((out / "models").glob(".*.tmp-*"))) == 1  # the interrupted run, never renamed into place

    calls.clear()
    monkeypatch.setattr(reproduce, "train", lambda cfg: (calls.append(cfg.out), real_train(cfg))[1])
    assert main(["reproduce", str(grid_config), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert len(calls) == 5  # 7 trainings, 2 finished before the interruption
    assert {p.name: p.stat().st_mtime_ns for p in (out / "cells").glob("*.json") if p.name in done} == done
    assert len(list((out / "cells").glob("*.json"))) == 11
    assert not list((out / "models").glob(".*.tmp-*"))
    assert "5 cell(s) run, 6 already finished, 0 failed" in printed

    tables = (out / "tables.md").read_text()
    assert "|  | FMD | FMD (paper) | Google-test | Google-test (paper) |" in tables
    assert "| CLIP |" in tables and "| Ours |" in tables and "| MatSim (paper only) |" in tables
    assert "| 0.89 |" in tables  # the paper's FMD accuracy beside ours
    assert "| head |" in tables and "| full |" in tables and "0.79\\|0.88" in tables  # mIoU|mAcc cells
    assert "| null mask |" in tables and "| semantic grounding |" in tables
    assert "![scale](scale.png)" in tables and (out / "scale.png").read_bytes()[:4] == b"\x89PNG"
    tj = {t["id"]: t for t in json.loads((out / "tables.json").read_text())}
    assert [r["label"] for r in tj["streams"]["rows"]] == ["vision", "both", "language"]  # + paper-only row
    assert tj["backbones"]["columns"] == ["DINOv2", "Other"]
    cell = tj["masks"]["rows"][0]["cells"]["FMD"]
    assert cell["status"] == "ok" and cell["paper"] == "0.75|0.85" and 0 <= cell["metrics"]["miou"] <= 1
    report = (out / "report.md").read_text()
    assert "# Reproduction: tiny grid" in report and "11 of 11 cells finished" in report
    assert "[report](evals/" in report and (out / "evals").is_dir() and (out / "reproduce_config.yaml").is_file()
    assert "Table 1" in printed and "(0.89)" in printed

    # a third run does nothing but rewrite the tables
    calls.clear()
    assert main(["reproduce", str(grid_config), "--out", str(out), "--quiet"]) == 0
    assert calls == [] and "0 cell(s) run, 11 already finished" in capsys.readouterr().out

    # compare two reproduce folders cell by cell
    assert main(["compare", str(out), str(out)]) == 0
    text = capsys.readouterr().out
    assert "masks / null mask / FMD" in text and "(+0.000)" in text


def test_dry_run(grid_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["reproduce", str(grid_config), "--out", str(tmp_path / "r"), "--dry-run", "--only", "masks"]) == 0
    text = capsys.readouterr().out
    assert "masks/null mask/FMD" in text and "11 cells, 8 models (9 cells need training)" in text
    assert "streams/vision/Google-test" not in text and not (tmp_path / "r").exists()
