"""Training, the model artifact and the CLI, end to end on tiny models through the real code paths."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fmmc.cli.main import main
from fmmc.data.dataset import load_dataset
from fmmc.model.classifier import MaterialClassifier
from fmmc.train.config import TrainConfig
from fmmc.train.trainer import train


@pytest.fixture(scope="module")
def trained(tiny_dinov2, tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data=str(tiny_dataset), out=str(out), backbone=f"hf:{tiny_dinov2}", image_size=112,
                      streams="vision", lr=3e-3, epochs=150, patience=40, batch_size=16, val_fraction=0.2,
                      progress=False, cache_dir=str(out / "cache"))
    return train(cfg)


def test_learnable_labels_reach_high_accuracy(trained):
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["n_train"] == 24 and summary["n_val"] == 6
    assert summary["train_acc"] >= 0.95
    assert summary["val_acc"] >= 0.8
    assert (trained / "train_config.yaml").is_file()
    log = [json.loads(x) for x in (trained / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["epoch"] == 1 and "val_loss" in log[0]


def test_save_load_gives_identical_logits(trained, tiny_dataset, tmp_path):
    regions = load_dataset(tiny_dataset)[:6]
    m1 = MaterialClassifier.from_pretrained(trained / "model")
    p1, _ = m1.predict_regions(regions, progress=False)
    m1.save_pretrained(tmp_path / "copy")
    m2 = MaterialClassifier.from_pretrained(tmp_path / "copy")
    p2, _ = m2.predict_regions(regions, progress=False)
    for a, b in zip(p1, p2):
        assert np.array_equal(a.probs, b.probs)
    cfg = json.loads((trained / "model" / "config.json").read_text())
    assert cfg["backbone"].startswith("hf:") and cfg["preprocess"]["image_size"] == [112, 112]
    assert len(cfg["taxonomy"]["classes"]) == 21 and cfg["fmmc_version"] and cfg["train"]["lr"] == 3e-3


def test_predict_api_mask_box_whole_and_subset(trained, tiny_dataset):
    model = MaterialClassifier.from_pretrained(trained / "model")
    r = load_dataset(tiny_dataset)[0]  # a metal region
    by_mask = model.predict(r.image, mask=r.mask)
    assert by_mask.label == "metal" and abs(by_mask.probs.sum() - 1) < 1e-5
    whole = model.predict(Image.open(r.image))
    assert whole.probs.shape == (21,)
    sub = model.predict(r.image, mask=r.mask, classes=["wood", "fabric"])
    assert set(lab for lab, p in sub.top(21) if p > 0) <= {"wood", "fabric"}
    box = model.predict(r.image, box=(0, 0, 50, 50))
    assert box.mask.sum() == 2500
    with pytest.raises(ValueError, match="zero or negative area"):
        model.predict(r.image, box=(5, 5, 5, 9))


def test_cli_end_to_end(tiny_dinov2, tiny_dataset, tmp_path, capsys):
    assert main(["validate", str(tiny_dataset)]) == 0
    assert "30 regions checked, 0 problem(s)" in capsys.readouterr().out
    run = tmp_path / "run"
    rc = main(["train", "--data", str(tiny_dataset), "--out", str(run), "--backbone", f"hf:{tiny_dinov2}",
               "--streams", "vision", "--epochs", "30", "--quiet", "lr=3e-3", "image_size=112",
               f"cache_dir={tmp_path / 'cache'}"])
    assert rc == 0 and (run / "model" / "model.safetensors").is_file()
    assert "val acc" in capsys.readouterr().out
    img = tiny_dataset / "images" / "wood_000.jpg"
    assert main(["predict", str(run / "model"), str(img), "--mask", str(tiny_dataset / "masks" / "wood_000.png"),
                 "--json", "--top-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["top"]) == 3 and out["label"] in [t["label"] for t in out["top"]]
    assert main(["predict", str(run / "model"), str(img), "--box", "0,0,40,40"]) == 0
    trained = json.loads((run / "model" / "config.json").read_text())["trained_classes"]
    assert len(capsys.readouterr().out.strip().splitlines()) == min(5, len(trained))  # top 5 of the trained classes
    preds = tmp_path / "preds.jsonl"
    assert main(["predict", str(run / "model"), str(tiny_dataset), "--out", str(preds), "--quiet"]) == 0
    rows = [json.loads(x) for x in preds.read_text().splitlines()]
    assert len(rows) == 30 and all("true_label" in r for r in rows)
    csv_out = tmp_path / "preds.csv"
    assert main(["predict", str(run / "model"), str(tiny_dataset / "images"), "--out", str(csv_out), "--quiet"]) == 0
    assert len(csv_out.read_text().splitlines()) == 31


def test_cli_batch_skips_bad_items_and_reports(trained, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (50, 50), (150, 90, 40)).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"not an image")
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(trained / "model"), str(folder), "--out", str(out), "--quiet"]) == 0
    assert len(out.read_text().splitlines()) == 1
    err = capsys.readouterr().err
    assert "1 item(s) skipped" in err and "b.jpg" in err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "metadata.jsonl not found" in err and "Traceback" not in err
    assert main(["predict", str(tmp_path), "x.jpg"]) == 1
    assert "not an fmmc model" in capsys.readouterr().err


def test_unknown_labels_fail_before_training(tiny_dataset, tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    lines = [json.loads(x) for x in (tiny_dataset / "metadata.jsonl").read_text().splitlines()][:4]
    for x in lines:
        x["file_name"] = str(tiny_dataset / x["file_name"])
        x["mask_file_name"] = str(tiny_dataset / x["mask_file_name"])
    lines[1]["label"] = "adamantium"
    (ds / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(ValueError, match="adamantium.*Known labels"):
        train(TrainConfig(data=str(ds), out=str(tmp_path / "r"), streams="vision", progress=False,
                          allow_outside_paths=True))  # absolute paths into another folder: the opt-in


def test_two_streams_with_tiny_clip_text(tiny_dinov2, tiny_clip_text, tiny_dataset, tmp_path):
    cfg = TrainConfig(data=str(tiny_dataset), out=str(tmp_path / "run"), backbone=f"hf:{tiny_dinov2}", image_size=56,
                      text_encoder=f"hf:{tiny_clip_text}", describer="metadata", streams="both", lr=3e-3,
                      epochs=40, progress=False, cache_dir=str(tmp_path / "cache"))
    run = train(cfg)
    model = MaterialClassifier.from_pretrained(run / "model")
    assert model.head.vision_dim == 32 and model.head.text_dim == 512
    r = load_dataset(tiny_dataset)[12]
    p = model.predict(r.image, mask=r.mask, description=r.description)
    assert p.label == r.label
    lang_only = train(TrainConfig(**{**cfg.__dict__, "streams": "language", "out": str(tmp_path / "lang")}))
    s = json.loads((lang_only / "summary.json").read_text())
    assert s["train_acc"] == 1.0  # the descriptions identify the class exactly


def test_full_finetuning_mode_updates_backbone(tiny_dinov2, tiny_dataset, tmp_path):
    cfg = TrainConfig(data=str(tiny_dataset), out=str(tmp_path / "full"), backbone=f"hf:{tiny_dinov2}", image_size=56,
                      streams="vision", mode="full", epochs=2, lr=1e-3, backbone_lr=1e-3, progress=False)
    run = train(cfg)
    model = MaterialClassifier.from_pretrained(run / "model")
    assert model._backbone_state is not None
    from safetensors.torch import load_file

    # stored under the checkpoint's own names (those of the tiny model's model.safetensors; transformers v5
    # renames some at load time, e.g. attention.attention.key -> attention.k_proj), not runtime names
    orig = load_file(str(tiny_dinov2 / "model.safetensors"))
    assert set(model._backbone_state) == set(orig)
    changed = [k for k, v in model._backbone_state.items() if not torch.equal(v, orig[k])]
    assert changed
    r = load_dataset(tiny_dataset)[0]
    assert model.predict(r.image, mask=r.mask).probs.shape == (21,)
