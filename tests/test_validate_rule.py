"""``fmmc validate`` checks a dataset with the one region rule training and predict use (issue 10, point 8)."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from fmmc.data.validate import validate_dataset


def _dataset(tmp_path, lines):
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "img.png")
    m = np.zeros((30, 40), np.uint8)
    m[5:20, 5:30] = 255
    Image.fromarray(m).save(tmp_path / "m.jpg", quality=60)  # a JPEG mask: not exactly binary
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return tmp_path


def test_jpeg_masks_and_mask_threshold_pass_validate(tmp_path):
    root = _dataset(tmp_path, [{"file_name": "img.png", "mask_file_name": "m.jpg", "label": "wood"},
                               {"file_name": "img.png", "mask_file_name": "m.jpg", "label": "wood", "id": "b",
                                "mask_threshold": 200}])
    n, problems = validate_dataset(root)
    assert n == 2 and problems == []


def test_box_rule_is_the_predict_rule(tmp_path):
    root = _dataset(tmp_path, [{"file_name": "img.png", "box": [-10, -5, 20, 20], "label": "wood", "id": "a"},
                               {"file_name": "img.png", "box": [50, 40, 60, 50], "label": "wood", "id": "b"},
                               {"file_name": "img.png", "box": [5, 5, 5, 9], "label": "wood", "id": "c"}])
    n, problems = validate_dataset(root)
    assert n == 3
    where = [p.where.rsplit(":", 1)[-1] for p in problems]
    assert where == ["2", "3"], problems  # partly outside: clipped (as predict does); outside / no area: errors
    assert "outside" in problems[0].message and "zero or negative area" in problems[1].message


def test_valid_data_that_train_would_refuse_gets_notes(tmp_path, capsys):
    """Found trying it as a new user: validate said "0 problem(s)" for data `fmmc train` then refused (lines
    without a description for describer=metadata; every region split=test)."""
    from fmmc.cli.main import main

    ds = _dataset(tmp_path, [{"file_name": "img.png", "label": "wood", "split": "test", "id": f"r{i}"}
                             for i in range(3)])
    assert main(["validate", str(ds)]) == 0  # still valid: notes, not problems
    out = capsys.readouterr().out
    assert "note: every region is split=test" in out and "3 of 3 regions have no 'description'" in out
    assert "0 problem(s)" in out
    lines = [{"file_name": "img.png", "label": "wood", "split": "train", "description": "oak", "id": "a"},
             {"file_name": "img.png", "label": "wood", "split": "val", "description": "oak", "id": "b"}]
    assert main(["validate", str(_dataset(tmp_path, lines))]) == 0
    assert "note:" not in capsys.readouterr().out.replace("note: splits", "")
