"""``fmmc predict MODEL IMAGE|FOLDER|DATASET [--mask PNG | --box x0,y0,x1,y1] [--top-k N] [--json] [--out FILE]``.

One image prints its top materials; a folder of images or a dataset (metadata.jsonl) writes one line per
region to ``--out`` (JSONL, or CSV by extension) with a progress bar; bad items are skipped and listed, and
the exit status is 1 when no item could be predicted. Finished predictions are kept a batch at a time in
``.OUT.partial.jsonl``: a killed run continues with ``--resume``; ``--out`` appears only when complete and an
existing one is replaced only with ``--overwrite``. ``--description TEXT`` is the language-stream text (a
folder: every image's; a dataset: that of lines without their own), ``--describer SPEC`` overrides the
model's describer; a two-stream model trained on dataset descriptions needs one of them for new photos.

``--json`` (and every ``--out`` JSONL line) holds ``id``, ``label``, ``confidence``, ``top`` (``--top-k``
classes of the taxonomy with their ``prob``, as before) and ``scores``: the pipeline convention, exactly
what ``model(image, top_k=K)`` returns (``[{"label", "score"}, ...]`` sorted, among the classes the
prediction chooses from; :mod:`fmmc.model.pipeline`).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from fmmc.cli.options import add_allow_outside, add_num_workers
from fmmc.core.paths import IMAGE_EXTS

OUT_SUFFIXES = (".jsonl", ".json", ".csv")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from e
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify the material of a region, an image, a folder or a dataset")
    p.add_argument("model", help="model directory (from `fmmc train`) or hub id")
    p.add_argument("input", help="image file, folder of images, or dataset folder with metadata.jsonl")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--mask", help="region mask (same size as the image): binary PNG (non-zero = region) or a JPEG/"
                                  "soft mask (pixels >= --mask-threshold)")
    g.add_argument("--box", help="region box x0,y0,x1,y1 in pixels")
    g.add_argument("--point", help="a point x,y on the object (needs a segmenter: SAM)")
    g.add_argument("--object", help="object name to find (needs a grounder + segmenter)")
    p.add_argument("--mask-threshold", type=int, metavar="T",
                   help="non-binary masks (JPEG, anti-aliased): pixels >= T are the region (default 128; "
                        "binary masks: every non-zero pixel). Also applies to a folder's or dataset's masks")
    p.add_argument("--description", help="appearance description for the language stream (else the describer's); "
                                         "a folder: used for every image; a dataset: for lines without their own")
    p.add_argument("--describer", help="describer spec overriding the model's (e.g. openai:gpt-4o-mini, "
                                       "hf:<local VLM>, none)")
    p.add_argument("--classes", help="comma-separated class names to choose from, or 'all' for the whole taxonomy "
                                     "(default: the classes the model was trained on)")
    p.add_argument("--top-k", type=positive_int, default=5, help="classes per prediction (>= 1; default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (its `scores`: the pipeline "
                                                         "convention, [{label, score}, ...])")
    p.add_argument("--out", help="output file (.jsonl or .csv; for folders/datasets written when complete, finished "
                                 "predictions kept in .OUT.partial.jsonl meanwhile); default stdout")
    p.add_argument("--resume", action="store_true", help="continue an interrupted folder/dataset run into --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (and any interrupted run)")
    p.add_argument("--save-mask", help="write the region mask used (for --point/--object) to this PNG")
    p.add_argument("--refine", action="store_true", help="with --box: segment the object inside the box with SAM")
    p.add_argument("--box-threshold", type=float, help="with --object: grounder score threshold (default 0.35)")
    p.add_argument("--segmenter", help="segmenter spec (default: the model's, else hf:facebook/sam-vit-base)")
    p.add_argument("--grounder", help="grounder spec (default: the model's, else hf:IDEA-Research/grounding-dino-base)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps, or auto (cuda, else mps, else cpu)")
    p.add_argument("--cache-dir", help="feature/description cache root (default ~/.cache/fmmc or $FMMC_CACHE); one "
                                       "that cannot be written is skipped with a warning")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_allow_outside(p)
    add_num_workers(p)
    p.set_defaults(func=run)


def _floats(text: str, n: int, name: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError as e:
        raise ValueError(f"--{name} {text!r}: expected {n} comma-separated numbers") from e
    if len(vals) != n:
        raise ValueError(f"--{name} {text!r}: expected {n} comma-separated numbers")
    return vals


def run(args: argparse.Namespace) -> int:
    from fmmc.model.classifier import MaterialClassifier
    from fmmc.model.prediction import parse_classes

    overrides = {k: getattr(args, k) for k in ("segmenter", "grounder", "describer") if getattr(args, k, None)}
    model = MaterialClassifier.from_pretrained(args.model, device=args.device, cache_dir=args.cache_dir,
                                               num_workers=args.num_workers, **overrides)
    classes = parse_classes(args.classes)
    src = Path(args.input)
    if src.is_dir():
        return _batch(model, src, classes, args)
    if not src.exists():
        if str(args.input).startswith("folder:"):
            raise FileNotFoundError(f"{args.input}: predict takes the folder itself: fmmc predict MODEL "
                                    f"{args.input.removeprefix('folder:').split('?')[0]} (every image under it)")
        raise FileNotFoundError(f"{src}: no such image, folder or dataset")
    out = _single_out(args)  # before any work, as for a folder
    model.check_ready(args.description)  # before any image is decoded
    prompts = {}
    if args.point:
        prompts["point"] = _floats(args.point, 2, "point")
    if args.object:
        prompts["object"] = args.object
        if args.box_threshold is not None:
            prompts["box_threshold"] = args.box_threshold
    if args.refine:
        if not args.box:
            raise ValueError("--refine works with --box (SAM segments the object inside it)")
        prompts["refine"] = True
    pred = model.predict(src, mask=args.mask, box=_floats(args.box, 4, "box") if args.box else None,
                         description=args.description, classes=classes, mask_threshold=args.mask_threshold,
                         **prompts)
    if args.save_mask and pred.mask is not None:
        from PIL import Image

        Image.fromarray(pred.mask.astype("uint8") * 255).save(args.save_mask)
    row = _row(pred, args.top_k)
    if out is not None:
        from fmmc.core.io import atomic_file

        with atomic_file(out) as f:
            _write_rows(f, [row], csv_format=out.suffix.lower() == ".csv")
        print(f"1 prediction written to {out}", file=sys.stderr)
    if args.json:
        print(json.dumps(row))
    else:
        for label, prob in pred.top(args.top_k):
            print(f"{label:<12} {prob:.3f}")
    return 0


def _single_out(args: argparse.Namespace) -> Path | None:
    """``--out F`` for one image: the same file rules as a folder's (no journal: one prediction)."""
    from fmmc.core.outputs import check_output_file

    if args.resume:
        raise ValueError("--resume continues an interrupted folder or dataset run; one image has nothing to resume")
    if not args.out:
        return None
    _check_out_suffix(args)
    return check_output_file(args.out, args.overwrite)


def _row(pred, top_k: int) -> dict:
    """One prediction's JSON: :meth:`Prediction.to_json` plus ``scores``, the pipeline convention."""
    from fmmc.model.pipeline import scores

    return {**pred.to_json(top_k), "scores": scores(pred, top_k)}


def _check_batch_args(src: Path, args: argparse.Namespace) -> None:
    """Options that cannot apply to a folder, and an output we would not write, are refused before any work."""
    one_image = [f"--{n.replace('_', '-')}" for n in ("mask", "box", "point", "object", "save_mask", "refine")
                 if getattr(args, n, None)]
    if one_image:
        raise ValueError(f"{', '.join(one_image)} applies to one image, and {src} is a folder: give per-image regions "
                         "in a metadata.jsonl (mask_file_name or box per line; `fmmc convert` writes one), or predict "
                         "one image at a time")
    _check_out_suffix(args)


def _check_out_suffix(args: argparse.Namespace) -> None:
    if args.out and Path(args.out).suffix.lower() not in OUT_SUFFIXES:
        raise ValueError(f"--out {args.out}: use a {', '.join(OUT_SUFFIXES)} file (JSON lines, or CSV)")


def _out_file(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    """``--out F`` and its journal ``.F.partial.jsonl``, checked before any work: F must not be a folder or
    lie under a file, an existing F is replaced only with --overwrite, an interrupted run's journal is
    continued only with --resume (or discarded with --overwrite); the folder must be writable."""
    from fmmc.core.outputs import OutputRefused, check_output_file

    if not args.out:
        if args.resume:
            raise ValueError("--resume needs --out FILE (the run to continue)")
        return None, None
    if args.resume and args.overwrite:
        raise ValueError("--resume continues an interrupted run and --overwrite starts again: give one of them")
    out = check_output_file(args.out, args.overwrite)
    journal = out.with_name(f".{out.name}.partial.jsonl")
    if journal.is_file() and not (args.resume or args.overwrite):
        raise OutputRefused(f"--out {out}: an interrupted run left its finished predictions in {journal}; pass "
                            "--resume to continue it, or --overwrite to start again")
    if args.overwrite:
        journal.unlink(missing_ok=True)
    return out, journal


def _batch(model, src: Path, classes, args: argparse.Namespace) -> int:
    from fmmc.core.io import atomic_file
    from fmmc.core.journal import Journal
    from fmmc.data.dataset import load_dataset
    from fmmc.data.records import Region
    from fmmc.model.journaled import predict_journaled

    _check_batch_args(src, args)
    out, journal_path = _out_file(args)  # before any work: a bad --out loses nothing
    if (src / "metadata.jsonl").is_file():
        regions = load_dataset(src, allow_outside_root=args.allow_outside_paths)
    else:
        model.check_ready(args.description)  # a folder's images have no descriptions: refuse before any work
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise ValueError(f"{src}: no images ({', '.join(sorted(IMAGE_EXTS))}) and no metadata.jsonl")
        regions = [Region(image=p, id=str(p.relative_to(src))) for p in files]
    if args.mask_threshold is not None:  # a line's own mask_threshold wins
        for r in regions:
            r.extra.setdefault("mask_threshold", args.mask_threshold)
    journal = None
    if journal_path is not None:
        header = {"kind": "predict", "model": str(args.model), "fingerprint": model.fingerprint(),
                  "input": str(src.resolve()), "classes": args.classes, "description": args.description,
                  "describer": args.describer, "mask_threshold": args.mask_threshold}
        journal = Journal(journal_path, header, on_mismatch="refuse")
        if journal.done:
            print(f"resuming: {journal.successes} of {len(regions)} predictions already in {journal_path}",
                  file=sys.stderr)
    preds, failures = predict_journaled(model, regions, journal, progress=not args.quiet and "predict",
                                        classes=classes, description=args.description)
    rows = [_with_region(_row(p, args.top_k), r) for r, p in zip(regions, preds) if p is not None]
    if out is not None:
        with atomic_file(out) as f:  # appears complete, or not at all
            _write_rows(f, rows, csv_format=out.suffix.lower() == ".csv")
        if journal is not None:
            journal.discard()
    else:
        _write_rows(sys.stdout, rows, csv_format=False)
    if failures:
        print(f"{len(failures)} item(s) skipped:", file=sys.stderr)
        for rid, msg in failures:
            print(f"  {rid}: {msg}", file=sys.stderr)
    if out is not None:
        print(f"{len(rows)} predictions written to {out}", file=sys.stderr)
    if not rows:
        print(f"fmmc predict: error: nothing predicted: all {len(regions)} item(s) of {src} failed (see above)",
              file=sys.stderr)
        return 1
    return 0


def _with_region(row: dict, region) -> dict:
    """A dataset line's label (``true_label``), split and own extra fields, passed on to its prediction."""
    more = {"true_label": region.label, "split": region.split}
    row.update({k: v for k, v in more.items() if v is not None})
    row.update({k: v for k, v in region.extra.items() if k not in row})
    return row


def _write_rows(f, rows: list[dict], csv_format: bool) -> None:
    if csv_format:
        w = csv.writer(f)
        w.writerow(["id", "label", "confidence", "top"])
        for r in rows:
            w.writerow([r["id"], r["label"], r["confidence"], ";".join(f"{t['label']}:{t['prob']}" for t in r["top"])])
    else:
        for r in rows:
            f.write(json.dumps(r) + "\n")
