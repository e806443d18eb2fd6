"""``fmmc export MODEL --format onnx [--out FILE] [--opset N] [--image-size N] [--external-data] [--overwrite]``.

    $ fmmc export runs/a/model                       # -> runs/a/model/model.onnx + model.onnx.json
    $ fmmc export runs/a/model --out material.onnx --opset 18

One ONNX graph: backbone + mask pooling + head (inputs ``pixel_values``, ``mask`` and, for a two-stream
model, ``text_embedding``; outputs ``logits``, ``probs``), checked with onnxruntime against the torch model
before it is written, and a JSON sidecar (``FILE.json``) with the labels, preprocessing, mask rule and
input names, so Blender, Unity, Unreal or a C#/C++/JS program can call it without Python (docs/export.md).
Needs ``pip install 'fmmc[onnx]'``. An existing FILE is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("onnx",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a trained model to ONNX (backbone + mask pooling + head)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="model directory (from `fmmc train`; a run folder works too) or hub id")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="export format (default onnx)")
    p.add_argument("--out", help="the .onnx file to write (default: MODEL/model.onnx; a hub model: ./NAME.onnx); "
                                 "its sidecar is FILE.json")
    p.add_argument("--opset", type=int, help="ONNX opset (default: fmmc.model.onnx_export.DEFAULT_OPSET, 18)")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="input size N x N (a multiple of the patch size); default: the size the model was trained "
                        "at (another one changes its predictions)")
    p.add_argument("--external-data", action="store_true", default=None,
                   help="write the weights to FILE.data beside the graph (default: only when they pass ONNX's 2 GB "
                        "limit, e.g. DINOv2-g, as torch does)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE (and its sidecar and .data)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fmmc.core.outputs import check_output_file
    from fmmc.model.locate import model_dir
    from fmmc.model.onnx_export import DEFAULT_OPSET, SIDECAR_SUFFIX, export_onnx, require_onnx

    require_onnx()  # before anything is loaded: one line naming the extra
    source = model_dir(args.model)  # a bad MODEL: one line, before any work
    out = Path(args.out) if args.out else default_out(args.model, source)
    check_output_file(out, args.overwrite)
    check_output_file(out.with_name(out.name + SIDECAR_SUFFIX), args.overwrite, option="--out (its sidecar)")
    check_output_file(out.with_name(out.name + ".data"), args.overwrite, option="--out (its external data)")
    opset = args.opset or DEFAULT_OPSET
    result = export_onnx(source, out, opset=opset, image_size=args.image_size, external_data=args.external_data)
    data = "".join(f", {p}" for p in result.external_data)
    print(f"wrote {result.path}{data} and {result.sidecar}: inputs {', '.join(result.inputs)} -> logits, probs "
          f"(opset {opset}; checked with onnxruntime: max |diff| to torch {result.max_abs_diff:.1e})")
    return 0


def default_out(given: str, source: Path) -> Path:
    """``MODEL/model.onnx`` for a local model; ``./NAME.onnx`` for a hub id (its folder is the hub cache)."""
    if Path(given).expanduser().is_dir():
        return source / "model.onnx"
    return Path(f"{given.rstrip('/').rpartition('/')[2]}.onnx")
