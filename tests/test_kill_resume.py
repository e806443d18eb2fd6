"""A real SIGKILL during `fmmc features`, `fmmc train` and `fmmc predict FOLDER --out`, then a resume:
every item is done once, what was committed survives, at most one batch in flight is redone, and the
result equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import write_dataset

BATCH = 4
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FMMC_THREADS": "1",
       "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("kill_ds"), n_per_class=40, size=64)  # 120 regions


def _fmmc(*args: str) -> list[str]:
    return [sys.executable, "-m", "fmmc", *args]


def _kill_when(cmd: list[str], ready, stderr_path: Path, timeout: float = 120.0) -> bool:
    """Run ``cmd``, SIGKILL it as soon as ``ready()`` is true; False if it finished first."""
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=err)
        t0 = time.time()
        try:
            while proc.poll() is None and time.time() - t0 < timeout:
                if ready():
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    return True
                time.sleep(0.005)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return False


def _progress(stderr_path: Path) -> int:
    """The last item count the killed run's progress bar reported (tqdm writes ``N/TOTAL``)."""
    counts = re.findall(r"\| *(\d+)/(\d+) ", stderr_path.read_text(errors="replace"))
    return int(counts[-1][0]) if counts else 0


def _index_keys(cache_root: Path) -> set[str]:
    keys: set[str] = set()
    for idx in cache_root.glob("features/*/index.jsonl"):
        for line in idx.read_text().splitlines():
            try:
                keys.add(json.loads(line)["key"])
            except (ValueError, KeyError):
                pass
    return keys


def _features(cache_root: Path) -> dict[str, torch.Tensor]:
    from fmmc.vision.cache import FeatureCache

    (ns,) = [d for d in (cache_root / "features").iterdir() if d.is_dir()]
    cache = FeatureCache(cache_root / "features", ns.name)
    return {k: cache.get(k) for k in cache._index}


@pytest.mark.parametrize("at", [BATCH, 48, 100])
def test_sigkill_during_features_then_resume(big_dataset: Path, tiny_dinov2: Path, tmp_path: Path, at: int):
    args = ["features", str(big_dataset), "--backbone", f"hf:{tiny_dinov2}", "--image-size", "112",
            "--batch-size", str(BATCH), "--device", "cpu"]
    killed_cache = tmp_path / "killed"
    log = tmp_path / "killed.err"
    if not _kill_when(_fmmc(*args, "--cache-dir", str(killed_cache)),
                      lambda: len(_index_keys(killed_cache)) >= at, log):
        pytest.skip("the run finished before it could be killed (machine too fast for this point)")
    committed = _index_keys(killed_cache)
    assert len(committed) >= at  # committed per batch: nothing waits for 2048 vectors
    assert _progress(log) - len(committed) <= BATCH  # at most the batch in flight is lost
    # resume: every committed vector is reused, only the rest is extracted
    from fmmc.cli.main import main

    out = subprocess.run(_fmmc(*args, "--cache-dir", str(killed_cache), "--quiet", "-v"), env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    m = re.search(r"(\d+) regions: (\d+) cached, (\d+) to extract", out.stderr)
    assert m, out.stderr
    total, cached, todo = map(int, m.groups())
    assert total == 120 and cached == len(committed) and todo == 120 - len(committed)
    # equal to an uninterrupted run
    assert main([*args, "--cache-dir", str(tmp_path / "clean"), "--quiet"]) == 0
    resumed, clean = _features(killed_cache), _features(tmp_path / "clean")
    assert resumed.keys() == clean.keys() and len(clean) == 120
    assert max(float((resumed[k] - clean[k]).abs().max()) for k in clean) < 1e-5


def test_sigkill_during_train_then_rerun(big_dataset: Path, tiny_dinov2: Path, tmp_path: Path):
    def args(run: Path, cache: Path) -> list[str]:
        return ["train", "--data", str(big_dataset), "--out", str(run), "--backbone", f"hf:{tiny_dinov2}",
                "--streams", "vision", "--epochs", "3", "image_size=112", f"extract_batch_size={BATCH}",
                f"cache_dir={cache}", "lr=1e-3", "seed=0"]

    run, cache = tmp_path / "run", tmp_path / "cache"
    log = tmp_path / "train.err"
    if not _kill_when(_fmmc(*args(run, cache)), lambda: len(_index_keys(cache)) >= 40, log):
        pytest.skip("training finished before it could be killed")
    committed = _index_keys(cache)
    assert len(committed) >= 40 and not (run / "model" / "config.json").exists()  # no half model looks valid
    # the same command again takes the stopped run up (no --overwrite needed) and extracts only the rest
    out = subprocess.run(_fmmc(*args(run, cache), "-v"), env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert _index_keys(cache) >= committed
    clean = subprocess.run(_fmmc(*args(tmp_path / "clean", tmp_path / "clean-cache")), env=ENV,
                           capture_output=True, text=True, timeout=300)
    assert clean.returncode == 0, clean.stderr
    a = load_file(str(run / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "clean" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    # a finished run is not replaced without --overwrite
    again = subprocess.run(_fmmc(*args(run, cache)), env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


@pytest.fixture(scope="module")
def vision_model(big_dataset: Path, tiny_dinov2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fmmc.cli.main import main

    run = tmp_path_factory.mktemp("kill_model") / "run"
    assert main(["train", "--data", str(big_dataset), "--out", str(run), "--backbone", f"hf:{tiny_dinov2}",
                 "--streams", "vision", "--epochs", "2", "image_size=112", "--quiet",
                 f"cache_dir={run.parent / 'cache'}"]) == 0
    return run / "model"


def _journal_lines(path: Path) -> int:
    return max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0


def test_sigkill_during_folder_predict_then_resume(big_dataset: Path, vision_model: Path, tmp_path: Path):
    images = big_dataset / "images"
    out = tmp_path / "preds.jsonl"
    journal = tmp_path / ".preds.jsonl.partial.jsonl"
    cmd = _fmmc("predict", str(vision_model), str(images), "--out", str(out), "--describer", "none",
                "--quiet", "--cache-dir", str(tmp_path / "cache"))
    if not _kill_when(cmd, lambda: _journal_lines(journal) >= 16, tmp_path / "p.err"):
        pytest.skip("predict finished before it could be killed")
    done = _journal_lines(journal)
    assert done >= 16 and not out.exists()  # finished work kept; no half output file that looks complete
    # without --resume the interrupted run is not silently thrown away
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "--resume" in again.stderr and _journal_lines(journal) == done
    resumed = subprocess.run([*cmd, "--resume"], env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming: {done} of 120" in resumed.stderr and not journal.exists()
    clean = tmp_path / "clean.jsonl"
    from fmmc.cli.main import main

    assert main(["predict", str(vision_model), str(images), "--out", str(clean), "--describer", "none", "--quiet",
                 "--cache-dir", str(tmp_path / "cache2")]) == 0
    a = [json.loads(x) for x in out.read_text().splitlines()]
    b = [json.loads(x) for x in clean.read_text().splitlines()]
    assert [r["id"] for r in a] == [r["id"] for r in b] and len(a) == 120  # every item once, in order
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert np.allclose([r["confidence"] for r in a], [r["confidence"] for r in b], atol=1e-5)
    # a finished output is replaced only with --overwrite
    assert main(["predict", str(vision_model), str(images), "--out", str(clean), "--describer", "none",
                 "--quiet"]) == 1
