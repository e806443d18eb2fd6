"""Scale curve: time and peak RSS of ``fmmc features`` and of head training at 2k, 20k and 200k regions.

    python benchmarks/bench_scale.py --work /tmp/scale     # 2k, 20k, 200k (~20 min on 2 cores, ~1.5 GB of files)
    python benchmarks/bench_scale.py --quick               # 2k, 20k (~3 min)
    python benchmarks/bench_scale.py --sizes 5000,50000 --extract-max 50000 --json out.json
    python benchmarks/bench_scale.py --quick --stream-all  # every size on the streamed (200k) path

Each size gets a dataset of N whole-image regions (``--image-size`` px PNGs, one per region, 3 classes of
the default taxonomy, every image unique), written once under ``--work`` and reused by later runs. The
backbone is a random-init DINOv2 with DINOv2-B's feature width (768; 1 layer, patch 14), written with
``save_pretrained`` and loaded as ``hf:<dir>``, so fmmc's real loading, hashing, caching and training
paths run and the cached vectors are as wide as the paper's. Every phase runs in a fresh subprocess, so
its peak RSS (``VmHWM`` of ``/proc/self/status``) is its own:

* **features** (N <= ``--extract-max``): ``fmmc features DATA --backbone hf:<dir>`` (the real command), into
  an empty cache unless ``--reuse-cache``;
* **fill** (N > ``--extract-max``): running even a tiny backbone over 200k images takes ~10 min here, so
  by default the cache is filled through the real write path instead: every region's real cache key
  (``region_key``: the image file's sha256), a class-dependent random vector, ``FeatureCache.put`` +
  ``commit`` per batch of 8 and ``compact``, as ``fmmc features`` does. Its figures are marked *fill*;
  they are not a backbone's, and not the ``fmmc features`` command's (which also holds its work list);
* **train**: ``fmmc train --data DATA streams=vision`` with the paper's recipe (AdamW, batch 64, up to 200
  epochs, early stopping with patience 20), every feature found in the cache. The time is split into the
  data step (hashing every image for its key, reading the cache: ``prepare_seconds`` of ``summary.json``)
  and the epochs (``fit_seconds``); up to ``IN_MEMORY_BYTES`` of vectors are held in memory, above it
  they are read from the cache files per batch (:mod:`fmmc.train.feature_rows`).

Targets (issue 12): 20k cached regions train in under 30 s; RSS of training at 200k within 1.5x of 20k;
``fmmc features`` RSS flat as N grows. Absolute figures drift on shared machines (another process on one of
the two cores doubles a step's time); ratios of one run drift less, and RSS hardly at all.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

LABELS = ("metal", "wood", "fabric")
COLOURS = {"metal": (200, 200, 210), "wood": (150, 90, 40), "fabric": (40, 60, 160)}
FILL_BATCH = 8  # regions per commit in the fill phase: fmmc features' default batch


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_backbone(path: Path, dim: int, image_size: int) -> Path:
    """A random-init DINOv2 (``dim`` wide, 1 layer) saved with save_pretrained: loaded as ``hf:<path>``."""
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=dim, num_hidden_layers=1, num_attention_heads=max(1, dim // 64),
                       intermediate_size=dim, patch_size=14, image_size=image_size)
    Dinov2Model(cfg).eval().save_pretrained(path)
    return path


def write_dataset(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` unique ``size`` px PNGs (class colour + noise; the region index in the first pixels) + metadata."""
    done = root / "metadata.jsonl"
    if done.is_file():
        return root
    from PIL import Image

    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        label = LABELS[i % len(LABELS)]
        arr = np.clip(np.array(COLOURS[label])[None, None] + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
        arr[0, :4, 0] = np.frombuffer(i.to_bytes(4, "little"), np.uint8)  # unique pixels: unique cache keys
        rel = f"images/{i // 1000:04d}/{i:07d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / rel, compress_level=1)
        lines.append(json.dumps({"file_name": rel, "label": label, "id": f"r{i:07d}"}) + "\n")
    tmp = done.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    tmp.rename(done)  # written last: a half-written dataset is never reused
    return root


# --- child processes: one phase each, reporting {"seconds", "peak_rss_mb", ...} as the last stdout line ---
def child_features(data: str, backbone: str, cache: str, image_size: int) -> dict:
    from fmmc.cli.main import main

    t = time.perf_counter()
    rc = main(["features", data, "--backbone", backbone, "--cache-dir", cache, "--image-size", str(image_size),
               "--device", "cpu", "--quiet"])
    return {"rc": rc, "seconds": time.perf_counter() - t}


def child_fill(data: str, backbone: str, cache: str, image_size: int) -> dict:
    """The cache ``fmmc features`` would write, through the same key and write path, with synthetic vectors."""
    import torch

    from fmmc.core.registry import build
    from fmmc.data.dataset import load_dataset
    from fmmc.vision.cache import FeatureCache, namespace_of
    from fmmc.vision.extractor import FeatureExtractor, region_key

    t = time.perf_counter()
    ex = FeatureExtractor(build("backbone", backbone, image_size=image_size), device="cpu")
    settings = ex.settings()
    store = FeatureCache(Path(cache) / "features", namespace_of(settings), settings)
    regions = load_dataset(data)
    dim = int(ex.backbone.feature_dim)
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(len(LABELS), dim, generator=gen)
    for i, r in enumerate(regions):
        key = region_key(r)
        if key not in store:
            store.put(key, centres[LABELS.index(str(r.label))] + 2.0 * torch.randn(dim, generator=gen))
        if (i + 1) % FILL_BATCH == 0:
            store.commit()
    store.compact()
    return {"rc": 0, "seconds": time.perf_counter() - t}


def child_train(data: str, backbone: str, cache: str, image_size: int, out: str, extra: list[str]) -> dict:
    from fmmc.cli.main import main
    from fmmc.train import feature_rows

    if extra[:1] == ["--stream-all"]:
        feature_rows.IN_MEMORY_BYTES = 0
        extra = extra[1:]

    t = time.perf_counter()
    rc = main(["train", "--data", data, "--out", out, "--backbone", backbone, "--streams", "vision", "--quiet",
               "--overwrite", f"image_size={image_size}", f"cache_dir={cache}", *extra])
    seconds = time.perf_counter() - t
    summary = json.loads((Path(out) / "summary.json").read_text())
    epochs = len((Path(out) / "train_log.jsonl").read_text().splitlines())
    return {"rc": rc, "seconds": seconds, "train_seconds": summary.get("seconds"), "epochs": epochs,
            "best_epoch": summary.get("best_epoch"),
            "val_acc": summary.get("val_acc"), "prepare_seconds": summary.get("prepare_seconds"),
            "fit_seconds": summary.get("fit_seconds"), "n_train": summary.get("n_train")}


CHILDREN = {"features": child_features, "fill": child_fill, "train": child_train}


def run_child(phase: str, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run([sys.executable, __file__, "--child", phase, *args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{phase} child failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def child_main(argv: list[str]) -> None:
    phase, data, backbone, cache, image_size, *rest = argv
    if phase == "train":
        out = CHILDREN[phase](data, backbone, cache, int(image_size), rest[0], rest[1:])
    else:
        out = CHILDREN[phase](data, backbone, cache, int(image_size))
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


# --- the driver ---
def bench_size(n: int, work: Path, backbone: str, args: argparse.Namespace) -> dict:
    data = write_dataset(work / f"data-{n}", n, args.image_size)
    cache = work / f"cache-{n}"
    if not args.reuse_cache and cache.exists():
        import shutil

        shutil.rmtree(cache)
    phase = "features" if n <= args.extract_max else "fill"
    feats = run_child(phase, str(data), backbone, str(cache), str(args.image_size))
    feats["phase"] = phase
    train = run_child("train", str(data), backbone, str(cache), str(args.image_size), str(work / f"run-{n}"),
                      *(["--stream-all"] if args.stream_all else []), *args.train_args)
    return {"n": n, "features": feats, "train": train}


def report(rows: list[dict]) -> list[str]:
    lines = [f"{'regions':>8} | {'features phase':>14} | {'s':>7} | {'peak RSS MiB':>12} || {'train s':>8} | "
             f"{'data s':>7} | {'epochs s':>8} | {'epochs':>6} | {'s/epoch':>7} | {'peak RSS MiB':>12} | val acc"]
    for r in rows:
        f, t = r["features"], r["train"]
        per_epoch = (t["fit_seconds"] or 0) / max(1, t["epochs"])
        lines.append(f"{r['n']:>8} | {f['phase']:>14} | {f['seconds']:7.1f} | {f['peak_rss_mb']:12.0f} || "
                     f"{t['seconds']:8.1f} | {t['prepare_seconds'] or 0:7.1f} | {t['fit_seconds'] or 0:8.1f} | "
                     f"{t['epochs']:>6} | {per_epoch:7.3f} | {t['peak_rss_mb']:12.0f} | {t['val_acc'] or 0:.3f}")
    by_n = {r["n"]: r for r in rows}
    if 20000 in by_n:
        t = by_n[20000]["train"]
        per_epoch = (t["fit_seconds"] or 0) / max(1, t["epochs"])
        lines.append(f"target 20k head training < 30 s: {t['seconds']:.1f} s for the command ({t['train_seconds']} s in "
                     f"train()) -> {'met' if t['seconds'] < 30 else 'MISSED'}; {t['epochs']} epochs (early stop), "
                     f"{per_epoch:.2f} s/epoch: 200 epochs would take {(t['prepare_seconds'] or 0) + 200 * per_epoch:.0f} s")
    if 20000 in by_n and 200000 in by_n:
        ratio = by_n[200000]["train"]["peak_rss_mb"] / by_n[20000]["train"]["peak_rss_mb"]
        lines.append(f"target train RSS 200k / 20k <= 1.5: {ratio:.2f} -> {'met' if ratio <= 1.5 else 'MISSED'}")
    small, big = rows[0], rows[-1]
    if big["n"] > small["n"]:
        ratio = big["features"]["peak_rss_mb"] / small["features"]["peak_rss_mb"]
        lines.append(f"features RSS {big['n']} ({big['features']['phase']}) / {small['n']} "
                     f"({small['features']['phase']}): {ratio:.2f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        child_main(argv[1:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="2000,20000,200000", help="comma-separated region counts")
    ap.add_argument("--quick", action="store_true", help="2k and 20k only")
    ap.add_argument("--work", help="folder for datasets, caches and runs (kept and reused; default: a temp dir)")
    ap.add_argument("--extract-max", type=int, default=20000,
                    help="run the real `fmmc features` up to this many regions; fill the cache above it")
    ap.add_argument("--dim", type=int, default=768, help="feature width of the random backbone")
    ap.add_argument("--image-size", type=int, default=28, help="image side and backbone input (a multiple of 14)")
    ap.add_argument("--reuse-cache", action="store_true",
                    help="keep each size's feature cache from an earlier run (default: extract or fill it again)")
    ap.add_argument("--stream-all", action="store_true",
                    help="train with every split read from the cache per batch (IN_MEMORY_BYTES=0), the path "
                         "that 200k regions take, at every size")
    ap.add_argument("--train-arg", dest="train_args", action="append", default=[],
                    help="extra key=value for fmmc train (repeatable), e.g. --train-arg epochs=50")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    sizes = [2000, 20000] if args.quick else [int(s) for s in args.sizes.split(",")]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="fmmc-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    backbone = "hf:" + str(write_backbone(work / "backbone", args.dim, args.image_size))
    print(f"work dir {work}; backbone {backbone} (random DINOv2, {args.dim}-d, {args.image_size} px); "
          f"features phase: real `fmmc features` up to {args.extract_max} regions, cache fill above", flush=True)
    rows = []
    for n in sizes:
        t = time.perf_counter()
        rows.append(bench_size(n, work, backbone, args))
        print(f"  {n} regions done in {time.perf_counter() - t:.0f} s", flush=True)
    print("\n".join(report(rows)))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
