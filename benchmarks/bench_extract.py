"""Feature extraction end to end: JPEG files on disk -> pooled DINOv2-B/14 features, against this CPU's ceiling.

    python benchmarks/bench_extract.py                        # 16 JPEGs, batch 4, fp32 + bf16 + naive loop
    python benchmarks/bench_extract.py --n 32 --batch-size 8  # longer, steadier
    python benchmarks/bench_extract.py --no-naive --json out.json

The model is DINOv2 ViT-B/14 with random weights (``Dinov2Config(hidden_size=768, num_hidden_layers=12,
num_attention_heads=12, patch_size=14, image_size=518)``, sdpa attention), written with ``save_pretrained``
to a temp dir and loaded as ``hf:<dir>``, so fmmc's real loading and extraction path runs
(:meth:`fmmc.vision.extractor.FeatureExtractor.extract_regions`, feature cache off) at 448x448 (32x32 patches).

Every measurement runs in a fresh subprocess (its own peak RSS, no warm caches shared), in one run:

* the fp32 (and bf16) matmul ceiling: 2048^3 matmuls on ``--threads`` threads, before and after the models;
* model GFLOP per image, counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward;
* fmmc fp32 and bf16 (autocast) extraction: images/s, model FLOP/s and its ratio to the ceiling;
* a naive loop as a user would write it: ``AutoImageProcessor`` (448x448, no crop) + ``AutoModel``, one
  image per call, masked max-pool in torch afterwards;
* the min cosine between bf16 and fp32 pooled features (and between fmmc and the naive loop).

Timings drift on shared machines: compare the ratios printed by one run, not absolute figures across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

CEILING_N = 2048


# ---------------------------------------------------------------- setup (parent process)

def write_model(path: Path, seed: int = 0) -> Path:
    """DINOv2-B/14 with random weights + the real checkpoint's image processor config."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=14, image_size=518,
                       attn_implementation="sdpa")
    Dinov2Model(cfg).eval().save_pretrained(path)
    # facebook/dinov2-base's processor: short side 256, centre crop 224, bicubic, ImageNet mean/std
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
                      do_convert_rgb=True).save_pretrained(path)
    return path


def write_jpegs(root: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[dict[str, str]]:
    """``n`` photo-like JPEGs (smooth colour fields + texture + noise) with an elliptical mask PNG each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    items = []
    for k in range(n):
        low = rng.normal(0, 1, (6, 8, 3)).astype(np.float32)
        field = np.asarray(Image.fromarray(((low - low.min()) / np.ptp(low) * 255).astype(np.uint8)).resize((w, h),
                                                                                                        Image.BICUBIC))
        period = rng.uniform(4, 24)
        stripes = 30 * np.sin(2 * np.pi * (xx * np.cos(k) + yy * np.sin(k)) / period)[..., None]
        img = np.clip(field + stripes + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        mask = ((xx - cx) / (w * rng.uniform(0.15, 0.35))) ** 2 + ((yy - cy) / (h * rng.uniform(0.15, 0.35))) ** 2 < 1
        Image.fromarray(img).save(root / "images" / f"{k:04d}.jpg", quality=90)
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{k:04d}.png")
        items.append({"image": str(root / "images" / f"{k:04d}.jpg"), "mask": str(root / "masks" / f"{k:04d}.png")})
    return items


# ---------------------------------------------------------------- phases (each in its own process)

def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def phase_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """Best sustained 2048^3 matmul rate, fp32 and bf16, on ``threads`` threads (median of ``reps``)."""
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(CEILING_N, CEILING_N, dtype=dtype)
        b = torch.randn(CEILING_N, CEILING_N, dtype=dtype)
        for _ in range(2):
            torch.mm(a, b)
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t)
        out[name] = 2 * CEILING_N**3 / float(np.median(times)) / 1e9
    return out


def _extractor(args: argparse.Namespace, dtype: str) -> Any:
    from fmmc.registry import build
    from fmmc.vision.extractor import FeatureExtractor

    backbone = build("backbone", f"hf:{args.model}", image_size=args.image_size)
    return FeatureExtractor(backbone, pooling="max", batch_size=args.batch_size, dtype=dtype, cache=None)


def _regions(args: argparse.Namespace) -> list[Any]:
    from fmmc.data.records import Region

    items = json.loads(Path(args.items).read_text())
    return [Region(image=Path(it["image"]), mask=Path(it["mask"]), id=f"r{k:04d}") for k, it in enumerate(items)]


def phase_flops(args: argparse.Namespace) -> dict[str, Any]:
    """FLOP of one forward of the backbone at ``image_size`` (batch 1), counted op by op."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ex = _extractor(args, "fp32")
    x = torch.randn(1, 3, args.image_size, args.image_size)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        ex.backbone(x)
    attn = getattr(ex.backbone.model.config, "_attn_implementation", "?")
    return {"gflop_per_image": counter.get_total_flops() / 1e9, "attn_implementation": attn,
            "tokens": 1 + (args.image_size // 14) ** 2}


def phase_fmmc(args: argparse.Namespace) -> dict[str, Any]:
    """fmmc's path: JPEG + mask files -> FeatureExtractor.extract_regions (cache off), timed after a warm-up batch."""
    ex = _extractor(args, args.dtype)
    regions = _regions(args)
    ex.extract_regions(regions[: args.batch_size], progress=False)  # warm-up: oneDNN kernels, allocator
    t = time.perf_counter()
    feats, ok, failed = ex.extract_regions(regions, progress=False)
    elapsed = time.perf_counter() - t
    if failed:
        raise RuntimeError(f"{len(failed)} regions failed: {failed[:2]}")
    np.save(Path(args.workdir) / f"feats_{args.dtype}.npy", feats.numpy())
    return {"seconds": elapsed, "images": len(ok)}


def phase_naive(args: argparse.Namespace) -> dict[str, Any]:
    """What a user would write: processor + model, one image per call, then a masked max-pool."""
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(args.model)
    model = AutoModel.from_pretrained(args.model).eval()
    items = json.loads(Path(args.items).read_text())
    size = args.image_size
    grid = size // 14

    def one(it: dict[str, str]) -> torch.Tensor:
        image = Image.open(it["image"]).convert("RGB")
        inputs = processor(images=image, size={"height": size, "width": size}, do_center_crop=False,
                           return_tensors="pt")
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state  # [1, 1 + grid*grid, C]
        fmap = hidden[0, 1:].reshape(grid, grid, -1)
        mask = Image.open(it["mask"]).convert("L").resize((grid, grid), Image.NEAREST)
        cells = torch.from_numpy(np.asarray(mask) > 127)
        return fmap[cells].max(dim=0).values

    one(items[0])  # warm-up
    t = time.perf_counter()
    feats = [one(it) for it in items]
    elapsed = time.perf_counter() - t
    np.save(Path(args.workdir) / "feats_naive.npy", torch.stack(feats).numpy())
    return {"seconds": elapsed, "images": len(items)}


PHASES = {"ceiling": phase_ceiling, "flops": phase_flops, "fmmc": phase_fmmc, "naive": phase_naive}


def run_phase(args: argparse.Namespace, name: str, **extra: str) -> dict[str, Any]:
    """Run one phase in a fresh interpreter; returns its JSON result plus its peak RSS."""
    out = Path(args.workdir) / f"{name}-{extra.get('dtype', '')}-{time.time_ns()}.json"
    cmd = [sys.executable, __file__, "--phase", name, "--result", str(out), "--workdir", args.workdir,
           "--model", args.model, "--items", args.items, "--threads", str(args.threads), "--reps", str(args.reps),
           "--batch-size", str(args.batch_size), "--image-size", str(args.image_size)]
    for k, v in extra.items():
        cmd += [f"--{k}", v]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    result = PHASES[args.phase](args)
    result["peak_rss_mib"] = _peak_rss_mib()
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------- report

def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=16, help="JPEGs to extract (default 16)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--threads", type=int, default=2, help="torch threads for every phase (default 2)")
    p.add_argument("--reps", type=int, default=7, help="matmuls timed for the ceiling (median)")
    p.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 run")
    p.add_argument("--json", help="also write all figures to this JSON file")
    # internal: one phase in a child process
    p.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--items", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="fp32", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.phase:
        _child(args)
        return 0

    import torch

    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fmmc-bench-") as tmp:
        work = Path(tmp)
        args.workdir = str(work)
        args.model = str(write_model(work / "dinov2-b14-random"))
        items = write_jpegs(work / "data", args.n)
        args.items = str(work / "items.json")
        Path(args.items).write_text(json.dumps(items))
        print(f"setup done: random DINOv2-B/14 in {args.model}, {args.n} JPEGs 640x480 + masks", file=sys.stderr)

        res: dict[str, Any] = {"ceiling_before": run_phase(args, "ceiling")}
        res["flops"] = run_phase(args, "flops")
        res["fmmc_fp32"] = run_phase(args, "fmmc", dtype="fp32")
        if not args.no_naive:
            res["naive"] = run_phase(args, "naive")
        if not args.no_bf16:
            res["fmmc_bf16"] = run_phase(args, "fmmc", dtype="bf16")
        res["ceiling_after"] = run_phase(args, "ceiling")
        feats = {k: np.load(work / f"feats_{k}.npy") for k in ("fp32", "bf16", "naive") if (work / f"feats_{k}.npy").exists()}

    gflop = res["flops"]["gflop_per_image"]
    ceil = {d: (res["ceiling_before"][d] + res["ceiling_after"][d]) / 2 for d in ("fp32", "bf16")}

    def row(key: str) -> dict[str, float]:
        r = res[key]
        ips = r["images"] / r["seconds"]
        return {"img_per_s": ips, "gflop_per_s": ips * gflop, "rss_mib": r["peak_rss_mib"]}

    rows = {k: row(k) for k in ("naive", "fmmc_fp32", "fmmc_bf16") if k in res}
    naive_ips = rows["naive"]["img_per_s"] if "naive" in rows else None
    summary: dict[str, Any] = {"raw": res, "rows": rows, "ceiling": ceil, "gflop_per_image": gflop}

    print(f"\nDINOv2-B/14 (random weights, {res['flops']['attn_implementation']} attention) at "
          f"{args.image_size}x{args.image_size} = {res['flops']['tokens']} tokens; {args.n} JPEGs 640x480 + mask PNGs; "
          f"batch {args.batch_size}; torch {torch.__version__}, {args.threads} threads; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    print(f"model: {gflop:.1f} GFLOP per image (FlopCounterMode, one forward)")
    print(f"matmul ceiling ({CEILING_N}^3, {args.threads} threads, median of {args.reps}): "
          f"fp32 {ceil['fp32']:.1f} GFLOP/s (before {res['ceiling_before']['fp32']:.1f}, after "
          f"{res['ceiling_after']['fp32']:.1f}); bf16 {ceil['bf16']:.1f} GFLOP/s (before "
          f"{res['ceiling_before']['bf16']:.1f}, after {res['ceiling_after']['bf16']:.1f})\n")
    names = {"naive": "naive loop (processor + model, 1 img/call)", "fmmc_fp32": "fmmc extract_regions fp32",
             "fmmc_bf16": "fmmc extract_regions bf16 autocast"}
    print(f"{'path':<44}{'img/s':>8}{'GFLOP/s':>9}{'/fp32 ceil':>11}{'/bf16 ceil':>11}{'vs naive':>10}{'peak RSS':>11}")
    for k, r in rows.items():
        vs = f"{r['img_per_s'] / naive_ips:.2f}x" if naive_ips else "-"
        r["of_fp32_ceiling"] = r["gflop_per_s"] / ceil["fp32"]
        r["of_bf16_ceiling"] = r["gflop_per_s"] / ceil["bf16"]
        r["vs_naive"] = r["img_per_s"] / naive_ips if naive_ips else None
        print(f"{names[k]:<44}{r['img_per_s']:>8.3f}{r['gflop_per_s']:>9.1f}{r['of_fp32_ceiling']:>11.2f}"
              f"{r['of_bf16_ceiling']:>11.2f}{vs:>10}{r['rss_mib'] / 1024:>9.2f} GiB")
    print()
    checks = []
    if "fp32" in feats and "bf16" in feats:
        cos = cosines(feats["fp32"], feats["bf16"])
        summary["bf16_cosine"] = {"min": float(cos.min()), "mean": float(cos.mean())}
        print(f"bf16 vs fp32 pooled features: min cosine {cos.min():.5f} (mean {cos.mean():.5f}) over {len(cos)} regions")
        checks.append(("bf16 pooled features keep cosine >= 0.999", cos.min() >= 0.999))
    if "fp32" in feats and "naive" in feats:
        cos = cosines(feats["fp32"], feats["naive"])
        summary["naive_cosine"] = {"min": float(cos.min()), "mean": float(cos.mean())}
        print(f"fmmc fp32 vs naive loop pooled features: min cosine {cos.min():.4f} (mean {cos.mean():.4f}; "
              "they differ in JPEG decode and mask-to-grid rules)")
    checks.append(("fmmc fp32 >= 0.8 of the fp32 matmul ceiling", rows["fmmc_fp32"]["of_fp32_ceiling"] >= 0.8))
    if naive_ips:
        checks.append(("fmmc fp32 >= 2x the naive loop", rows["fmmc_fp32"]["vs_naive"] >= 2))
        if "fmmc_bf16" in rows:
            checks.append(("fmmc bf16 >= 2x the naive loop (fp32)", rows["fmmc_bf16"]["vs_naive"] >= 2))
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'MISS'}] {text}")
    summary["checks"] = {t: bool(ok) for t, ok in checks}
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
