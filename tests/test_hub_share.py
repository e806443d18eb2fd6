"""Sharing like the Hugging Face ecosystem (issue 14, items 1-3): the model card, ``fmmc push`` and
``fmmc synth push`` against a real local HTTP server that records what huggingface_hub sends, the pipeline
convention ``model(images, top_k=...)``, and fmmc datasets loaded by the real ``datasets`` library."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fixtures_hub import FakeHub, run_online, run_python_online
from PIL import Image

from fmmc.cli.main import main
from fmmc.model.classifier import MaterialClassifier


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    server = FakeHub()
    yield server
    server.close()


# ----- a tiny trained model (tiny random DINOv2 through hf:<dir>, 3 classes) ---------------------------------
@pytest.fixture(scope="module")
def run_dir(tiny_dinov2: Path, tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fmmc.train.config import TrainConfig
    from fmmc.train.trainer import train

    out = tmp_path_factory.mktemp("share-run")
    return train(TrainConfig(data=str(tiny_dataset), out=str(out / "run"), backbone=f"hf:{tiny_dinov2}",
                             image_size=56, streams="vision", epochs=25, lr=3e-3, progress=False,
                             cache_dir=str(out / "cache")))


@pytest.fixture(scope="module")
def model(run_dir: Path) -> MaterialClassifier:
    return MaterialClassifier.from_pretrained(run_dir)


def eval_folder(root: Path) -> Path:
    """What ``fmmc eval --out`` leaves that the card reads: metrics.json (numbers as evaluate writes them)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "metrics.json").write_text(json.dumps({
        "n": 30, "acc": 0.9, "macc": 0.85, "miou": None, "top3": 1.0, "ece": 0.05,
        "test_set": {"spec": "fmd:/data/FMD", "kind": "fmd"}, "eval": {"split": "test"}}))
    return root


# ----- 1. the model card and config.json -------------------------------------------------------------------
def test_card_fields_parse_back(model: MaterialClassifier, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    model.save_pretrained(tmp_path / "m")
    card = ModelCard.load(tmp_path / "m" / "README.md")
    d = card.data.to_dict()
    assert d["library_name"] == "fmmc" and d["pipeline_tag"] == "image-classification"
    assert d["license"] == "apache-2.0" and {"fmmc", "material-classification"} <= set(d["tags"])
    assert "base_model" not in d  # the backbone is a local directory: no hub id to name
    assert "model-index" not in d  # no eval ran
    for section in ("## Usage", "## Taxonomy", "## Training data", "## Training recipe", "## Limitations"):
        assert section in card.text
    assert "| metal | yes |" in card.text and "| glass | no |" in card.text

    # hub specs become base_model ids (the embedded MiniLM is a copy of its hub repo); an eval's metrics the
    # model-index, read back as EvalResults
    copy = MaterialClassifier.from_pretrained(tmp_path / "m")
    copy.config.backbone, copy.config.text_encoder, copy.config.streams = ("hf:facebook/dinov2-small",
                                                                             "builtin:minilm", "both")
    copy.save_pretrained(tmp_path / "m2", eval_results=[eval_folder(tmp_path / "eval-fmd")], repo_id="me/mugs",
                         datasets=["me/synth-materials"])
    card = ModelCard.load(tmp_path / "m2" / "README.md")
    assert card.data.base_model == ["facebook/dinov2-small", "sentence-transformers/all-MiniLM-L6-v2"]
    assert card.data.datasets == ["me/synth-materials"] and card.data.model_name == "mugs"
    got = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert got == {"accuracy": 0.9, "mean_class_accuracy": 0.85, "top_3_accuracy": 1.0, "ece": 0.05}  # miou None: left out
    r = card.data.eval_results[0]
    assert (r.task_type, r.dataset_type, r.dataset_name, r.dataset_split) == ("image-classification", "fmd", "fmd: FMD",
                                                                              "test")
    assert 'MaterialClassifier.from_pretrained("me/mugs")' in card.text


def test_config_has_id2label_and_loads_back(model: MaterialClassifier, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["id2label"] == {str(i): n for i, n in enumerate(model.labels)} and len(cfg["id2label"]) == 21
    assert all(cfg["id2label"][str(i)] == n for n, i in cfg["label2id"].items())
    again = MaterialClassifier.from_pretrained(tmp_path / "m")
    assert "id2label" not in again.config.extra  # derived, not carried as an unknown config key
    assert again.fingerprint() == model.fingerprint()


def test_a_users_own_readme_is_kept(model: MaterialClassifier, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "README.md").write_text("# my notes\n")
    model.save_pretrained(folder)
    assert (folder / "README.md").read_text() == "# my notes\n"
    model.save_pretrained(folder, overwrite_card=True)
    assert ModelCard.load(folder / "README.md").data.library_name == "fmmc"
    # fmmc's own card is rewritten on the next save, and keeps the metrics an eval added
    model.save_pretrained(folder, eval_results=[eval_folder(tmp_path / "ev")])
    model.save_pretrained(folder)
    assert {r.metric_type for r in ModelCard.load(folder / "README.md").data.eval_results} >= {"accuracy"}


# ----- 2. push: what reached the hub --------------------------------------------------------------------
def test_fmmc_push_uploads_the_model_folder(run_dir: Path, hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import ModelCard

    ev = eval_folder(tmp_path / "eval-fmd")
    res = run_online(hub, tmp_path, "push", str(run_dir), "me/mugs", "--private", "--revision", "dev",
                     "--token", "hf_test_token", "--eval", str(ev))
    assert res.returncode == 0, res.stderr
    assert "me/mugs" in res.stdout and "/me/mugs/commit/" in res.stdout
    posts = [(p, json.loads(b) if p == "/api/repos/create" else None) for m, p, _, b in hub.requests if m == "POST"]
    assert posts[0] == ("/api/repos/create", {"name": "mugs", "organization": "me", "visibility": "private",
                                                 "type": "model"})
    assert ("/api/models/me/mugs/branch/dev", None) in posts
    assert all(h.get("authorization") == "Bearer hf_test_token" for m, _, h, _ in hub.requests if m == "POST")
    (commit,) = hub.commits
    assert commit["repo"] == "me/mugs" and commit["revision"] == "dev" and commit["kind"] == "model"
    model_dir = run_dir / "model"
    assert sorted(commit["files"]) == ["README.md", "config.json", "model.safetensors"]  # no fmmc bookkeeping
    for name, data in commit["files"].items():
        assert data == (model_dir / name).read_bytes(), name
    card = ModelCard(commit["files"]["README.md"].decode())
    assert card.data.eval_results[0].metric_value == 0.9
    summary = json.loads((run_dir / "summary.json").read_text())
    assert f"{summary['n_train']} training and {summary['n_val']} validation regions" in card.text


def test_pushed_model_loads_back_from_the_hub(run_dir: Path, model: MaterialClassifier, tiny_dataset: Path,
                                             hub: FakeHub, tmp_path: Path) -> None:
    images = [str(tiny_dataset / "images" / n) for n in ("metal_000.jpg", "wood_001.jpg", "fabric_002.jpg")]
    assert run_online(hub, tmp_path, "push", str(run_dir), "me/mugs").returncode == 0
    (commit,) = hub.commits
    load = f"""
import json, sys
from fmmc.model.classifier import MaterialClassifier
from fmmc.model.locate import model_dir
m = MaterialClassifier.from_pretrained("me/mugs", cache_dir={str(tmp_path / "fmmc-cache")!r})
print(json.dumps({{"dir": str(model_dir("me/mugs")), "probs": [m.predict(p).probs.tolist() for p in {images!r}]}}))
"""
    res = run_python_online(hub, tmp_path, load)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    snapshot = Path(out["dir"])  # huggingface_hub's cache under the empty HF_HOME, at the pushed commit
    assert snapshot == tmp_path / "hf-home" / "hub" / "models--me--mugs" / "snapshots" / commit["oid"]
    assert sorted(p.name for p in snapshot.iterdir()) == sorted(commit["files"])
    for name in commit["files"]:
        assert (snapshot / name).read_bytes() == (run_dir / "model" / name).read_bytes(), name
    local = [model.predict(p).probs for p in images]
    for got, want in zip(out["probs"], local, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert not np.allclose(out["probs"][0], out["probs"][1], atol=1e-3)  # not one constant answer
    served = [(m, p.split("?")[0]) for m, p, _, _ in hub.requests if m == "GET" or "/resolve/" in p]
    assert ("GET", "/api/models/me/mugs/revision/main") in served
    assert ("GET", f"/api/models/me/mugs/tree/{commit['oid']}") in served
    assert {p for m, p in served if m == "GET" and "/resolve/" in p} == {
        f"/me/mugs/resolve/{commit['oid']}/{n}" for n in commit["files"]}

    # the hub gone: the cached copy is used, nothing is asked
    hub.close()
    asked = len(hub.requests)
    res = run_python_online(hub, tmp_path, load)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1])["probs"] == out["probs"] and len(hub.requests) == asked


def test_offline_push_is_one_clear_line(run_dir: Path, model: MaterialClassifier, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from fmmc.model.hub_push import HubPushError

    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # the suite runs offline (conftest)
    assert main(["push", str(run_dir), "me/mugs"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fmmc push: error: cannot push") and "offline" in err and "\n" not in err
    assert "Traceback" not in err
    with pytest.raises(HubPushError, match="offline mode is on"):
        model.push_to_hub("me/mugs")
    assert main(["synth", "push", str(tmp_path), "me/ds"]) == 1
    assert "offline mode is on" in capsys.readouterr().err


def test_hub_failures_are_one_line_with_the_fix(run_dir: Path, hub: FakeHub, tmp_path: Path) -> None:
    hub.deny = 401
    res = run_online(hub, tmp_path, "push", str(run_dir), "me/mugs", "--token", "hf_bad")
    assert res.returncode == 1 and hub.commits == []
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("fmmc push: error: cannot push to model me/mugs at http://127.0.0.1:")
    assert "HTTP 401" in line and "hf auth login" in line
    hub.close()  # nothing listens there any more
    res = run_online(hub, tmp_path, "push", str(run_dir), "me/mugs")
    (line,) = res.stderr.strip().splitlines()
    assert res.returncode == 1 and "could not be reached" in line and "HF_ENDPOINT" in line


# ----- 3. the pipeline convention ----------------------------------------------------------------------
def test_pipeline_output_for_every_input_kind(model: MaterialClassifier, tiny_dataset: Path) -> None:
    path = tiny_dataset / "images" / "metal_000.jpg"
    pil = Image.open(path).convert("RGB")
    arr = np.asarray(pil)
    one = model(str(path), top_k=2)
    assert [set(x) for x in one] == [{"label", "score"}] * 2
    pred = model.predict(str(path))
    assert one == [{"label": lab, "score": p} for lab, p in pred.top(2)]  # the same numbers as predict
    assert model(pil, top_k=2) == one and model(arr, top_k=2) == one and model(path, top_k=2) == one
    for out in model([str(path), pil, arr, tiny_dataset / "images" / "wood_001.jpg"]):
        scores = [x["score"] for x in out]
        assert scores == sorted(scores, reverse=True) and sum(scores) <= 1 + 1e-6
        assert len(out) == 3 and {x["label"] for x in out} == {"metal", "wood", "fabric"}  # top_k=5, 3 trained
    assert len(model(arr, top_k=1)) == 1 and len(model(arr, top_k=30, classes="all")) == 21
    # regions through predict's keywords
    assert model(arr, box=(10, 10, 60, 60), top_k=3) == [{"label": lab, "score": p} for lab, p in
                                                        model.predict(arr, box=(10, 10, 60, 60)).top(3)]
    boxed = model([arr, arr], boxes=[None, (10, 10, 60, 60)], top_k=3)
    assert boxed[0] == model(arr, top_k=3) and boxed[1] == model(arr, box=(10, 10, 60, 60), top_k=3)
    with pytest.raises(ValueError, match="top_k"):
        model(arr, top_k=0)


def test_urls_are_fetched_only_when_allowed(model: MaterialClassifier, tiny_dataset: Path, hub: FakeHub) -> None:
    data = (tiny_dataset / "images" / "wood_000.jpg").read_bytes()
    hub.blobs["wood.jpg"] = data
    url = f"{hub.url}/blobs/wood.jpg"
    with pytest.raises(ValueError, match="allow_urls=True"):
        model(url)
    assert hub.requests == []  # never fetched silently
    assert model([url], allow_urls=True, top_k=3) == [model(data, top_k=3)]
    assert [(m, p) for m, p, _, _ in hub.requests] == [("GET", "/blobs/wood.jpg")]


def test_cli_json_scores_are_the_pipeline_output(run_dir: Path, model: MaterialClassifier, tiny_dataset: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    path = tiny_dataset / "images" / "fabric_002.jpg"
    assert main(["predict", str(run_dir), str(path), "--json", "--top-k", "2", "--box", "5,5,80,80"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["scores"] == model(path, top_k=2, box=(5, 5, 80, 80))
    assert out["top"][0]["prob"] == round(out["scores"][0]["score"], 6) and out["label"] == out["scores"][0]["label"]


# ----- 4. datasets: fmmc's folders load with the real `datasets`, and push to a dataset repo ------------
def synth_dataset(root: Path) -> Path:
    """``fmmc synth build``'s folder from hand-made labelled records (each image with its own mask)."""
    from fmmc.synth.build import build_dataset
    from fmmc.synth.config import BuildConfig
    from fmmc.taxonomy import load_taxonomy

    rng = np.random.default_rng(0)
    records = []
    for label in ("wood", "metal"):
        for k in range(3):
            rid = f"{label}--cup--plain--{k}"
            img, mask = f"images/{rid}.png", f"masks/{rid}.png"
            (root / "images").mkdir(parents=True, exist_ok=True)
            (root / "masks").mkdir(exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / img)
            m = np.zeros((48, 48), np.uint8)
            m[4 * k: 20 + 4 * k, 8:40] = 255
            Image.fromarray(m).save(root / mask)
            records.append({"id": rid, "triplet_id": rid[:-3], "object": "cup", "material": label,
                            "submaterial": "plain", "label": label, "image": img, "mask": mask, "status": "ok",
                            "prompt": f"a photo of a {label} cup", "seed": k, "model_id": "tiny-sd", "width": 48,
                            "height": 48, "box": [8, 4 * k, 40, 20 + 4 * k]})
    build_dataset(records, root, root / "dataset", BuildConfig(per_class=3, val_fraction=0.34, contact_sheet_max=2,
                                                               thumb_size=16, dedup_hamming=-1),
                  load_taxonomy("default"), seed=0, classes=["metal", "wood"])
    return root / "dataset"


def test_datasets_loads_an_fmmc_dataset_with_masks(tmp_path: Path) -> None:
    from datasets import Image as ImageFeature
    from datasets import load_dataset as hf_load

    from fmmc.data.dataset import load_dataset
    from fmmc.data.regions import load_region

    ds_dir = synth_dataset(tmp_path)
    ours = {r.id: r for r in load_dataset(ds_dir)}
    for ds in (hf_load("imagefolder", data_dir=str(ds_dir), cache_dir=str(tmp_path / "c1"))["train"],
               hf_load(str(ds_dir), cache_dir=str(tmp_path / "c2"))["train"]):  # a folder (or hub repo) with its card
        assert isinstance(ds.features["image"], ImageFeature) and isinstance(ds.features["mask"], ImageFeature)
        assert {"label", "description", "split", "box", "prompt", "seed"} <= set(ds.features)
        assert len(ds) == len(ours) == 6 and sorted(ds["split"]) == sorted(r.split for r in ours.values())
        for row in ds:
            region = ours[row["id"]]
            image, mask = load_region(region)
            assert row["label"] == region.label and row["description"] == region.description
            assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(image))
            assert np.array_equal(np.asarray(row["mask"]) > 0, mask)
    assert ds.class_encode_column("label").features["label"].names == ["metal", "wood"]


def test_datasets_loads_what_fmmc_convert_writes(tmp_path: Path) -> None:
    from datasets import load_dataset as hf_load
    from fixtures_eval import write_folder

    photos = write_folder(tmp_path / "photos", classes=("metal", "wood"), n=2)
    assert main(["convert", f"folder:{photos}", str(tmp_path / "data")]) == 0
    ds = hf_load("imagefolder", data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "c"))["train"]
    got = sorted((row["label"], np.asarray(row["image"]).shape) for row in ds)
    assert got == [("metal", (48, 48, 3))] * 2 + [("wood", (48, 48, 3))] * 2


def test_fmmc_synth_push_uploads_the_dataset_with_its_card(hub: FakeHub, tmp_path: Path) -> None:
    from huggingface_hub import DatasetCard

    ds_dir = synth_dataset(tmp_path / "s")
    res = run_online(hub, tmp_path, "synth", "push", str(ds_dir), "me/synth-materials")
    assert res.returncode == 0, res.stderr
    create = next(json.loads(b) for m, p, _, b in hub.requests if p == "/api/repos/create")
    assert create == {"name": "synth-materials", "organization": "me", "type": "dataset"}
    (commit,) = hub.commits
    assert commit["kind"] == "dataset" and commit["repo"] == "me/synth-materials" and commit["revision"] == "main"
    local = sorted(p.relative_to(ds_dir).as_posix() for p in ds_dir.rglob("*") if p.is_file())
    assert sorted(commit["files"]) == [p for p in local if not p.startswith(".fmmc")]
    assert commit["files"]["metadata.jsonl"] == (ds_dir / "metadata.jsonl").read_bytes()
    card = DatasetCard(commit["files"]["README.md"].decode())  # synth build's card, as it was
    assert card.data.task_categories == ["image-classification", "image-segmentation"] and "fmmc" in card.data.tags
    assert "| wood |" in card.text and 'load_dataset("imagefolder"' in card.text

    # a dataset without a card (fmmc convert's) gets one written with DatasetCard, pushed with the rest
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metadata.jsonl").write_text("".join(json.dumps({"file_name": f"{n}.png", "label": "wood"}) + "\n"
                                                 for n in ("a", "b")))
    for n in ("a", "b"):
        Image.new("RGB", (8, 8)).save(bare / f"{n}.png")
    res = run_online(hub, tmp_path, "synth", "push", str(bare), "me/bare")
    assert res.returncode == 0, res.stderr
    assert "wrote" in res.stdout and sorted(hub.commits[-1]["files"]) == ["README.md", "a.png", "b.png", "metadata.jsonl"]
    card = DatasetCard.load(bare / "README.md")
    assert card.data.size_categories == ["n<1K"] and "2 labelled regions" in card.text
