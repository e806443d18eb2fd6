"""Throughput and latency of ``POST /v1/classify`` on loopback, beside the same model called in-process.

    python benchmarks/bench_serve.py                          # builds a small offline model, starts `fmmc serve`
    python benchmarks/bench_serve.py --model runs/demo/model --levels 1,4,16 --requests 64 --max-seconds 15
    python benchmarks/bench_serve.py --url http://127.0.0.1:8000 --model runs/demo/model   # an already running server

The server runs as a separate process (``python -m fmmc.cli.main serve``), so client and server do not share
a GIL. Each concurrency level sends at most ``--requests`` requests or runs at most ``--max-seconds``
seconds, whichever comes first, after a short warm-up. The in-process baseline decodes the same JPEG
bytes and calls ``model.predict`` with the same box, one call at a time; the table reports the service
as a ratio of it (timings on shared machines drift, ratios measured in one run hold better).
``--compare-no-batching`` repeats the service runs with micro-batching off (``--max-batch 1``). The
baseline runs before and after the service runs and their mean is used, since load on a shared machine drifts.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

BOX = "60,40,540,360"


def photo_bytes() -> tuple[bytes, str]:
    try:
        from skimage import data

        arr, name = data.coffee(), "skimage coffee 600x400"
    except ImportError:
        rng = np.random.default_rng(0)
        arr, name = (rng.random((400, 600, 3)) * 255).astype(np.uint8), "noise 600x400"
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue(), name


def build_model(root: Path) -> Path:
    """A small vision-only model on the embedded EfficientNet-Lite0 (320 px), trained on synthetic textures."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fixtures_serve import make_texture_dataset

    from fmmc.train.config import TrainConfig
    from fmmc.train.trainer import train

    data = make_texture_dataset(root / "data", per_class=6)
    train(TrainConfig(data=str(data), out=str(root / "run"), backbone="builtin:efficientnet-lite0", streams="vision",
                      epochs=20, lr=1e-3, progress=False, cache_dir=str(root / "cache")))
    return root / "run" / "model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path, max_batch: int, concurrency: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "fmmc.cli.main", "serve", str(model), "--port", str(port),
           "--max-concurrency", str(concurrency), "--max-queue", "256", "--max-batch", str(max_batch)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


async def load(url: str, image: bytes, clients: int, requests: int, max_seconds: float, token: str | None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    errors = 0
    sent = 0
    stop_at = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits, headers=headers) as c:

        async def one() -> None:
            nonlocal errors
            t0 = time.perf_counter()
            r = await c.post("/v1/classify", files={"image": ("photo.jpg", image, "image/jpeg")}, data={"box": BOX})
            if r.status_code == 200:
                latencies.append(time.perf_counter() - t0)
            else:
                errors += 1

        await asyncio.gather(*[one() for _ in range(min(clients, 4))])  # warm-up
        latencies.clear()

        async def worker() -> None:
            nonlocal sent
            while sent < requests and time.monotonic() < stop_at:
                sent += 1
                await one()

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(clients)])
        wall = time.perf_counter() - t0
    return summarize(latencies, wall, errors)


def summarize(latencies: list[float], wall: float, errors: int = 0) -> dict:
    lat = sorted(latencies)
    n = len(lat)
    return {"n": n, "errors": errors, "rps": n / wall if wall else 0.0,
            "p50": statistics.median(lat) * 1000 if n else float("nan"),
            "p95": lat[min(n - 1, int(round(0.95 * (n - 1))))] * 1000 if n else float("nan")}


def in_process(model: object, image: bytes, requests: int, max_seconds: float) -> dict:
    from fmmc.data.imageio import load_image

    box = tuple(float(v) for v in BOX.split(","))
    for _ in range(3):
        model.predict(load_image(image), box=box)
    lat = []
    stop_at = time.monotonic() + max_seconds
    t0 = time.perf_counter()
    while len(lat) < requests and time.monotonic() < stop_at:
        t = time.perf_counter()
        model.predict(load_image(image), box=box)
        lat.append(time.perf_counter() - t)
    return summarize(lat, time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (default: build a small offline one)")
    ap.add_argument("--url", help="benchmark this running server instead of starting one")
    ap.add_argument("--token", help="bearer token for --url")
    ap.add_argument("--levels", default="1,4,16", help="concurrent clients, comma-separated")
    ap.add_argument("--requests", type=int, default=64, help="at most this many requests per level")
    ap.add_argument("--max-seconds", type=float, default=15.0, help="at most this long per level")
    ap.add_argument("--max-batch", type=int, default=8, help="server micro-batch size")
    ap.add_argument("--compare-no-batching", action="store_true", help="also run the server with --max-batch 1")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch/OpenMP threads, the same for the server process and the in-process baseline "
                         "(1 by default: on a shared 2-core machine, 2 spinning OpenMP threads make timings erratic)")
    args = ap.parse_args(argv)

    levels = [int(v) for v in args.levels.split(",")]
    image, image_name = photo_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else build_model(Path(tmp))
        import torch

        from fmmc.model.classifier import MaterialClassifier

        torch.set_num_threads(args.threads)
        model = MaterialClassifier.from_pretrained(model_dir)
        before = in_process(model, image, args.requests, args.max_seconds)
        configs = [("batch", args.max_batch)] + ([("no batch", 1)] if args.compare_no_batching and not args.url else [])
        rows = []
        for label, max_batch in configs:
            proc = None
            url = args.url
            if url is None:
                proc, url = start_server(model_dir, max_batch, max(levels), args.threads)
            try:
                for c in levels:
                    res = asyncio.run(load(url, image, c, args.requests, args.max_seconds, args.token))
                    rows.append((f"service ({label}{'' if args.url else f', max_batch={max_batch}'})", c, res))
            finally:
                if proc is not None:
                    proc.terminate()
                    proc.wait(timeout=30)
        after = in_process(model, image, args.requests, args.max_seconds)  # the load may drift: measure twice
    base = {k: (before[k] + after[k]) / 2 for k in ("rps", "p50", "p95")}
    base["n"] = before["n"] + after["n"]

    print(f"\nPOST /v1/classify, {image_name} JPEG ({len(image) / 1024:.0f} KiB), box {BOX}; "
          f"model {args.model or 'builtin:efficientnet-lite0 @320 (built)'}; {os.cpu_count()} CPU cores, "
          f"{args.threads} torch thread(s); in-process = mean of runs before ({before['rps']:.2f} req/s) and after "
          f"({after['rps']:.2f} req/s) the service runs")
    head = f"{'':34} {'clients':>7} {'n':>4} {'err':>3} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'req/s vs in-proc':>17} {'p50 vs in-proc':>15}"
    print(head)
    print("-" * len(head))
    print(f"{'in-process model.predict':34} {1:>7} {base['n']:>4} {0:>3} {base['rps']:>7.2f} {base['p50']:>8.1f} "
          f"{base['p95']:>8.1f} {1.0:>17.2f} {1.0:>15.2f}")
    for name, c, r in rows:
        print(f"{name:34} {c:>7} {r['n']:>4} {r['errors']:>3} {r['rps']:>7.2f} {r['p50']:>8.1f} {r['p95']:>8.1f} "
              f"{r['rps'] / base['rps']:>17.2f} {r['p50'] / base['p50']:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
