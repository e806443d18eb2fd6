"""Can the input pipeline feed the forward, and what does bf16 (cast) buy? Ratios measured in one run.

    python benchmarks/bench_pipeline.py                     # CPU: 48 photos 1600x1200 -> 448, DINOv2-B/14 (~3 min)
    python benchmarks/bench_pipeline.py --quick             # fewer photos and rounds (~1 min)
    python benchmarks/bench_pipeline.py --device cuda       # the same on a GPU, against that GPU's own ceiling

Measured, each in the same run (complements ``bench_extract.py``, which measures the CPU forward against
the fp32 matmul ceiling and the naive loop):

1. input pipeline (decode + resize to 448 + mask to grid + cache key; no model): images/s through
   :func:`fmmc.vision.loading.iter_batches` at 0 workers (this process, no prefetch: one core), 1 and 2
   worker processes, for the ``pil`` decoder (full decode, the default) and ``pil-draft``; per-core rate, of
   the whole pipeline and of the decoder alone (decode + resize, no mask: :func:`decoder_rate`);
2. the forward rate (DINOv2-B/14, random weights, 448x448, ready tensors) in fp32 and bf16 (weights cast,
   :mod:`fmmc.vision.precision`), the 2048^3 matmul ceilings in fp32 and bf16 measured between the timings,
   and the min cosine of bf16 to fp32 pooled features;
3. the fraction of the forward rate the input pipeline sustains (pipeline rate / forward rate); end to end
   ``extract_regions`` rate against the forward rate, with ``pil-draft`` and, where torchvision imports,
   ``torchvision-gpu`` (decoded on the device: nvJPEG on a GPU).

Targets (issue 12): 2 workers >= 1.7x 1 worker; per-core pil-draft decoder >= 80 images/s (checked for
the decoder alone and, stricter, for the whole pipeline with the mask); bf16 cast >= 0.6 of the
bf16 ceiling with min cosine >= 0.999; on a GPU, end-to-end extraction >= 0.5 of the forward rate at batch 64.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def _bench_extract() -> Any:
    spec = importlib.util.spec_from_file_location("bench_extract", HERE / "bench_extract.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def ceiling(device: str, dtype: Any, reps: int = 5, n: int = 2048) -> float:
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    _sync(device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times)) / 1e9


def pipeline_rate(regions: list[Any], pre: Any, decoder: str, workers: int, batch: int) -> float:
    from fmmc.vision.loading import RegionLoader, iter_batches

    loader = RegionLoader(pre, 0.5, decoder)
    t = time.perf_counter()
    n = 0
    for _, loaded in iter_batches(loader, regions, batch, workers, prefetch=False):
        assert all(x.error is None for x in loaded), [x.error for x in loaded if x.error]
        n += len(loaded)
    return n / (time.perf_counter() - t)


def decoder_rate(regions: list[Any], pre: Any, decoder: str) -> float:
    """The decoder alone, in this process (one core): fmmc's own decode (``load_image``, draft for
    ``pil-draft``) and ``to_pixels`` (resize + normalise), no mask, no cache key: the figure the issue's
    "per-core rate of the PIL decoder" names (the pipeline rate above adds the mask's decode and grid)."""
    from fmmc.data.imageio import load_image
    from fmmc.vision.loading import to_pixels

    draft = (pre.image_size[1], pre.image_size[0]) if decoder == "pil-draft" else None
    t = time.perf_counter()
    for r in regions:
        to_pixels(load_image(r.image, draft=draft), pre)
    return len(regions) / (time.perf_counter() - t)


def vit_gflop(backbone: Any, size: int) -> float:
    """Analytic GFLOP per image of a ViT (the count bench_extract.py checks against FlopCounterMode)."""
    cfg = backbone.model.config
    d, n = cfg.hidden_size, (size // cfg.patch_size) ** 2 + 1
    f = int(getattr(cfg, "intermediate_size", None) or d * cfg.mlp_ratio)
    return (cfg.num_hidden_layers * (2 * n * (4 * d * d + 2 * d * f) + 4 * n * n * d)
            + 2 * (n - 1) * 3 * cfg.patch_size**2 * d) / 1e9


def bf16_breakdown(backbone: Any, batch: int, size: int, ceiling_gflops: float) -> str:
    """Where a CPU bf16 forward's time goes: one forward under torch.profiler, self time of the attention
    kernel and of the linear layers, each against its analytic GFLOP and the bf16 matmul ceiling."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cfg = backbone.model.config
    d, n, layers = cfg.hidden_size, (size // cfg.patch_size) ** 2 + 1, cfg.num_hidden_layers
    f = int(getattr(cfg, "intermediate_size", None) or d * cfg.mlp_ratio)
    attn_gflop = batch * layers * 4 * n * n * d / 1e9
    linear_gflop = batch * layers * 2 * n * (4 * d * d + 2 * d * f) / 1e9
    x = torch.randn(batch, 3, size, size, dtype=torch.bfloat16)
    with torch.inference_mode():
        backbone(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            backbone(x)
    times = {"attention": 0.0, "linear": 0.0, "other": 0.0}
    for ev in prof.key_averages():
        kind = ("attention" if "scaled_dot_product" in ev.key else "linear" if ev.key in ("aten::addmm", "aten::mm")
                else "other")
        times[kind] += ev.self_cpu_time_total / 1e6
    total = sum(times.values())
    parts = [f"{k} {t / total:.0%} of the time" + (f" at {g / t:.0f} GFLOP/s = {g / t / ceiling_gflops:.2f} of the ceiling"
                                                   if (g := {"attention": attn_gflop, "linear": linear_gflop}.get(k)) and t
                                                   else "") for k, t in times.items()]
    return "bf16 forward, by op (torch.profiler, one forward): " + "; ".join(parts)


def forward_rate(backbone: Any, device: str, dtype: Any, batch: int, size: int, rounds: int) -> float:
    import torch

    x = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
    with torch.inference_mode():
        backbone(x)
        _sync(device)
        t = time.perf_counter()
        for _ in range(rounds):
            backbone(x)
        _sync(device)
    return batch * rounds / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--n", type=int, default=48, help="photos (1600x1200 JPEG + mask)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, help="extraction batch (default 4 on CPU, 64 on a GPU)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="forward rounds per timing")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.rounds = 16, 2
    import torch

    torch.set_num_threads(args.threads)
    gpu = args.device.startswith("cuda")
    batch = args.batch_size or (64 if gpu else 4)
    be = _bench_extract()
    from fmmc.core.registry import build
    from fmmc.data.records import Region
    from fmmc.vision.extractor import FeatureExtractor
    from fmmc.vision.precision import native_bf16

    with tempfile.TemporaryDirectory(prefix="fmmc-pipe-") as tmp:
        work = Path(tmp)
        model = be.write_model(work / "dinov2-b14")
        items = be.write_jpegs(work / "data", args.n, size=(1600, 1200))
        regions = [Region(image=Path(it["image"]), mask=Path(it["mask"]), id=f"r{k}") for k, it in enumerate(items)]
        fp32 = FeatureExtractor(build("backbone", f"hf:{model}", image_size=448), batch_size=batch, device=args.device,
                                num_workers=0)
        pre = fp32.pre
        print(f"{args.n} JPEGs 1600x1200 + masks -> 448x448; DINOv2-B/14 random weights; batch {batch}; "
              f"{args.device} ({torch.cuda.get_device_name() if gpu else be._cpu_name()}), torch {torch.__version__}, "
              f"{args.threads} threads, {os.cpu_count()} CPUs; native bf16: {native_bf16(args.device)[1]}")
        pipe: dict[tuple[str, int], float] = {}
        for decoder in ("pil", "pil-draft"):
            for w in (0, 1, 2):
                pipe[decoder, w] = pipeline_rate(regions, pre, decoder, w, batch)
        dec = {decoder: decoder_rate(regions, pre, decoder) for decoder in ("pil", "pil-draft")}
        print("\ninput pipeline (no model), images/s:")
        for decoder in ("pil", "pil-draft"):
            r = [pipe[decoder, w] for w in (0, 1, 2)]
            print(f"  {decoder:<10} in-process {r[0]:6.1f}   1 worker {r[1]:6.1f}   2 workers {r[2]:6.1f}   "
                  f"2w/1w {r[2] / r[1]:.2f}x   per core {r[0]:.1f} (decoder alone: decode + resize {dec[decoder]:.1f})")
        c32a = ceiling(args.device, torch.float32)
        f32 = forward_rate(fp32.backbone, args.device, torch.float32, batch, 448, args.rounds)
        b16 = FeatureExtractor(build("backbone", f"hf:{model}", image_size=448), batch_size=batch, device=args.device,
                               dtype="bf16", num_workers=0)
        c16 = ceiling(args.device, torch.bfloat16)
        fb16 = forward_rate(b16.backbone, args.device, torch.bfloat16, batch, 448, args.rounds)
        c32 = (c32a + ceiling(args.device, torch.float32)) / 2
        gflop = vit_gflop(fp32.backbone, 448)
        f_fp32, _, _ = fp32.extract_regions(regions[: 2 * batch], progress=False)
        f_bf16, _, _ = b16.extract_regions(regions[: 2 * batch], progress=False)
        cos = float(torch.nn.functional.cosine_similarity(f_fp32, f_bf16).min())
        workers = 2 if not gpu else min(8, os.cpu_count() or 1)

        def e2e_rate(decoder: str) -> float:
            ex = FeatureExtractor(build("backbone", f"hf:{model}", image_size=448), batch_size=batch,
                                  device=args.device, dtype="bf16", num_workers=workers, decoder=decoder)
            ex.extract_regions(regions[:batch], progress=False)  # warm-up
            t = time.perf_counter()
            ex.extract_regions(regions, progress=False)
            return len(regions) / (time.perf_counter() - t)

        e2e = e2e_rate("pil-draft")
        # torchvision imports in the second environment, or on a GPU machine's own: decoded on the device
        e2e_tv = e2e_rate("torchvision-gpu") if importlib.util.find_spec("torchvision") is not None else None
        print(f"\nmatmul ceilings ({args.device}): fp32 {c32:.0f} GFLOP/s, bf16 {c16:.0f} GFLOP/s ({c16 / c32:.1f}x)")
        print(f"forward (ready tensors): fp32 {f32:.2f} img/s ({f32 * gflop:.0f} GFLOP/s = {f32 * gflop / c32:.2f} of the "
              f"fp32 ceiling); bf16 cast {fb16:.2f} img/s ({fb16 * gflop / c16:.2f} of the bf16 ceiling, "
              f"{fb16 / f32:.2f}x fp32); {gflop:.0f} GFLOP/image")
        print(f"bf16 cast vs fp32 pooled features: min cosine {cos:.5f}")
        if not gpu:
            print(bf16_breakdown(b16.backbone, batch, 448, c16))
        print(f"input pipeline at 2 workers sustains {pipe['pil', 2] / fb16:.1f}x (pil) / {pipe['pil-draft', 2] / fb16:.1f}x "
              f"(pil-draft) the bf16 forward rate; end to end extract_regions bf16 + pil-draft with {workers} workers: {e2e:.2f} img/s "
              f"= {e2e / fb16:.2f} of the forward rate")
        if e2e_tv is not None:
            print(f"end to end bf16 + torchvision-gpu decoder ({args.device} decode) with {workers} workers: "
                  f"{e2e_tv:.2f} img/s = {e2e_tv / fb16:.2f} of the forward rate")
        checks = [
            ("input pipeline: 2 workers >= 1.7x 1 worker (pil-draft)", pipe["pil-draft", 2] / pipe["pil-draft", 1] >= 1.7),
            ("input pipeline: 2 workers >= 1.7x 1 worker (pil)", pipe["pil", 2] / pipe["pil", 1] >= 1.7),
            ("per-core pil-draft decoder (decode + resize) >= 80 images/s (1600x1200 -> 448)", dec["pil-draft"] >= 80),
            ("per-core pil-draft input pipeline (+ mask decode and grid) >= 80 images/s", pipe["pil-draft", 0] >= 80),
            ("bf16 cast >= 0.6 of the bf16 matmul ceiling", fb16 * gflop / c16 >= 0.6),
            ("bf16 cast pooled features min cosine >= 0.999", cos >= 0.999),
        ]
        if gpu:
            checks.append(("GPU end to end >= 0.5 of the forward rate", max(e2e, e2e_tv or 0) / fb16 >= 0.5))
        print()
        for text, ok in checks:
            print(f"  [{'PASS' if ok else 'MISS'}] {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
