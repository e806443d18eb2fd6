"""``fmmc features DATASET --backbone SPEC [--describer SPEC] [--engine local|ray] [key=value ...]``.

Precompute what ``fmmc train`` (head mode) needs from the frozen models: pooled vision features into the
feature cache and, with ``--describer``, region descriptions into the description cache. Training with the
same settings (``--config`` takes them from a TrainConfig file, ``key=value`` arguments as ``fmmc train``
takes them) then reads both and runs no backbone or describer. With ``--engine ray`` the work runs as a
Ray Data pipeline over an actor pool (docs/ray.md)::

    fmmc features data/synth --backbone hf:facebook/dinov2-base --engine ray --ray-address auto --num-gpus 0.5
    fmmc train --data data/synth --backbone hf:facebook/dinov2-base ...     # finds every feature cached
"""

from __future__ import annotations

import argparse
import sys

from fmmc.cli.options import add_allow_outside, add_num_workers


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="precompute vision features (and descriptions) for training, locally or on Ray",
                       description="Fill the feature cache (and, with --describer, the description cache) that "
                                   "`fmmc train` reads. Settings: TrainConfig defaults < --config FILE < flags < key=value.")
    p.add_argument("data", help="dataset folder with metadata.jsonl, or folder:DIR (DIR/<class>/*.jpg, as for "
                                "`fmmc train --data`)")
    p.add_argument("--config", help="a TrainConfig YAML/JSON file: use its backbone, image_size, pooling, "
                                    "min_coverage, dtype, null_mask, cache_dir, describer")
    p.add_argument("--backbone", help="vision backbone spec (see `fmmc list backbones`); 'none' skips features")
    p.add_argument("--describer", help="also describe every region with this describer (see `fmmc list describers`)")
    p.add_argument("--split", help="only regions of this split (default: all)")
    p.add_argument("--image-size", type=int)
    p.add_argument("--pooling", help="max | mean | gem | cls, or several joined by '+' (max+mean)")
    p.add_argument("--min-coverage", type=float)
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16", "auto"],
                   help="backbone precision: bf16/fp16 cast the frozen weights; auto = bf16 where the device has "
                        "native bf16 (CUDA, AVX512-BF16/AMX CPUs), else fp32 (part of the cache key)")
    p.add_argument("--decoder", choices=["pil", "pil-draft", "torchvision-gpu"],  # fmmc.vision.loading.DECODERS
                   help="pil: full decode (default, the one rule); pil-draft: JPEG DCT-scaled decode, faster on large "
                        "photos, slightly other pixels; torchvision-gpu: JPEGs decoded and resized on the device "
                        "(nvJPEG on CUDA; needs torchvision) (each is part of the cache key)")
    p.add_argument("--null-mask", action="store_true", default=None, help="pool the whole image (ablation)")
    p.add_argument("--device", default="auto", help="auto (cuda when the worker has a GPU), cpu, cuda, cuda:1")
    p.add_argument("--batch-size", type=int, help="images per forward pass and per engine batch (default 8)")
    p.add_argument("--cache-dir", help="cache root, as TrainConfig.cache_dir (default ~/.cache/fmmc or $FMMC_CACHE)")
    add_engine_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_allow_outside(p)
    add_num_workers(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="TrainConfig overrides, as `fmmc train` takes them: layers=3, scales=[1.0,1.5], "
                        "flip_tta=true, ... (defaults < --config < flags < key=value, as for `fmmc train`)")
    p.set_defaults(func=run)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    """``--engine``, ``--ray-address`` and the Ray actor settings (shared by commands that run stages)."""
    g = p.add_argument_group("execution engine (docs/ray.md)")
    g.add_argument("--engine", default="local", help="local (default) or ray; `fmmc list engines`")
    g.add_argument("--ray-address", help="Ray cluster to join: auto, ray://HEAD:10001 or HEAD:6379 "
                                         "(default: $RAY_ADDRESS, else a local Ray instance)")
    g.add_argument("--concurrency", type=int, help="Ray actors (model copies); default: GPUs / --num-gpus, or CPUs")
    g.add_argument("--num-gpus", type=float, help="GPUs per Ray actor (0.5 packs two per GPU); default 1 if any")
    g.add_argument("--num-cpus", type=float, help="CPUs per Ray actor (default 1)")


def run(args: argparse.Namespace) -> int:
    from fmmc.cli.options import train_overrides
    from fmmc.core.config import load_config
    from fmmc.engine import engine_spec, get_engine
    from fmmc.engine.features import FeatureJob, extract_features
    from fmmc.train.config import TrainConfig
    from fmmc.train.trainer import load_training_data

    flags = (("backbone", "backbone"), ("describer", "describer"), ("image_size", "image_size"),
             ("pooling", "pooling"), ("min_coverage", "min_coverage"), ("dtype", "dtype"), ("decoder", "decoder"),
             ("null_mask", "null_mask"), ("cache_dir", "cache_dir"), ("batch_size", "extract_batch_size"))
    cfg = load_config(TrainConfig, args.config, train_overrides(args, flags))  # the order `fmmc train` has
    configured = bool(args.config or args.overrides)  # TrainConfig's own defaults name no models to run
    backbone = cfg.backbone if configured or args.backbone else None
    describer = (cfg.describer if (configured and cfg.streams != "vision") or args.describer else None)
    if not backbone and not describer:
        raise ValueError("nothing to do: give --backbone SPEC (e.g. hf:facebook/dinov2-base), --describer SPEC "
                         "or --config TRAIN_CONFIG")
    regions = load_training_data(args.data, allow_outside_root=args.allow_outside_paths, split=args.split)
    cache_dir = cfg.cache_dir
    batch_size = cfg.extract_batch_size
    engine = get_engine(engine_spec(args.engine, args.ray_address))
    resources = {"concurrency": args.concurrency, "num_gpus": args.num_gpus, "num_cpus": args.num_cpus}
    failed = 0
    try:
        if backbone and backbone != "none":
            job = FeatureJob(
                backbone=backbone, image_size=cfg.image_size, pooling=cfg.pooling, min_coverage=cfg.min_coverage,
                dtype=cfg.dtype, device=args.device, batch_size=batch_size, cache_dir=cache_dir,
                null_mask=cfg.null_mask, decoder=cfg.decoder, num_workers=cfg.num_workers,
                layers=cfg.layers, scales=cfg.scales, flip_tta=cfg.flip_tta,
            )
            rep = extract_features(regions, job, engine, progress=not args.quiet, **resources)
            failed += len(rep.failures)
            rate = rep.stats.get("items_per_s", 0.0)
            print(f"features: {rep.extracted} extracted, {rep.cached} cached, {len(rep.failures)} failed "
                  f"({rate:.2f} regions/s, engine {engine.spec}) -> {rep.cache_dir}")
            _show_failures(rep.failures)
        if describer and describer not in ("none", "metadata"):
            from fmmc.engine.describe import describe_with_engine

            drep = describe_with_engine(regions, describer, engine, cache_dir=cache_dir, batch_size=batch_size,
                                        progress=not args.quiet, **resources)
            failed += len(drep.failures)
            print(f"descriptions: {drep.described} new, {drep.cached} cached, {len(drep.failures)} failed "
                  f"({drep.stats.get('items_per_s', 0.0):.2f} regions/s) -> {drep.cache_path}")
            _show_failures(drep.failures)
    finally:
        engine.close()
    return 1 if failed else 0


def _show_failures(failures: list[tuple[str, str]], limit: int = 20) -> None:
    for rid, message in failures[:limit]:
        print(f"  failed: {rid}: {message}", file=sys.stderr)
    if len(failures) > limit:
        print(f"  ... and {len(failures) - limit} more", file=sys.stderr)
