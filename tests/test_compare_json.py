"""``fmmc compare``: ``--json``, and a warning when eval results come from different test sets (issue 10, point 8)."""

from __future__ import annotations

import json

from fmmc.cli.main import main


def _eval_dir(path, data, acc):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"data": data, "acc": acc, "macc": acc - 0.1, "miou": None}))
    return path


def test_compare_json_and_mixed_test_sets(tmp_path, capsys):
    a = _eval_dir(tmp_path / "a", "fmd:/data/fmd", 0.8)
    b = _eval_dir(tmp_path / "b", "fmd:/data/fmd", 0.85)
    c = _eval_dir(tmp_path / "c", "folder:/photos", 0.5)

    assert main(["compare", str(a), str(b), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["warning"] is None and out["reference"] == str(a)
    assert abs(out["runs"][1]["delta"]["result"]["acc"] - 0.05) < 1e-9
    assert out["runs"][1]["delta"]["result"]["miou"] is None

    assert main(["compare", str(a), str(c)]) == 0
    text = capsys.readouterr().out
    assert "different test sets" in text and "folder:/photos" in text
    assert main(["compare", str(a), str(c), "--json"]) == 0
    assert "different test sets" in json.loads(capsys.readouterr().out)["warning"]
