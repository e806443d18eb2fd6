"""``fmmc synth run`` end to end on tiny random-init models (SD, Grounding DINO, SAM): files, manifests,
a valid balanced dataset; a killed run resumed equals an uninterrupted one; shards equal one run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("diffusers")

from fixtures_models import make_tiny_grounding_dino, make_tiny_sam  # noqa: E402
from fixtures_synth import make_tiny_sd_pipeline  # noqa: E402

from fmmc.cli.main import main  # noqa: E402
from fmmc.data.dataset import load_dataset  # noqa: E402
from fmmc.data.validate import validate_dataset  # noqa: E402
from fmmc.taxonomy import load_taxonomy  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "synth" / "tiny.yaml")
N_IMAGES = 12  # 3 classes x 2 triplets x 2 seeds


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine two spinning OpenMP threads can be 50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    base = tmp_path_factory.mktemp("synth_models")
    return {"sd": make_tiny_sd_pipeline(base / "sd"), "gdino": make_tiny_grounding_dino(base / "gdino"),
            "sam": make_tiny_sam(base / "sam")}


def args(out: Path, models: dict, *more: str) -> list[str]:
    # batch size 1: a resumed run batches differently, and byte-equal images need equal batches
    return [TINY, f"out={out}", f"generate.model_id={models['sd']}", f"label.grounder=hf:{models['gdino']}",
            f"label.segmenter=hf:{models['sam']}", "generate.batch_size=1", *more]


def manifest_lines(stage_dir: Path) -> list[dict]:
    return [json.loads(x) for p in sorted(stage_dir.glob("manifest*.jsonl")) for x in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, models):
    out = tmp_path_factory.mktemp("synth_ref")
    assert main(["synth", "run", *args(out, models), "--no-progress"]) == 0
    return out


def test_full_run_writes_a_valid_balanced_dataset(reference, models, capsys):
    out = reference
    for rel in ("config.yaml", "triplets/triplets.jsonl", "triplets/report.json", "generate/stage.json",
                "generate/engine.json", "label/stage.json", "dataset/metadata.jsonl", "dataset/README.md",
                "dataset/config.yaml", "dataset/taxonomy.json", "dataset/build_report.json"):
        assert (out / rel).is_file(), rel
    trip = [json.loads(x) for x in (out / "triplets/triplets.jsonl").read_text().splitlines()]
    assert Counter(t["label"] for t in trip if t["status"] == "kept") == {"ceramic": 2, "metal": 2, "wood": 2}
    gen, lab = manifest_lines(out / "generate"), manifest_lines(out / "label")
    assert len(gen) == N_IMAGES == len({r["id"] for r in gen}) and all(r["status"] == "ok" for r in gen)
    assert len(lab) == N_IMAGES and all(r["status"] == "ok" for r in lab)  # near-zero thresholds: all pass
    assert all((out / r["image"]).is_file() and (out / r["mask"]).is_file() for r in lab)

    n, problems = validate_dataset(out / "dataset", load_taxonomy("default"))
    assert problems == [] and n == 9
    regions = load_dataset(out / "dataset")
    assert Counter(r.label for r in regions) == {"ceramic": 3, "metal": 3, "wood": 3}  # build.per_class: 3
    assert Counter(r.split for r in regions) == {"train": 6, "val": 3}
    assert all(Counter(r.split for r in regions if r.label == c) == {"train": 2, "val": 1} for c in ("ceramic", "metal", "wood"))
    r = regions[0]
    assert r.mask is not None and r.description.startswith("a ") and r.extra["object"] in r.extra["prompt"]
    assert {"prompt", "seed", "model_id", "grounder", "segmenter", "triplet_id", "det_score"} <= set(r.extra)
    assert sorted(p.name for p in (out / "dataset/contact_sheets").iterdir()) == ["ceramic.png", "metal.png", "wood.png"]
    card = (out / "dataset/README.md").read_text()
    assert "| ceramic | 2 | 1 | 3 |" in card and "build: over the per-class target (balance) | 3" in card

    # running again resumes: nothing is redone, the dataset is the same
    before = (out / "dataset/metadata.jsonl").read_text()
    capsys.readouterr()
    assert main(["synth", "run", *args(out, models), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "generate: 0 done now, 12 already done" in printed and "label: 0 done now, 12 already done" in printed
    assert len(manifest_lines(out / "generate")) == N_IMAGES
    assert (out / "dataset/metadata.jsonl").read_text() == before


def test_killed_generate_resumes_to_the_same_result(reference, models, tmp_path):
    out = tmp_path / "killed"
    slow_down = ("import sys, time\nfrom fmmc.synth import generate as g\norig = g.Generator._run\n"
                 "def slow(self, items):\n    time.sleep(0.3)\n    return orig(self, items)\n"
                 "g.Generator._run = slow\nfrom fmmc.cli.main import main\n"
                 f"sys.exit(main({['synth', 'generate', *args(out, models), '--no-progress']!r}))\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", slow_down], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    manifest = out / "generate" / "manifest.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if manifest.is_file() and len(manifest.read_bytes().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    done = manifest.read_bytes().splitlines()
    assert 3 <= len(done) < N_IMAGES
    with open(manifest, "ab") as f:  # as if the kill had landed in the middle of a write
        f.write(b'{"id": "wood--dresser--oak--1", "status": "o')

    assert main(["synth", "run", *args(out, models), "--no-progress"]) == 0
    gen, ref = manifest_lines(out / "generate"), {r["id"]: r for r in manifest_lines(reference / "generate")}
    assert len(gen) == N_IMAGES and {r["id"] for r in gen} == set(ref)  # no duplicates, nothing missing
    for r in gen:
        assert (out / r["image"]).read_bytes() == (reference / ref[r["id"]]["image"]).read_bytes(), r["id"]
        assert r["seed"] == ref[r["id"]]["seed"]
    assert (out / "dataset/metadata.jsonl").read_text() == (reference / "dataset/metadata.jsonl").read_text()


def test_shards_then_build_equal_one_run(reference, models, tmp_path, capsys):
    out = tmp_path / "sharded"
    assert main(["synth", "run", *args(out, models), "--shard", "0/2", "--no-progress"]) == 0
    assert "left for other shards" in capsys.readouterr().out and not (out / "dataset").exists()
    assert main(["synth", "run", *args(out, models), "--shard", "1/2", "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "generate").glob("manifest*")) == [
        "manifest-000-of-002.jsonl", "manifest-001-of-002.jsonl"]
    assert main(["synth", "build", *args(out, models), "--no-progress"]) == 0
    assert (out / "dataset/metadata.jsonl").read_text() == (reference / "dataset/metadata.jsonl").read_text()


def test_stand_in_labeler_from_the_config_spec(reference, models, tmp_path):
    out = tmp_path / "whole"
    for part in ("triplets", "generate", "images"):
        shutil.copytree(reference / part, out / part)
    assert main(["synth", "run", *args(out, models, "labeler=whole-image"), "--no-progress"]) == 0
    lab = manifest_lines(out / "label")
    assert len(lab) == N_IMAGES and {r["segmenter"] for r in lab} == {"whole-image"}
    assert validate_dataset(out / "dataset")[1] == []


def test_cli_errors_say_how_to_fix(reference, models, tmp_path, capsys):
    assert main(["synth", "label", *args(tmp_path / "empty", models)]) == 1
    assert "run `fmmc synth generate` first" in capsys.readouterr().err
    out = tmp_path / "changed"
    for part in ("triplets", "generate", "images"):
        shutil.copytree(reference / part, out / part)
    assert main(["synth", "generate", *args(out, models, "generate.steps=3")]) == 1
    assert "other settings (steps: steps=2)" in capsys.readouterr().err
    assert main(["synth", "triplets", *args(out, models, "triplets.per_class=3")]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["synth", "generate", *args(out, models), "--shard", "2/2"]) == 1
    assert "0 <= i < n" in capsys.readouterr().err
