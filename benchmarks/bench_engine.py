"""Feature-extraction throughput, local engine vs Ray engine, on this machine, in one run.

    python benchmarks/bench_engine.py                          # 64 JPEGs, builtin:efficientnet-lite0, 2 CPUs
    python benchmarks/bench_engine.py --n 128 --backbone hf:/path/to/dinov2 --image-size 224 --concurrency 2

Both engines run the same stage (:class:`fmmc.engine.features.FeatureStage`) over the same regions with
the same batches (local: once with as many torch threads as CPUs, once with one). Reported per engine:
wall seconds of ``map_stage`` and items/s over them (Ray: actor start and model load included,
``ray.init`` not; local: the model is loaded before), ``startup_s`` (until the first model copy was
ready) and steady-state items/s (from then to the last batch, stamped inside the stage). The Ray/local
ratios are the overhead (or gain) of Ray on this machine; ratios, not absolute figures, carry over between
runs on these shared machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def write_jpegs(root: Path, n: int, size: int, seed: int = 0) -> list[Any]:
    """``n`` textured JPEGs with a round mask each -> Regions."""
    from fmmc.data.records import Region

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    regions = []
    for k in range(n):
        base = rng.integers(0, 255, 3)
        period = int(rng.integers(2, 9))
        img = np.clip(base[None, None] * (0.7 + 0.3 * ((xx // period) % 2))[..., None]
                      + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
        mask = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
        Image.fromarray(img).save(root / "images" / f"{k:04d}.jpg", quality=90)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{k:04d}.png")
        regions.append(Region(image=root / "images" / f"{k:04d}.jpg", mask=root / "masks" / f"{k:04d}.png",
                              id=f"r{k:04d}"))
    return regions


class TimedStage:
    """The feature stage, stamped: when its model was ready and when each batch finished (wall clock)."""

    def __init__(self, job: Any = None, stage: Any = None) -> None:
        from fmmc.engine.features import FeatureStage

        self.stage = stage if stage is not None else FeatureStage(job)
        self.ready = time.time()

    def __call__(self, items: list[dict]) -> list[dict]:
        out = self.stage(items)
        done = time.time()
        return [{**r, "_ready": self.ready, "_done": done} for r in out]


def timed_map(engine: Any, items: list[dict], factory: Any, batch_size: int, **resources: Any) -> dict[str, float]:
    results: list[dict] = []
    t0 = time.time()
    failures = engine.map_stage(items, factory, batch_size=batch_size, on_result=results.extend, **resources)
    t1 = time.time()
    if failures:
        raise RuntimeError(f"{len(failures)} failures, first: {failures[0]}")
    ready = min(r["_ready"] for r in results)  # the first model copy ready to work
    window = max(r["_done"] for r in results) - ready
    return {"seconds": round(t1 - t0, 2), "items_per_s": round(len(items) / (t1 - t0), 2),
            "startup_s": round(max(ready - t0, 0.0), 2),
            "steady_items_per_s": round(len(items) / window, 2) if window > 0 else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="number of JPEGs")
    ap.add_argument("--size", type=int, default=128, help="JPEG side in pixels")
    ap.add_argument("--backbone", default="builtin:efficientnet-lite0")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance (and torch threads locally)")
    ap.add_argument("--concurrency", type=int, default=2, help="Ray actors")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)

    import torch

    from fmmc.engine import get_engine
    from fmmc.engine.features import FeatureJob, FeatureStage, absolute_region
    from fmmc.vision.extractor import region_key

    with tempfile.TemporaryDirectory() as tmp:
        regions = write_jpegs(Path(tmp), args.n, args.size)
        items = [{"id": r.id, "key": region_key(r), "region": absolute_region(r).to_json()} for r in regions]
        job = FeatureJob(backbone=args.backbone, image_size=args.image_size, batch_size=args.batch_size, device="cpu")

        t = time.perf_counter()
        stage = FeatureStage(job)
        load_s = time.perf_counter() - t
        local: dict[str, dict[str, float]] = {}
        for threads in sorted({args.cpus, 1}, reverse=True):  # on a busy machine 1 thread can beat 2
            torch.set_num_threads(threads)
            timed = partial(TimedStage, stage=stage)  # the model is loaded once, before timing
            local[f"{threads}_threads"] = {**timed_map(get_engine("local"), items, timed, args.batch_size),
                                           "model_load_s": round(load_s, 2)}
        best = max(local.values(), key=lambda r: r["items_per_s"])

        import ray

        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - t
        try:
            engine = get_engine("ray")
            ray_run = timed_map(engine, items, partial(TimedStage, job), args.batch_size,
                                concurrency=args.concurrency, num_cpus=args.cpus / args.concurrency)
            ray_run["ray_init_s"] = round(init_s, 2)
        finally:
            ray.shutdown()

    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, "
                   f"torch {torch.__version__}, ray {ray.__version__}",
        "load_average": os.getloadavg(),
        "setup": f"{args.n} JPEGs {args.size}px, {args.backbone} at {args.image_size}px, batch {args.batch_size}, "
                 f"local: 1 process x N torch threads; ray: {args.concurrency} actors x "
                 f"{args.cpus / args.concurrency:g} CPU (Ray sets 1 torch thread per CPU)",
        "local": local, "ray": ray_run,
        "ratio_ray_over_best_local_items_per_s": round(ray_run["items_per_s"] / best["items_per_s"], 3),
        "ratio_ray_over_best_local_steady": round(ray_run["steady_items_per_s"] / best["steady_items_per_s"], 3),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
