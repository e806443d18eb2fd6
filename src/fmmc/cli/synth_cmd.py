"""``fmmc synth``: the synthetic data engine (triplets -> generate -> label -> build), resumable and shardable.

    fmmc synth run configs/synth/default.yaml out=runs/synth                 # everything, resumes if stopped
    fmmc synth run configs/synth/default.yaml out=runs/synth --shard 3/8     # generate + label, part 3 of 8
    fmmc synth build configs/synth/default.yaml out=runs/synth               # then build once, from all shards
    fmmc synth triplets configs/synth/default.yaml triplets.per_class=50     # one stage at a time
    fmmc synth generate CONFIG --engine ray --ray-address auto               # on a Ray cluster
    fmmc synth review runs/synth/dataset                                     # check a sample of labels by hand
    fmmc synth push runs/synth/dataset me/synth-materials --private          # share it on the hub, with its card

CONFIG is a YAML file (``configs/synth/*.yaml``); ``key=value`` overrides follow it (``generate.steps=20``).
With ``triplets.llm`` set, run ``fmmc synth triplets`` once before starting shards, so all shards share one
LLM answer (they reuse ``triplets/triplets.jsonl``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STAGES = ("run", "triplets", "generate", "label", "build")
_HELP = {
    "run": "all stages: triplets -> generate -> label -> build (build is skipped for --shard i/n with n > 1)",
    "triplets": "make the object-material-submaterial triplets (triplets/triplets.jsonl)",
    "generate": "generate one image per (triplet, seed) with a diffusers pipeline",
    "label": "ground and segment the named object of every generated image",
    "build": "de-duplicate, balance and split the labelled images into an fmmc dataset folder",
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="synthetic data engine: triplets -> images -> masks -> dataset",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    stages = p.add_subparsers(dest="synth_command", metavar="STAGE")
    for name in STAGES:
        s = stages.add_parser(name, help=_HELP[name], description=_HELP[name])
        s.add_argument("config", nargs="?", help="YAML config (configs/synth/default.yaml, tiny.yaml, ...)")
        s.add_argument("overrides", nargs="*", help="key=value overrides, e.g. out=runs/x generate.steps=20")
        s.add_argument("--no-progress", action="store_true", help="no progress bars")
        if name in ("run", "triplets"):
            s.add_argument("--force", action="store_true", help="remake triplets.jsonl even if it exists")
        if name in ("run", "generate", "label"):
            s.add_argument("--shard", default=None, metavar="I/N",
                           help="run only part I of N (0-based); the same item always falls in the same part")
            s.add_argument("--engine", default="local", help="local (default) or ray, ray:auto, ray:ray://host:10001")
            s.add_argument("--ray-address", default=None, help="Ray cluster address (same as --engine ray:ADDRESS)")
            s.add_argument("--concurrency", type=int, default=None, help="Ray actors (default: one per GPU)")
            s.add_argument("--num-gpus", type=float, default=None, help="GPUs per Ray actor (default 1 if any)")
        s.set_defaults(func=run, synth_stage=name)
    _add_review(stages)
    _add_push(stages)
    p.set_defaults(func=_help(p))


def _add_push(stages: argparse._SubParsersAction) -> None:
    from fmmc.cli.push_cmd import add_push_options

    help_ = ("upload a dataset folder (synth build's, or any fmmc dataset) with its card to a hub dataset repo; "
             "it loads there with datasets.load_dataset(REPO_ID)")
    s = stages.add_parser("push", help=help_, description=help_)
    add_push_options(s, "dataset folder (metadata.jsonl), e.g. runs/synth/dataset")
    s.set_defaults(func=_push)


def _push(args: argparse.Namespace) -> int:
    from fmmc.synth.share import push_dataset

    url, wrote_card = push_dataset(args.source, args.repo_id, private=args.private or None, revision=args.revision,
                                   token=args.token, commit_message=args.message)
    if wrote_card:
        print(f"wrote {Path(args.source) / 'README.md'} (a dataset card; edit it and push again to change it)")
    print(f"pushed {args.source} -> datasets/{args.repo_id}: {url}")
    return 0


def _help(parser: argparse.ArgumentParser) -> Any:
    def show(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return show


def _add_review(stages: argparse._SubParsersAction) -> None:
    """``fmmc synth review`` comes from fmmc.synth.review (label review web page) when it is installed."""
    try:
        from fmmc.synth.review import add_review_parser
    except ModuleNotFoundError as e:
        if e.name not in ("fmmc.synth.review", "fastapi"):
            raise
        message = str(e)
        r = stages.add_parser("review", help="review a sample of auto-labelled regions (needs fmmc[serve])")
        r.set_defaults(func=lambda args: _missing_review(message))
        return
    r = add_review_parser(stages)
    if r is not None and r.get_default("func") is None:
        from fmmc.synth.review import run_review

        r.set_defaults(func=run_review)


def _missing_review(message: str) -> int:
    raise ImportError(f"`fmmc synth review` is not available: {message}; install the serve extra: "
                      "pip install 'fmmc[serve]'")


def _load(args: argparse.Namespace) -> Any:
    from fmmc.synth.config import load_synth_config

    config, overrides = args.config, list(args.overrides or [])
    if config is not None and "=" in config and not Path(config).exists():
        config, overrides = None, [config, *overrides]
    return load_synth_config(config, overrides)


def run(args: argparse.Namespace) -> int:
    from fmmc.synth import pipeline
    from fmmc.synth.config import save_resolved
    from fmmc.synth.runner import parse_shard

    cfg = _load(args)
    stage = args.synth_stage
    progress = not args.no_progress
    opts: dict[str, Any] = {}
    if stage in ("run", "generate", "label"):
        from fmmc.engine import engine_spec

        opts = {"shard": parse_shard(args.shard), "engine": engine_spec(args.engine, args.ray_address),
                "progress": progress, "concurrency": args.concurrency, "num_gpus": args.num_gpus}
    if stage == "run":
        summary = pipeline.run_all(cfg, force_triplets=args.force, **opts)
        print(f"triplets: {summary['triplets']} kept -> {cfg.out_dir / 'triplets' / 'triplets.jsonl'}")
        failed = _print_stage(summary["generate"]) + _print_stage(summary["label"])
        if summary["build"] is not None:
            _print_build(summary["build"])
        return _exit(failed)
    save_resolved(cfg)
    if stage == "triplets":
        records = pipeline.stage_triplets(cfg, force=args.force)
        kept = sum(r["status"] == "kept" for r in records)
        print(f"triplets: {kept} kept of {len(records)} candidates -> {cfg.out_dir / 'triplets' / 'triplets.jsonl'}")
        return 0
    if stage == "generate":
        return _exit(_print_stage(pipeline.stage_generate(cfg, **opts)))
    if stage == "label":
        return _exit(_print_stage(pipeline.stage_label(cfg, **opts)))
    _print_build(pipeline.stage_build(cfg, progress=progress))
    return 0


def _print_stage(res: Any) -> int:
    print(res.summary() + (f"; {res.pending_other_shards} left for other shards" if res.pending_other_shards else ""))
    return len(res.failures)


def _print_build(report: Any) -> None:
    splits: dict[str, int] = {}
    for per in report.counts.values():
        for s, n in per.items():
            splits[s] = splits.get(s, 0) + n
    print(f"dataset: {report.dataset} ({report.total} regions, {len(report.counts)} classes, "
          + ", ".join(f"{s} {n}" for s, n in sorted(splits.items())) + ")")
    for w in report.warnings:
        print(f"warning: {w}")


def _exit(failed: int) -> int:
    if failed:
        print(f"{failed} item(s) failed (see failures*.jsonl); run the same command again to retry them")
        return 1
    return 0
