"""``fmmc segment MODEL IMAGE --out DIR [--mode sam|grid]``: a material map of a whole photo.

    $ fmmc segment runs/demo/model kitchen.jpg --out maps/kitchen              # SAM regions, classified
    $ fmmc segment runs/demo/model photos/ --out maps --mode grid              # a folder: one subfolder each
    $ fmmc segment runs/demo/model --eval-dms DMS_v1 --split test --mode grid  # pixel acc, mIoU vs DMS labels

Writes ``labels.png`` (class index per pixel, 255 = unlabelled), ``overlay.png`` (colours, outlines,
legend) and ``regions.json`` (bbox, area, label, top-k per region). ``--eval-dms`` prints and writes
(``--out FILE.json``) pixel accuracy, mIoU and mAcc over DMS label maps (see ``fmmc.model.maps.evaluate``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fmmc.cli.predict_cmd import positive_int
from fmmc.core.paths import IMAGE_EXTS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="material map of whole photos (SAM regions or patch grid); DMS evaluation")
    p.add_argument("model", help="model directory (from `fmmc train`) or hub id")
    p.add_argument("image", nargs="?", help="image file or folder of images")
    p.add_argument("--out", help="output folder (maps) or JSON file (--eval-dms)")
    p.add_argument("--mode", choices=["sam", "grid"], default="sam",
                   help="sam: classify SAM's automatic regions; grid: classify every backbone patch (fast, no SAM)")
    p.add_argument("--points-per-side", type=int, default=16, help="SAM point grid (sam mode)")
    p.add_argument("--pred-iou-thresh", type=float, default=0.86, help="SAM mask quality filter (sam mode)")
    p.add_argument("--stability-thresh", type=float, default=0.9, help="SAM mask stability filter (sam mode)")
    p.add_argument("--max-regions", type=int, default=64, help="keep the largest N SAM regions")
    p.add_argument("--classes", help="comma-separated class names to choose from, or 'all' for the whole taxonomy "
                                     "(default: the classes the model was trained on)")
    p.add_argument("--description", help="language-stream text for every region of every image (two-stream models)")
    p.add_argument("--describer", help="describer spec overriding the model's (e.g. openai:gpt-4o-mini, "
                                       "hf:<local VLM>, none)")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes per region (>= 1; default 5)")
    p.add_argument("--segmenter", help="segmenter spec (default: the model's, else hf:facebook/sam-vit-base)")
    p.add_argument("--eval-dms", metavar="DIR", help="evaluate maps against DMS label maps under DIR")
    p.add_argument("--split", help="with --eval-dms: the split DIR/labels/<split> (train, validation, test; "
                                   "default: test when present), read as `fmmc eval dms:DIR` reads it")
    p.add_argument("--dms-images", metavar="DIR", help="with --eval-dms: the RGB images (with or without <split>/), "
                                                       "if not in DIR/images/")
    p.add_argument("--limit", type=int, help="with --eval-dms: at most N images")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier `fmmc segment` output (or report file)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps, or auto (cuda, else mps, else cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmmc.core.outputs import check_output_dir, check_output_file, write_marker
    from fmmc.model.classifier import MaterialClassifier
    from fmmc.model.prediction import parse_classes

    if args.eval_dms and args.out:
        check_output_file(args.out, args.overwrite)  # before any work
    elif args.out:
        check_output_dir(args.out, "segment", args.overwrite)

    overrides = {k: getattr(args, k) for k in ("segmenter", "describer") if getattr(args, k, None)}
    model = MaterialClassifier.from_pretrained(args.model, device=args.device, **overrides)
    model.check_ready(args.description)  # before any image is decoded or SAM runs
    classes = parse_classes(args.classes)
    opts = {"classes": classes, "description": args.description}
    if args.mode == "sam":
        opts.update(points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
                    stability_thresh=args.stability_thresh, max_regions=args.max_regions)
    if args.eval_dms:
        return _evaluate(model, args, opts)
    if not args.image or not args.out:
        raise ValueError("give IMAGE and --out DIR (or --eval-dms DIR)")
    src = Path(args.image)
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise ValueError(f"{src}: no images ({', '.join(sorted(IMAGE_EXTS))})")
        targets = [(p, Path(args.out) / p.relative_to(src).with_suffix("")) for p in files]
    elif src.is_file():
        targets = [(src, Path(args.out))]
    else:
        raise FileNotFoundError(f"{src}: no such image or folder")
    from fmmc.data.imageio import ImageError, load_image

    write_marker(args.out, "segment", complete=False)
    failed = 0
    for path, out in targets:
        try:
            img = load_image(path)
        except ImageError as e:
            print(f"skipped {e}", file=sys.stderr)
            failed += 1
            continue
        mmap = model.segment(img, mode=args.mode, **opts)
        mmap.save(out, img, top_k=args.top_k)
        shares = ", ".join(f"{k} {v * 100:.0f}%" for k, v in list(mmap.class_fractions().items())[:5])
        print(f"{path}: {len(mmap.regions)} regions ({shares}) -> {out}")
    if failed == len(targets):
        print(f"fmmc segment: error: nothing segmented: all {failed} image(s) failed (see above)", file=sys.stderr)
        return 1
    write_marker(args.out, "segment", complete=True)
    return 0


def _evaluate(model, args: argparse.Namespace, opts: dict) -> int:
    from fmmc.model.maps import evaluate_maps, load_dms_pairs

    pairs, names = load_dms_pairs(args.eval_dms, split=args.split, images=args.dms_images)
    report = evaluate_maps(model, pairs, mode=args.mode, names=names, limit=args.limit, progress=not args.quiet, **opts)
    print(f"{report['images']} images, mode {report['mode']}: pixel acc {report['pixel_acc']:.4f}  "
          f"mIoU {report['miou']:.4f}  mAcc {report['macc']:.4f}")
    for name, m in sorted(report["per_class"].items(), key=lambda kv: -kv[1]["pixels"]):
        print(f"  {name:<12} IoU {m['iou']:.3f}  acc {m['acc']:.3f}  ({m['pixels']} px)")
    if report["failures"]:
        print(f"{len(report['failures'])} pair(s) skipped:", file=sys.stderr)
        for name, msg in report["failures"]:
            print(f"  {name}: {msg}", file=sys.stderr)
    if args.out:
        from fmmc.core.io import write_text_atomic

        write_text_atomic(args.out, json.dumps(report, indent=1))
        print(f"report written to {args.out}", file=sys.stderr)
    return 0
