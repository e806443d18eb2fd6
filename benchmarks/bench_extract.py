"""Feature extraction end to end: JPEG files on disk -> pooled DINOv2-B/14 features, against this CPU's ceiling.

    python benchmarks/bench_extract.py                        # 16 JPEGs, batch 4, all paths (~3-4 min)
    python benchmarks/bench_extract.py --n 32 --batch-size 8  # more rounds, another batch size
    python benchmarks/bench_extract.py --no-naive --json out.json

The model is DINOv2 ViT-B/14 with random weights (``Dinov2Config(hidden_size=768, num_hidden_layers=12,
num_attention_heads=12, patch_size=14, image_size=518)``, sdpa attention), written with ``save_pretrained``
to a temp dir and loaded as ``hf:<dir>``, so fmmc's real loading and extraction path runs
(:meth:`fmmc.vision.extractor.FeatureExtractor.extract_regions`, feature cache off) at 448x448 (32x32 patches).

Measured in one run, each phase in a fresh subprocess:

* the fp32 and bf16 matmul ceilings: 2048^3 matmuls on ``--threads`` threads, standalone before and after,
  and inside every timing round;
* model GFLOP per image, counted by ``torch.utils.flop_counter.FlopCounterMode`` over one forward (CPU
  flash attention added with torch's own sdpa formula) and checked against an analytic count;
* timing, as interleaved A/B rounds (each round: one batch through every path plus a ceiling probe, in a
  shuffled order, so every path sees the same background load; ratios are taken within a round):
  the bare model forward on ready tensors (the bound for any extraction path); fmmc fp32, fp32 with
  ``compile=True`` (torch.compile) and bf16 (weights cast); and a naive loop as a user would write it,
  ``AutoImageProcessor`` (448x448, no crop) + ``AutoModel``, one image per call, masked max-pool after;
* peak RSS of each path alone (``ru_maxrss`` of a process that loads it and runs one batch);
* min cosine between bf16 and fp32 pooled features (and compiled vs eager, fmmc vs the naive loop).

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
    from fmmc.core.registry import build
    from fmmc.vision.extractor import FeatureExtractor

    backbone = build("backbone", f"hf:{args.model}", image_size=args.image_size)
    return FeatureExtractor(backbone, pooling="max", batch_size=args.batch_size, dtype=dtype, cache=None)


def _regions(args: argparse.Namespace) -> list[Any]:
    from fmmc.data.records import Region

    items = json.loads(Path(args.items).read_text())
    return [Region(image=Path(it["image"]), mask=Path(it["mask"]), id=f"r{k:04d}") for k, it in enumerate(items)]


def phase_flops(args: argparse.Namespace) -> dict[str, Any]:
    """FLOP of one forward of the backbone at ``image_size`` (batch 1), counted op by op.

    torch's counter knows the CUDA attention kernels only; CPU sdpa runs
    ``aten._scaled_dot_product_flash_attention_for_cpu``, counted here with torch's own sdpa formula.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_sdpa(query_shape: Any, key_shape: Any, value_shape: Any, *a: Any, out_shape: Any = None, **k: Any) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    cpu_op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    ex = _extractor(args, "fp32")
    x = torch.randn(1, 3, args.image_size, args.image_size)
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping={cpu_op: cpu_sdpa} if cpu_op else {}) as fc:
        ex.backbone(x)
    cfg = ex.backbone.model.config
    n, d, f = 1 + (args.image_size // cfg.patch_size) ** 2, cfg.hidden_size, int(cfg.hidden_size * cfg.mlp_ratio)
    analytic = cfg.num_hidden_layers * (2 * n * (4 * d * d + 2 * d * f) + 4 * n * n * d) + 2 * (n - 1) * 3 * cfg.patch_size**2 * d
    return {"gflop_per_image": fc.get_total_flops() / 1e9, "analytic_gflop": analytic / 1e9, "tokens": n,
            "attn_implementation": getattr(cfg, "_attn_implementation", "?"), "forward_batch": ex.forward_batch}


class Naive:
    """What a user would write: processor + model, one image per call, then a masked max-pool."""

    def __init__(self, model_dir: str, image_size: int) -> None:
        from transformers import AutoImageProcessor, AutoModel

        self.processor = AutoImageProcessor.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).eval()
        self.size = image_size
        self.grid = image_size // self.model.config.patch_size

    def one(self, image_path: str, mask_path: str) -> Any:
        import torch
        from PIL import Image

        image = Image.open(image_path).convert("RGB")
        inputs = self.processor(images=image, size={"height": self.size, "width": self.size}, do_center_crop=False,
                                return_tensors="pt")
        with torch.no_grad():
            hidden = self.model(**inputs).last_hidden_state  # [1, 1 + grid*grid, C]
        fmap = hidden[0, 1:].reshape(self.grid, self.grid, -1)
        mask = Image.open(mask_path).convert("L").resize((self.grid, self.grid), Image.NEAREST)
        cells = torch.from_numpy(np.asarray(mask) > 127)
        return fmap[cells].max(dim=0).values

    def run(self, regions: list[Any]) -> Any:
        import torch

        return torch.stack([self.one(str(r.image), str(r.mask)) for r in regions])


def _methods(args: argparse.Namespace) -> dict[str, Any]:
    """name -> callable(regions) -> features [n, C]; fmmc fp32 and bf16 share one backbone."""
    import torch

    from fmmc.vision.extractor import FeatureExtractor

    fp32 = _extractor(args, "fp32")
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size)

    def forward_only(rs: list[Any]) -> None:
        with torch.inference_mode():
            for i in range(0, len(rs), fp32.forward_batch):  # as many images per call as fmmc's path uses
                fp32.backbone(pixels[i : min(len(rs), i + fp32.forward_batch)])

    # the bare model forward on ready tensors: the ceiling of any extraction path with this model
    methods: dict[str, Any] = {"forward": forward_only, "fmmc_fp32": lambda rs: _run_fmmc(fp32, rs)}
    if not args.no_compile:
        compiled = FeatureExtractor(fp32.backbone, pooling="max", batch_size=args.batch_size, cache=None, compile=True)
        methods["fmmc_fp32_compiled"] = lambda rs: _run_fmmc(compiled, rs)
    if not args.no_bf16:
        bf16 = FeatureExtractor(fp32.backbone, pooling="max", batch_size=args.batch_size, dtype="bf16", cache=None)
        methods["fmmc_bf16"] = lambda rs: _run_fmmc(bf16, rs)
    if not args.no_naive:
        methods["naive"] = Naive(args.model, args.image_size).run
    return methods


def _run_fmmc(ex: Any, regions: list[Any]) -> Any:
    feats, ok, failed = ex.extract_regions(regions, progress=False)
    if failed:
        raise RuntimeError(f"{len(failed)} regions failed: {failed[:2]}")
    return feats


def _ceiling_probe(reps: int = 3) -> dict[str, float]:
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(CEILING_N, CEILING_N, dtype=dtype)
        b = torch.randn(CEILING_N, CEILING_N, dtype=dtype)
        torch.mm(a, b)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t)
        out[name] = 2 * CEILING_N**3 / float(np.median(times)) / 1e9
    return out


def phase_timing(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved A/B rounds: each round times one batch of every method and a ceiling probe, in a shuffled
    order, so every method sees the same mix of background load; ratios are taken within a round."""
    import random

    methods = _methods(args)
    regions = _regions(args)
    chunks = [regions[i : i + args.batch_size] for i in range(0, len(regions), args.batch_size)]
    warmup = {}
    for name, fn in methods.items():
        t = time.perf_counter()
        fn(chunks[0])  # warm-up: oneDNN kernels, allocator (and the compile)
        warmup[name] = time.perf_counter() - t
    rng = random.Random(0)
    rounds: list[dict[str, Any]] = []
    feats: dict[str, list[Any]] = {k: [] for k in methods}
    for chunk in chunks:
        order = list(methods) + ["ceiling"]
        rng.shuffle(order)
        rec: dict[str, Any] = {}
        for name in order:
            if name == "ceiling":
                rec["ceiling"] = _ceiling_probe()
                continue
            t = time.perf_counter()
            feats[name].append(methods[name](chunk))
            rec[name] = len(chunk) / (time.perf_counter() - t)
        rounds.append(rec)
    import torch

    for name, parts in feats.items():
        if parts and parts[0] is not None:
            np.save(Path(args.workdir) / f"feats_{name}.npy", torch.cat(parts).float().numpy())
    return {"rounds": rounds, "warmup_s": warmup}


def phase_rss(args: argparse.Namespace) -> dict[str, Any]:
    """Peak resident memory of one method alone: load it and run one batch."""
    method = _methods(args)[args.method]
    method(_regions(args)[: args.batch_size])
    return {}


PHASES = {"ceiling": phase_ceiling, "flops": phase_flops, "timing": phase_timing, "rss": phase_rss}


def run_phase(args: argparse.Namespace, name: str, method: str = "") -> dict[str, Any]:
    """Run one phase in a fresh interpreter; returns its JSON result plus its peak RSS."""
    out = Path(args.workdir) / f"{name}-{method}-{time.time_ns()}.json"
    cmd = [sys.executable, __file__, "--phase", name, "--result", str(out), "--workdir", args.workdir,
           "--model", args.model, "--items", args.items, "--threads", str(args.threads), "--reps", str(args.reps),
           "--batch-size", str(args.batch_size), "--image-size", str(args.image_size), "--method", method]
    cmd += ["--no-naive"] if args.no_naive else []
    cmd += ["--no-bf16"] if args.no_bf16 else []
    cmd += ["--no-compile"] if args.no_compile else []
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    result = PHASES[args.phase](args)
    result["peak_rss_mib"] = _peak_rss_mib()
    Path(args.result).write_text(json.dumps(result))


# ---------------------------------------------------------------- report

def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [n, C] arrays."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def summarize_rounds(rounds: list[dict[str, Any]], gflop: float) -> dict[str, dict[str, float]]:
    """Per method: median img/s, and the medians of its per-round ratios (to that round's ceilings, to naive)."""
    out: dict[str, dict[str, float]] = {}
    for name in [k for k in rounds[0] if k != "ceiling"]:
        ips = np.array([r[name] for r in rounds])
        fp32 = np.array([r[name] * gflop / r["ceiling"]["fp32"] for r in rounds])
        bf16 = np.array([r[name] * gflop / r["ceiling"]["bf16"] for r in rounds])
        row = {"img_per_s": float(np.median(ips)), "img_per_s_min": float(ips.min()), "img_per_s_max": float(ips.max()),
               "gflop_per_s": float(np.median(ips)) * gflop, "of_fp32_ceiling": float(np.median(fp32)),
               "of_fp32_ceiling_min": float(fp32.min()), "of_fp32_ceiling_max": float(fp32.max()),
               "of_bf16_ceiling": float(np.median(bf16))}
        if "naive" in rounds[0]:
            vs = np.array([r[name] / r["naive"] for r in rounds])
            row.update(vs_naive=float(np.median(vs)), vs_naive_min=float(vs.min()), vs_naive_max=float(vs.max()))
        out[name] = row
    return out


NAMES = {"forward": "bare model forward (ready tensors, no I/O)", "naive": "naive loop (processor + model, 1 img/call)", "fmmc_fp32": "fmmc extract_regions fp32",
         "fmmc_bf16": "fmmc extract_regions bf16 (cast)", "fmmc_fp32_compiled": "fmmc extract_regions fp32 compile=True"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--n", type=int, default=16, help="JPEGs per method (default 16); n / batch-size rounds")
    p.add_argument("--batch-size", type=int, default=4, help="extraction batch (default 4)")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--threads", type=int, default=2, help="torch threads for every phase (default 2)")
    p.add_argument("--reps", type=int, default=7, help="matmuls timed for the standalone ceiling (median)")
    p.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 run")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile run (saves its 15-30 s compile)")
    p.add_argument("--no-rss", action="store_true", help="skip the per-method peak-memory processes")
    p.add_argument("--json", help="also write all figures to this JSON file")
    # internal: one phase in a child process
    p.add_argument("--phase", choices=list(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--method", default="", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--items", help=argparse.SUPPRESS)
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
        args.items = str(work / "items.json")
        Path(args.items).write_text(json.dumps(write_jpegs(work / "data", args.n)))
        print(f"setup: random DINOv2-B/14 saved to {args.model}; {args.n} JPEGs 640x480 + masks", file=sys.stderr)
        res: dict[str, Any] = {"ceiling_before": run_phase(args, "ceiling"), "flops": run_phase(args, "flops")}
        print("timing (interleaved rounds) ...", file=sys.stderr)
        res["timing"] = run_phase(args, "timing")
        res["ceiling_after"] = run_phase(args, "ceiling")
        methods = ["fmmc_fp32"] + ([] if args.no_bf16 else ["fmmc_bf16"]) + ([] if args.no_naive else ["naive"])
        res["rss"] = {} if args.no_rss else {m: run_phase(args, "rss", m)["peak_rss_mib"] for m in methods}
        methods += [] if args.no_compile else ["fmmc_fp32_compiled"]
        feats = {k: np.load(work / f"feats_{k}.npy") for k in methods}

    gflop = res["flops"]["gflop_per_image"]
    rounds = res["timing"]["rounds"]
    rows = summarize_rounds(rounds, gflop)
    ceil_rounds = {d: [r["ceiling"][d] for r in rounds] for d in ("fp32", "bf16")}
    summary: dict[str, Any] = {"raw": res, "rows": rows, "gflop_per_image": gflop}

    print(f"\nDINOv2-B/14 (random weights, {res['flops']['attn_implementation']} attention) at "
          f"{args.image_size}x{args.image_size} = {res['flops']['tokens']} tokens; {args.n} JPEGs 640x480 + mask PNGs; "
          f"batch {args.batch_size} (fmmc forward_batch {res['flops']['forward_batch']}); torch {torch.__version__}, {args.threads} threads; {_cpu_name()}, {os.cpu_count()} CPUs")
    print(f"model: {gflop:.1f} GFLOP per image (FlopCounterMode over one forward; analytic count "
          f"{res['flops']['analytic_gflop']:.1f})")
    for d in ("fp32", "bf16"):
        cr = ceil_rounds[d]
        print(f"{d} matmul ceiling ({CEILING_N}^3, {args.threads} threads): standalone before "
              f"{res['ceiling_before'][d]:.0f} / after {res['ceiling_after'][d]:.0f} GFLOP/s; in the rounds median "
              f"{np.median(cr):.0f} (min {min(cr):.0f}, max {max(cr):.0f})")
    spread = (max(ceil_rounds["fp32"]) - min(ceil_rounds["fp32"])) / float(np.median(ceil_rounds["fp32"]))
    if spread > 0.15:
        print(f"NOTE: the fp32 ceiling varied {spread:.0%} between rounds: other processes share these cores. "
              "Ratios are taken within each round (median over rounds, [min-max] shown).")
    print(f"\n{len(rounds)} interleaved rounds of {args.batch_size} images per method; medians [min-max] over rounds")
    print(f"{'path':<44}{'img/s':>7}{'GFLOP/s':>9}{'of fp32 ceiling':>22}{'vs naive':>21}{'peak RSS':>11}")
    for k, r in rows.items():
        vs = f"{r['vs_naive']:.2f}x [{r['vs_naive_min']:.2f}-{r['vs_naive_max']:.2f}]" if "vs_naive" in r else "-"
        of = f"{r['of_fp32_ceiling']:.2f} [{r['of_fp32_ceiling_min']:.2f}-{r['of_fp32_ceiling_max']:.2f}]"
        rss = f"{res['rss'][k] / 1024:.2f} GiB" if k in res["rss"] else "-"
        print(f"{NAMES[k]:<44}{r['img_per_s']:>7.3f}{r['gflop_per_s']:>9.1f}{of:>22}{vs:>21}{rss:>11}")
    if "fmmc_bf16" in rows:
        print(f"(bf16, weights cast: {rows['fmmc_bf16']['of_bf16_ceiling']:.2f} of the bf16 matmul ceiling)")
    fwd = np.median([r["fmmc_fp32"] / r["forward"] for r in rounds])
    summary["fmmc_vs_forward"] = float(fwd)
    print(f"fmmc fp32 end to end (JPEG decode, resize, masks, pooling) = {fwd:.2f} of the bare forward's rate")
    if "fmmc_fp32_compiled" in rows:
        print(f"compile=True: one-off warm-up (compile) {res['timing']['warmup_s']['fmmc_fp32_compiled']:.0f} s, then "
              f"{np.median([r['fmmc_fp32_compiled'] / r['fmmc_fp32'] for r in rounds]):.2f}x the eager fp32 rate")
    print()
    checks = []
    if "fmmc_bf16" in feats:
        cos = cosines(feats["fmmc_fp32"], feats["fmmc_bf16"])
        summary["bf16_cosine"] = {"min": float(cos.min()), "mean": float(cos.mean())}
        print(f"bf16 vs fp32 pooled features: min cosine {cos.min():.5f} (mean {cos.mean():.5f}) over {len(cos)} regions")
        checks.append(("bf16 pooled features keep cosine >= 0.999 to fp32", bool(cos.min() >= 0.999)))
    if "fmmc_fp32_compiled" in feats:
        cos = cosines(feats["fmmc_fp32"], feats["fmmc_fp32_compiled"])
        summary["compiled_cosine"] = {"min": float(cos.min())}
        print(f"compiled vs eager fp32 pooled features: min cosine {cos.min():.6f}")
    if "naive" in feats:
        cos = cosines(feats["fmmc_fp32"], feats["naive"])
        summary["naive_cosine"] = {"min": float(cos.min()), "mean": float(cos.mean())}
        print(f"fmmc fp32 vs naive pooled features: min cosine {cos.min():.4f} (mean {cos.mean():.4f}; same model, "
              "different JPEG decode/resize and mask-to-grid rule)")
    checks.append(("fmmc fp32 >= 0.8 of the fp32 matmul ceiling", rows["fmmc_fp32"]["of_fp32_ceiling"] >= 0.8))
    if "fmmc_fp32_compiled" in rows:
        checks.append(("fmmc fp32 compile=True >= 0.8 of the fp32 matmul ceiling",
                       rows["fmmc_fp32_compiled"]["of_fp32_ceiling"] >= 0.8))
    if "naive" in rows:
        checks.append(("fmmc fp32 >= 2x the naive loop at the same 448 input", rows["fmmc_fp32"]["vs_naive"] >= 2))
        if "fmmc_fp32_compiled" in rows:
            checks.append(("fmmc fp32 compile=True >= 2x the naive loop", rows["fmmc_fp32_compiled"]["vs_naive"] >= 2))
        if "fmmc_bf16" in rows:
            checks.append(("fmmc bf16 >= 2x the naive loop (fp32)", rows["fmmc_bf16"]["vs_naive"] >= 2))
    for text, ok in checks:
        print(f"  [{'PASS' if ok else 'MISS'}] {text}")
    summary["checks"] = dict(checks)
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1, default=float))
    return 0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    sys.exit(main())
