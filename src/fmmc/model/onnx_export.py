"""A trained classifier as one ONNX graph (``fmmc export MODEL --format onnx``), for use without Python.

    >>> from fmmc.model.onnx_export import export_onnx
    >>> result = export_onnx("runs/a/model", "material.onnx")           # doctest: +SKIP
    >>> result.sidecar                                                   # doctest: +SKIP
    PosixPath('material.onnx.json')

The graph is fmmc's own forward, traced: the backbone's forward and the mask pooling
(:meth:`fmmc.vision.extractor.FeatureExtractor.pooled`), the mask-to-grid rule
(:func:`fmmc.vision.pooling.mask_coverage` + :func:`~fmmc.vision.pooling.select_cells`, the functions
:func:`~fmmc.vision.pooling.mask_to_grid` runs) and the head with its temperature
(:meth:`fmmc.model.head.MaterialHead.probs`). Contract (also in the ``*.onnx.json`` sidecar and docs/export.md):

* ``pixel_values`` float32 ``[B, 3, H, W]``: RGB resized to the model's input size (no crop), scaled by
  1/255 and normalised with the model's mean/std (:func:`fmmc.vision.loading.to_pixels`);
* ``mask`` float32 ``[B, Hm, Wm]``: the region, 1 inside and 0 outside, at *any* resolution (the source
  image's own: coverage is computed on it, as fmmc does); all ones for the whole image. An all-zero mask
  selects every cell (fmmc's API refuses one: check it before calling);
* ``text_embedding`` float32 ``[B, D]`` (two-stream models only): the model's text encoder's embedding of
  the region's description (the sidecar names the encoder);
* outputs ``logits`` ``[B, K]`` (calibrated: divided by the fitted temperature, over the whole taxonomy)
  and ``probs`` ``[B, K]`` (softmax over the classes the model was trained on; the others are 0), as
  :meth:`~fmmc.model.classifier.MaterialClassifier.predict` gives them.

Supported: the default single-layer, single-view feature (``layers=1``, ``scales=1``, no ``flip_tta``), fp32;
other options are refused with a message. ``pooling=max`` (the default) is tested; the other parts
(``mean``, ``gem``, ``cls``) are traced through the same :func:`~fmmc.vision.pooling.pool` but not tested here. The graph is traced by the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``, opset 18 by default). The TorchScript exporter is not used: on
this graph (a mask of any size, whose bins are computed from its shape) it writes a model onnxruntime
rejects as invalid (torch 2.13). Every export is checked with onnxruntime against the torch graph, at two
batch sizes, before it is kept.
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fmmc.vision.pooling import mask_coverage, select_cells

log = logging.getLogger(__name__)

ONNX_FIX = "pip install 'fmmc[onnx]'"
DEFAULT_OPSET = 18
CHECK_ATOL = 1e-4  # onnxruntime vs torch on the example inputs, logits and probs
SIDECAR_SUFFIX = ".json"  # material.onnx -> material.onnx.json
SIDECAR_FORMAT = "fmmc-onnx/1"


@dataclass
class ExportResult:
    path: Path
    sidecar: Path
    inputs: tuple[str, ...]
    max_abs_diff: float  # onnxruntime vs torch on the example inputs (logits and probs)
    external_data: tuple[Path, ...] = ()  # the weights' file(s) beside the graph, when written apart


def require_onnx() -> None:
    """Raise a one-line ImportError naming the extra when onnx, onnxruntime or onnxscript is missing."""
    import importlib

    missing = []
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: {ONNX_FIX}")


class ExportGraph(nn.Module):
    """``(pixel_values, mask[, text_embedding]) -> (logits, probs)`` built from a loaded classifier's parts."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        check_exportable(model.config)
        self._extractor = model.encoder.extractor  # not a Module: its backbone is registered below
        self.backbone = self._extractor.backbone.eval()
        self.head = model.head.eval()
        self.grid = tuple(self._extractor.pre.grid)
        self.min_coverage = float(self._extractor.min_coverage)
        self.classes = model.class_indices(None)  # the trained classes, as predict() chooses among them
        self.two_stream = model.config.streams == "both"
        self.eval()

    @property
    def input_names(self) -> tuple[str, ...]:
        return ("pixel_values", "mask", "text_embedding") if self.two_stream else ("pixel_values", "mask")

    def forward(self, pixel_values: torch.Tensor, mask: torch.Tensor,
                text_embedding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        cells = select_cells(mask_coverage(mask, self.grid), self.min_coverage)
        vis = self._extractor.pooled(pixel_values, cells)
        raw = self.head(vis, text_embedding)
        return raw / self.head.temperature, self.head.probs(raw, self.classes)


def check_exportable(config: Any) -> None:
    """Refuse, in one line, a model whose feature this export does not reproduce."""
    if config.streams == "language":
        raise ValueError("a language-only model (streams=language) has no vision graph to export; "
                         "export a model trained with streams=vision or both")
    unsupported = [f"{k}={v}" for k, v, default in (("layers", config.layers, 1), ("scales", str(config.scales), "1"),
                                                    ("flip_tta", config.flip_tta, False))
                   if v != default and not (k == "scales" and _one_scale(v))]
    if config.null_mask:
        unsupported.append("null_mask=True")
    if unsupported:
        raise ValueError(f"ONNX export supports the single-layer, single-view feature; this model was trained with "
                         f"{', '.join(unsupported)}: retrain without them to export it")


def _one_scale(value: Any) -> bool:
    from fmmc.vision.protocol import parse_scales

    return parse_scales(value) == (1.0,)


def export_onnx(model_path: str | Path, out: str | Path, opset: int = DEFAULT_OPSET, image_size: int | None = None,
                batch: int = 2, external_data: bool | None = None) -> ExportResult:
    """Export the model at ``model_path`` to ``out`` (+ ``out.json``, the sidecar) and check it with
    onnxruntime. ``image_size``: another input size than the trained one (a patch multiple; predictions
    then differ from the model's). ``batch``: the example batch traced (any batch size runs).
    ``external_data``: the weights in ``out.data`` beside the graph (True), or as torch decides (None: only
    over ONNX's 2 GB limit). Writes nothing unless the check passes."""
    require_onnx()
    from fmmc.model.classifier import MaterialClassifier

    model = MaterialClassifier.from_pretrained(model_path)
    check_exportable(model.config)  # before any weights load
    model.config.override(**_load_overrides(model.config, image_size))
    graph = ExportGraph(model)
    example = example_inputs(graph, model, batch)
    out = Path(out).expanduser()
    # Written under the final file name inside a temp folder beside it: an external data file is named
    # and referenced (relative to the graph) as it will be once moved, and nothing half-written shows.
    work = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        work.mkdir(parents=True, exist_ok=True)
        _export(graph, example, work / out.name, opset, external_data)
        diff = check_with_onnxruntime(graph, example, work / out.name)
        from fmmc.core.io import write_json_atomic

        extra = sorted(p.name for p in work.iterdir() if p.name != out.name)  # the external data, if any
        sidecar = out.with_name(out.name + SIDECAR_SUFFIX)
        meta = sidecar_data(model, graph, out.name, opset, diff, str(model_path), extra)
        for name in extra:  # the data first: the graph never appears without it
            os.replace(work / name, out.with_name(name))
        os.replace(work / out.name, out)
        write_json_atomic(sidecar, meta)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("exported %s (onnxruntime vs torch: max |diff| %.2e)", out, diff)
    return ExportResult(out, sidecar, graph.input_names, diff, tuple(out.with_name(n) for n in extra))


def _load_overrides(config: Any, image_size: int | None) -> dict[str, Any]:
    """Config fields to change before the encoder is built: fp32 features, and another input size if asked."""
    over: dict[str, Any] = {}
    if config.dtype != "fp32":
        log.warning("the model's features were computed in %s; the ONNX graph runs in fp32", config.dtype)
        over["dtype"] = "fp32"
    if image_size is not None:
        pre = dict(config.preprocess or {})
        patch = int(pre.get("patch_size", 1))
        if image_size <= 0 or image_size % patch:
            raise ValueError(f"--image-size {image_size}: give a positive multiple of the backbone's patch size {patch}")
        trained = pre.get("image_size")
        if trained is not None and list(trained) != [image_size, image_size]:
            log.warning("exporting at %dx%d; the model was trained at %s: its predictions will differ from the "
                        "torch model's", image_size, image_size, "x".join(str(v) for v in trained))
        over["image_size"] = image_size
        if config.preprocess is not None:
            over["preprocess"] = {**pre, "image_size": [image_size, image_size]}
    return over


def example_inputs(graph: ExportGraph, model: Any, batch: int = 2) -> tuple[torch.Tensor, ...]:
    """Seeded example inputs for tracing and the onnxruntime check: ``batch`` images, masks at a size
    unlike the input's (so that dimension stays free) with one region smaller than a cell."""
    g = torch.Generator().manual_seed(0)
    h, w = graph._extractor.pre.image_size
    pixels = torch.randn(batch, 3, h, w, generator=g)
    mask = torch.zeros(batch, h + 7, w + 3)
    mask[0, 2 : (h + 7) // 2, 3 : w // 2] = 1
    mask[1:, -3:, -2:] = 1  # a tiny region: the best-covered cell rule
    out: tuple[torch.Tensor, ...] = (pixels, mask)
    if graph.two_stream:
        txt = torch.randn(batch, model.head.text_dim, generator=g)
        out = (*out, txt / txt.norm(dim=1, keepdim=True))
    return out


def _export(graph: ExportGraph, example: tuple[torch.Tensor, ...], path: Path, opset: int,
            external_data: bool | None = None) -> None:
    """Write ``path`` with the dynamo exporter; batch and mask size free, the image size fixed."""
    from torch.export import Dim

    batch = Dim("batch")
    shapes: dict[str, Any] = {"pixel_values": {0: batch}, "mask": {0: batch, 1: Dim("mask_height"),
                                                                    2: Dim("mask_width")}}
    if graph.two_stream:
        shapes["text_embedding"] = {0: batch}
    try:
        # the exporter's own chatter (torchvision ops it skips, deprecations, axis-name notes) is not the
        # user's concern: kept for -v, hidden otherwise
        quiet = not log.isEnabledFor(logging.DEBUG)
        onnx_log = logging.getLogger("torch.onnx")
        level = onnx_log.level
        with torch.enable_grad(), warnings.catch_warnings():  # grads on: the whole batch in one call
            if quiet:
                warnings.simplefilter("ignore")
                onnx_log.setLevel(logging.ERROR)
            try:
                program = torch.onnx.export(graph, example, dynamo=True, opset_version=opset,
                                            input_names=list(graph.input_names), output_names=["logits", "probs"],
                                            dynamic_shapes=shapes, verbose=False, report=False, optimize=True)
            finally:
                onnx_log.setLevel(level)
    except Exception as e:  # noqa: BLE001 - any exporter failure, as one line (the traceback with -vv)
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RuntimeError(f"torch.onnx.export (dynamo) failed for this model: {type(e).__name__}: {first}") from e
    program.save(str(path), external_data=external_data)


def check_with_onnxruntime(graph: ExportGraph, example: tuple[torch.Tensor, ...], path: Path) -> float:
    """Max |onnxruntime - torch| over logits and probs on ``example`` (and on its first row alone, another
    batch size); above :data:`CHECK_ATOL` is a RuntimeError."""
    import onnxruntime as ort

    diff = 0.0
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for inputs in (example, tuple(x[:1] for x in example)):
            with torch.inference_mode():
                want = [t.numpy() for t in graph(*inputs)]
            got = session.run(["logits", "probs"], {n: x.numpy() for n, x in zip(graph.input_names, inputs)})
            diff = max(diff, *(float(np.abs(a - b).max()) for a, b in zip(got, want)))
    except Exception as e:  # noqa: BLE001 - onnxruntime's own errors: one line
        raise RuntimeError(f"onnxruntime cannot run the exported graph ({type(e).__name__}: "
                           f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); nothing was written. "
                           "Please report it, with the model's config.json") from e
    if not diff <= CHECK_ATOL:
        raise RuntimeError(f"the exported graph disagrees with the torch model (max |diff| {diff:.2e} > "
                           f"{CHECK_ATOL}); nothing was written. Please report it, with the model's config.json")
    return diff


def sidecar_data(model: Any, graph: ExportGraph, onnx_name: str, opset: int, diff: float,
                 source: str, external: Sequence[str] = ()) -> dict[str, Any]:
    """The ``*.onnx.json`` sidecar: what a caller without Python needs (docs/export.md)."""
    import onnxruntime as ort

    from fmmc import __version__

    pre = graph._extractor.pre
    h, w = pre.image_size
    inputs: dict[str, Any] = {
        "pixel_values": {"shape": ["batch", 3, h, w], "dtype": "float32",
                         "what": "RGB image resized to W x H (no crop), / 255, then (x - mean) / std per channel"},
        "mask": {"shape": ["batch", "mask_height", "mask_width"], "dtype": "float32",
                 "what": "the region: 1 inside, 0 outside, at any resolution (the image's own); all ones = whole image"},
    }
    if graph.two_stream:
        inputs["text_embedding"] = {"shape": ["batch", model.head.text_dim], "dtype": "float32",
                                    "what": f"embedding of the region's description by {model.config.text_encoder}"}
    k = len(model.labels)
    return {
        "format": SIDECAR_FORMAT, "fmmc_version": __version__, "model": source, "onnx": onnx_name,
        "external_data": list(external),  # weight files the graph loads from beside it (empty: inside it)
        "opset": opset, "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=True)",
        "input_names": list(graph.input_names),
        "output_names": ["logits", "probs"], "inputs": inputs,
        "outputs": {"logits": {"shape": ["batch", k], "what": "calibrated logits (divided by temperature)"},
                    "probs": {"shape": ["batch", k], "what": "softmax over trained_classes; other classes 0"}},
        "labels": list(model.labels), "trained_classes": list(model.trained_classes),
        "temperature": float(model.head.temperature),
        "preprocessing": {"image_size": [h, w], "resize": "stretch to W x H, no crop", "resample": pre.resample,
                          "rescale": 1 / 255, "mean": list(pre.mean), "std": list(pre.std), "channels": "RGB",
                          "layout": "NCHW", "decode": "full-size decode, EXIF orientation applied, 8-bit RGB"},
        "mask_rule": {"grid": list(pre.grid), "patch_size": pre.patch_size, "min_coverage": graph.min_coverage,
                      "rule": "coverage of each grid cell = mean of the mask over adaptive_avg_pool2d's bin "
                              "(rows floor(i*Hm/h)..ceil((i+1)*Hm/h)); cells with coverage >= min_coverage are "
                              "the region, else the best-covered cells; computed inside the graph",
                      "binarise": "a mask file with values other than 0 and one other value: pixels >= 128"},
        "pooling": model.config.pooling, "streams": model.config.streams, "backbone": model.config.backbone,
        "text_encoder": model.config.text_encoder if graph.two_stream else None,
        "check": {"onnxruntime": ort.__version__, "max_abs_diff": diff, "atol": CHECK_ATOL},
    }
