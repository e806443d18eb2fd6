"""``fmmc export --format onnx``: the ONNX graph gives the torch model's logits and probabilities.

Tiny models trained here through the real path (a tiny random-init DINOv2 + tiny CLIP text, two streams;
EfficientNet-Lite0 with its real weights, vision only), exported, and run with onnxruntime on the same
images and masks that ``MaterialClassifier.predict`` gets.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_region_image, write_dataset

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from fmmc.cli.main import main  # noqa: E402
from fmmc.model.classifier import MaterialClassifier  # noqa: E402
from fmmc.model.onnx_export import check_exportable, export_onnx  # noqa: E402
from fmmc.train.config import TrainConfig  # noqa: E402
from fmmc.train.trainer import train  # noqa: E402
from fmmc.vision.loading import to_pixels  # noqa: E402
from fmmc.vision.pooling import mask_coverage, mask_to_grid, select_cells  # noqa: E402

ATOL = 1e-4
DESCRIPTION = {"metal": "cold grey sheen with fine lines", "wood": "warm brown with wide grain"}


def _train(root: Path, **fields) -> Path:
    data = write_dataset(root / "data", n_per_class=4, size=64)
    cfg = TrainConfig(data=str(data), out=str(root / "run"), lr=3e-3, epochs=8, batch_size=16, val_fraction=0.25,
                      progress=False, cache_dir=str(root / "cache"), **fields)
    return train(cfg) / "model"


@pytest.fixture(scope="module")
def dino_model(tiny_dinov2, tiny_clip_text, tmp_path_factory) -> Path:
    """Two streams; input 84 while the checkpoint's is 112, so the position-embedding interpolation is traced."""
    return _train(tmp_path_factory.mktemp("onnx_dino"), backbone=f"hf:{tiny_dinov2}", image_size=84, streams="both",
                  text_encoder=f"hf:{tiny_clip_text}", describer="metadata")


@pytest.fixture(scope="module")
def dino_onnx(dino_model, tmp_path_factory) -> Path:
    return export_onnx(dino_model, tmp_path_factory.mktemp("onnx_dino_out") / "dino.onnx").path


@pytest.fixture(scope="module")
def effnet_model(tmp_path_factory) -> Path:
    pytest.importorskip("efficientnet_lite_pytorch")
    return _train(tmp_path_factory.mktemp("onnx_effnet"), backbone="builtin:efficientnet-lite0", image_size=96,
                  streams="vision")


def _regions(n: int, seed: int, size: int = 70) -> list[tuple]:
    """(image, mask, label) at a size unlike the model's input; one mask smaller than a cell."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        label = ("metal", "wood")[k % 2]
        img, mask = make_region_image(rng, label, size)
        out.append((img, mask, label))
    tiny = np.zeros_like(out[-1][1])
    tiny[3:6, 60:64] = True  # a region of 12 pixels: the best-covered cell rule
    out[-1] = (out[-1][0], tiny, out[-1][2])
    return out


def _run_onnx(path: Path, model: MaterialClassifier, regions: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    pre = model.encoder.extractor.pre
    feed = {"pixel_values": torch.stack([to_pixels(img, pre) for img, _, _ in regions]).numpy(),
            "mask": np.stack([m.astype(np.float32) for _, m, _ in regions])}
    if model.config.streams == "both":
        feed["text_embedding"] = model.encoder.text_encoder.encode([DESCRIPTION[lab] for *_, lab in regions]).numpy()
    logits, probs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    return logits, probs


def _torch_reference(model: MaterialClassifier, regions: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    two = model.config.streams == "both"
    probs = np.stack([model.predict(img, mask=m, description=DESCRIPTION[lab] if two else None).probs
                      for img, m, lab in regions])
    enc = model.encoder.encode_arrays([img for img, *_ in regions], [m for _, m, _ in regions],
                                      [DESCRIPTION[lab] for *_, lab in regions] if two else None)
    return model.logits(enc.vis, enc.txt).numpy(), probs


@pytest.mark.parametrize("n", [1, 3])
def test_dinov2_two_stream_onnx_matches_predict(dino_model, dino_onnx, n):
    model = MaterialClassifier.from_pretrained(dino_model)
    regions = _regions(n, seed=n)
    logits, probs = _run_onnx(dino_onnx, model, regions)
    want_logits, want_probs = _torch_reference(model, regions)
    assert logits.shape == probs.shape == (n, len(model.labels))  # batch 1 and 3: the batch size is free
    np.testing.assert_allclose(logits, want_logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(probs, want_probs, atol=ATOL, rtol=0)
    untrained = [i for i, name in enumerate(model.labels) if name not in model.trained_classes]
    assert untrained and np.all(probs[:, untrained] == 0)  # as predict: only the trained classes


def test_effnet_lite0_onnx_matches_predict_and_whole_image(effnet_model, tmp_path, capsys):
    out = tmp_path / "effnet.onnx"
    assert main(["export", str(effnet_model), "--out", str(out)]) == 0
    assert "checked with onnxruntime" in capsys.readouterr().out
    model = MaterialClassifier.from_pretrained(effnet_model)
    regions = _regions(3, seed=5, size=150)
    logits, probs = _run_onnx(out, model, regions)
    want_logits, want_probs = _torch_reference(model, regions)
    np.testing.assert_allclose(logits, want_logits, atol=ATOL, rtol=0)
    np.testing.assert_allclose(probs, want_probs, atol=ATOL, rtol=0)
    img = regions[0][0]  # the whole image: an all-ones mask, as predict without a mask
    _, whole = _run_onnx(out, model, [(img, np.ones((150, 150), bool), "metal")])
    np.testing.assert_allclose(whole[0], model.predict(img).probs, atol=ATOL, rtol=0)


def test_external_data_lands_beside_the_graph_under_its_final_name(effnet_model, tmp_path, capsys):
    """A model over ONNX's 2 GB limit (DINOv2-g) is saved with its weights in a separate file. The export
    was written under a temp name and renamed, so the graph pointed at the temp file's data name. Now the
    graph is written under its final name in a temp folder and both files move out: forced here with
    --external-data, the same save path torch takes on its own above 2 GB."""
    out = tmp_path / "out" / "effnet.onnx"
    assert main(["export", str(effnet_model), "--out", str(out), "--external-data"]) == 0
    assert str(out.with_name("effnet.onnx.data")) in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["effnet.onnx", "effnet.onnx.data", "effnet.onnx.json"]
    graph = onnx.load(str(out), load_external_data=False)
    where = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
    assert where == {"effnet.onnx.data"}
    assert out.stat().st_size < out.with_name("effnet.onnx.data").stat().st_size
    assert json.loads(out.with_name("effnet.onnx.json").read_text())["external_data"] == ["effnet.onnx.data"]
    moved = tmp_path / "elsewhere"  # the pair works wherever it is copied to, from any working directory
    moved.mkdir()
    for p in out.parent.iterdir():
        (moved / p.name).write_bytes(p.read_bytes())
    model = MaterialClassifier.from_pretrained(effnet_model)
    regions = _regions(2, seed=7, size=120)
    _, probs = _run_onnx(moved / "effnet.onnx", model, regions)
    np.testing.assert_allclose(probs, _torch_reference(model, regions)[1], atol=ATOL, rtol=0)
    assert main(["export", str(effnet_model), "--out", str(out), "--external-data"]) != 0  # kept without --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_another_image_size_is_exported_and_checked(effnet_model, tmp_path):
    result = export_onnx(effnet_model, tmp_path / "big.onnx", image_size=128)
    meta = json.loads(result.sidecar.read_text())
    assert meta["preprocessing"]["image_size"] == [128, 128] and meta["mask_rule"]["grid"] == [4, 4]
    assert meta["check"]["max_abs_diff"] <= ATOL
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    logits, _ = session.run(None, {"pixel_values": np.zeros((2, 3, 128, 128), np.float32),
                                   "mask": np.ones((2, 40, 30), np.float32)})
    assert logits.shape == (2, 21)
    with pytest.raises(ValueError, match="multiple of the backbone's patch size 32"):
        export_onnx(effnet_model, tmp_path / "odd.onnx", image_size=100)
    assert not (tmp_path / "odd.onnx").exists()


def test_sidecar_describes_the_graph(dino_model, dino_onnx):
    model = MaterialClassifier.from_pretrained(dino_model)
    meta = json.loads(dino_onnx.with_name(dino_onnx.name + ".json").read_text())
    graph = onnx.load(str(dino_onnx)).graph
    assert meta["input_names"] == [i.name for i in graph.input] == ["pixel_values", "mask", "text_embedding"]
    assert meta["output_names"] == [o.name for o in graph.output] == ["logits", "probs"]
    pixel_dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert isinstance(pixel_dims[0], str) and pixel_dims[1:] == [3, 84, 84]  # a free batch, a fixed size
    assert meta["labels"] == list(model.labels) and meta["trained_classes"] == list(model.trained_classes)
    pre = model.config.preprocess
    assert meta["preprocessing"]["image_size"] == pre["image_size"] == [84, 84]
    assert meta["preprocessing"]["mean"] == pre["mean"] and meta["preprocessing"]["std"] == pre["std"]
    assert meta["preprocessing"]["resample"] == pre["resample"]
    assert meta["mask_rule"]["min_coverage"] == model.config.min_coverage and meta["mask_rule"]["grid"] == [6, 6]
    assert meta["inputs"]["text_embedding"]["shape"] == ["batch", model.head.text_dim]
    assert meta["text_encoder"] == model.config.text_encoder and "dynamo=True" in meta["exporter"]
    assert meta["temperature"] == pytest.approx(float(model.head.temperature))
    assert meta["check"]["max_abs_diff"] <= ATOL


def test_existing_file_is_kept_without_overwrite(dino_model, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    assert main(["export", str(dino_model), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists; pass --overwrite" in err
    assert out.read_bytes() == b"keep me" and not (tmp_path / "m.onnx.json").exists()
    assert main(["export", str(dino_model), "--out", str(out), "--overwrite"]) == 0
    assert onnx.load(str(out)).graph.input[0].name == "pixel_values"


def test_bad_model_path_is_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path / "no_such_model"), "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no such model directory" in err
    assert not (tmp_path / "m.onnx").exists()


def test_without_the_extra_names_it(dino_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed: `import onnxruntime` fails
    assert main(["export", str(dino_model), "--out", str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'fmmc[onnx]'" in err and "onnxruntime" in err


def test_unsupported_features_are_refused(dino_model):
    model = MaterialClassifier.from_pretrained(dino_model)
    for field, value, named in (("layers", 4, "layers=4"), ("scales", "1,1.5", "scales=1,1.5"),
                                ("flip_tta", True, "flip_tta=True"), ("null_mask", True, "null_mask=True")):
        cfg = MaterialClassifier.from_pretrained(dino_model, **{field: value}).config
        with pytest.raises(ValueError, match=f"{named}.*retrain without"):
            check_exportable(cfg)
    model.config.override(streams="language")
    with pytest.raises(ValueError, match="language-only"):
        check_exportable(model.config)


def test_mask_coverage_is_adaptive_pooling_for_any_size_and_batched():
    """The traceable coverage (bin sums) is bit for bit adaptive_avg_pool2d's, one mask or a batch."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        h_in, w_in, h, w = (int(v) for v in torch.randint(1, 90, (4,), generator=g))
        masks = torch.rand(3, h_in, w_in, generator=g) > torch.rand(1, generator=g)
        want = F.adaptive_avg_pool2d(masks.float()[:, None], (h, w))[:, 0]
        assert torch.equal(mask_coverage(masks, (h, w)), want)
        assert torch.equal(mask_coverage(masks[0].numpy(), (h, w)), want[0])


def test_select_cells_batched_is_the_grid_rule():
    cov = torch.tensor([[[0.6, 0.1], [0.0, 0.5]], [[0.2, 0.3], [0.3, 0.0]]])
    assert select_cells(cov, 0.5).tolist() == [[[True, False], [False, True]], [[False, True], [True, False]]]
    assert select_cells(cov, 0.0).tolist() == [[[True, True], [False, True]], [[True, True], [True, False]]]
    mask = np.zeros((20, 20), bool)
    mask[18:, 18:] = True  # smaller than half a cell: the best-covered cell
    assert torch.equal(mask_to_grid(mask, (4, 4)), select_cells(mask_coverage(mask, (4, 4))[None])[0])
    assert mask_to_grid(mask, (4, 4)).sum() == 1
