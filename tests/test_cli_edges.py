"""The CLI's small edges (issue 10, point 8): each answered in one line, before any work."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from fixtures_serve import tiny_model_dir
from PIL import Image

from fmmc.cli.main import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(d / f"p{i}.png")
    return d


def test_top_k_must_be_positive(model_dir, photo, capsys):
    for k in ("0", "-1"):
        with pytest.raises(SystemExit) as e:
            main(["predict", str(model_dir), str(photo / "p0.png"), "--top-k", k])
        assert e.value.code == 2 and "expected a whole number >= 1" in capsys.readouterr().err


def test_box_with_negative_numbers_parses_and_is_clipped(model_dir, photo, capsys):
    assert main(["predict", str(model_dir), str(photo / "p0.png"), "--box", "-50,-50,10,10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["mask"]["bbox"] == [0, 0, 10, 10]


def test_folder_refuses_one_image_options_and_unknown_out(model_dir, photo, tmp_path, capsys):
    assert main(["predict", str(model_dir), str(photo), "--box", "0,0,5,5"]) == 1
    assert "--box applies to one image" in capsys.readouterr().err
    assert main(["predict", str(model_dir), str(photo), "--mask", str(photo / "p0.png")]) == 1
    assert "--mask applies to one image" in capsys.readouterr().err
    assert main(["predict", str(model_dir), str(photo), "--out", str(tmp_path / "preds.txt")]) == 1
    assert "use a .jsonl, .json, .csv file" in capsys.readouterr().err
    assert not (tmp_path / "preds.txt").exists()


def test_one_image_with_out_writes_it(model_dir, photo, tmp_path, capsys):
    """Found trying it as a new user: `predict MODEL img.jpg --out p.jsonl` printed the table, wrote no file
    and said nothing. One image now follows the folder's file rules."""
    out = tmp_path / "one.jsonl"
    assert main(["predict", str(model_dir), str(photo / "p0.png"), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert row == printed and row["id"]
    assert main(["predict", str(model_dir), str(photo / "p0.png"), "--out", str(out)]) == 1  # kept without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["predict", str(model_dir), str(photo / "p0.png"), "--out", str(tmp_path / "one.csv")]) == 0
    assert (tmp_path / "one.csv").read_text().startswith("id,label,confidence,top")
    assert main(["predict", str(model_dir), str(photo / "p0.png"), "--out", str(tmp_path / "one.txt")]) == 1
    assert main(["predict", str(model_dir), str(photo / "p0.png"), "--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err


def test_a_dataset_lines_own_fields_reach_its_predictions(model_dir, photo, tmp_path, capsys):
    """docs/dataset-format.md: other fields are "passed through to predictions and reports". Found trying
    it as a new user: predict --out dropped them (source, role, licence, split)."""
    from fmmc.model.classifier import MaterialClassifier

    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "a.png").write_bytes((photo / "p0.png").read_bytes())
    label = MaterialClassifier.from_pretrained(model_dir).trained_classes[0]
    line = {"file_name": "a.png", "label": label, "split": "test", "source": "catalogue-7", "licence": "CC0"}
    (ds / "metadata.jsonl").write_text(json.dumps(line) + "\n")
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(model_dir), str(ds), "--out", str(out), "--quiet"]) == 0
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert (row["true_label"], row["split"], row["source"], row["licence"]) == (label, "test", "catalogue-7", "CC0")
    ev = tmp_path / "eval"
    assert main(["eval", str(model_dir), "--data", str(ds), "--out", str(ev), "--quiet"]) == 0
    (erow,) = [json.loads(x) for x in (ev / "predictions.jsonl").read_text().splitlines()]
    assert (erow["source"], erow["licence"]) == ("catalogue-7", "CC0")


def test_run_folder_and_missing_directory(model_dir, photo, tmp_path, capsys):
    run = model_dir.parent  # the folder `fmmc train --out` wrote: holds model/
    assert main(["predict", str(run), str(photo / "p0.png"), "--json"]) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "no" / "such" / "model"), str(photo / "p0.png")]) == 1
    err = capsys.readouterr().err
    assert "no such model directory" in err and "hub" not in err.split("(")[0]


def test_verbose_after_the_command(model_dir, photo, capsys):
    assert main(["predict", str(model_dir), str(photo / "p0.png"), "-v"]) == 0


def test_broken_pipe_is_not_a_traceback(model_dir, photo):
    code = (f"import sys; sys.argv=['fmmc','predict',{str(model_dir)!r},{str(photo)!r},'--quiet']; "
            "from fmmc.cli.main import entry; entry()")
    proc = subprocess.run(f"{sys.executable} -c \"{code}\" | true", shell=True, capture_output=True, text=True,
                          timeout=300)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr


def test_quiet_silences_hub_and_transformers_bars(model_dir, photo, tmp_path):
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    try:
        assert main(["predict", str(model_dir), str(photo), "--out", str(tmp_path / "p.jsonl"), "--quiet"]) == 0
        assert are_progress_bars_disabled() and not hf_logging.is_progress_bar_enabled()
    finally:
        enable_progress_bars()
        hf_logging.enable_progress_bar()


def test_train_on_an_absent_gpu_is_one_line(tiny_dataset, tmp_path, capsys):
    code = main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), "backbone=builtin:efficientnet-lite0",
                 "streams=vision", "image_size=64", "epochs=1", "device=cuda", "progress=false"])
    err = capsys.readouterr().err
    assert code == 1 and "requested but" in err and "--device cpu" in err and "Traceback" not in err


def test_overrides_between_options_and_unknown_tokens(capsys):
    from fmmc.cli.main import _parse, build_parser

    args = _parse(build_parser(), ["train", "--data", "d", "lr=1e-3", "--out", "r", "epochs=5"])
    assert args.overrides == ["lr=1e-3", "epochs=5"] and args.out == "r"
    with pytest.raises(SystemExit):
        _parse(build_parser(), ["train", "--data", "d", "lr=1", "--bogus"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
