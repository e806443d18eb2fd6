"""The in-domain protocol (``fmmc eval DATA --protocol splits:N``) and both protocols in ``fmmc reproduce``."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import write_dataset
from fixtures_eval import write_fmd, write_train

from fmmc.cli.main import main
from fmmc.data.records import Region
from fmmc.evaluation.protocols import (
    aggregate,
    make_splits,
    mean_std,
    parse_protocol,
    read_splits,
    resolve_splits,
    write_splits,
)


def _regions(counts: dict[str, int], shared_image: bool = False) -> list[Region]:
    """Regions without files (splitting never reads them); ``shared_image``: two regions per image."""
    out = []
    for label, n in counts.items():
        for k in range(n):
            img = Path(f"/x/{label}_{k // 2 if shared_image else k}.jpg")
            out.append(Region(image=img, label=label, id=f"{label}/{k}"))
    return out


# ----- the splits themselves -----

def test_splits_are_stratified_halves():
    regions = _regions({"metal": 10, "wood": 7, "fabric": 4})
    splits = make_splits(regions, 5, seed=0)
    assert len(splits) == 5
    label = {r.id: r.label for r in regions}
    for s in splits:
        assert not set(s.train) & set(s.test) and len(s.train) + len(s.test) == len(regions)
        test = Counter(label[x] for x in s.test)
        assert test == {"metal": 5, "wood": round(7 / 2), "fabric": 2}  # half of each class (7 -> 4 train / 3 test)
    assert len({tuple(s.test) for s in splits}) == 5  # each split its own halves


def test_regions_of_one_image_stay_on_one_side():
    regions = _regions({"metal": 8, "wood": 8}, shared_image=True)
    image = {r.id: r.image for r in regions}
    for s in make_splits(regions, 4, seed=3):
        assert not {image[x] for x in s.train} & {image[x] for x in s.test}
        assert len(s.test) == 8


def test_same_seed_same_splits_other_seed_others():
    regions = _regions({"metal": 6, "wood": 6})
    a, b = make_splits(regions, 3, seed=7), make_splits(list(reversed(regions)), 3, seed=7)
    assert [(s.seed, s.train, s.test) for s in a] == [(s.seed, s.train, s.test) for s in b]
    assert [s.test for s in make_splits(regions, 3, seed=8)] != [s.test for s in a]


def test_splits_file_round_trip_and_checks(tmp_path: Path):
    regions = _regions({"metal": 4, "wood": 4})
    splits = make_splits(regions, 2, seed=1)
    path = write_splits(tmp_path / "splits.json", splits, 1, "jsonl:/x")
    seed, back = read_splits(path)
    assert seed == 1 and [(s.train, s.test) for s in back] == [(s.train, s.test) for s in splits]
    halves = resolve_splits(back, regions)
    assert [[r.id for r in tr] for tr, _ in halves] == [s.train for s in splits]  # the file's order
    with pytest.raises(ValueError, match=r"splits\[0\] names 1 region\(s\) the test set does not have"):
        resolve_splits(back, regions[:-1] + [Region(image=Path("/x/new.jpg"), label="wood", id="wood/new")])
    with pytest.raises(ValueError, match=r"covers 8 of the test set's 9 regions"):
        resolve_splits(back, regions + [Region(image=Path("/x/more.jpg"), label="wood", id="wood/more")])
    (tmp_path / "bad.json").write_text('{"splits": [{"train": ["a"]}]}')
    with pytest.raises(ValueError, match=r"bad.json: splits\[0\] needs 'train' and 'test'"):
        read_splits(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="appears twice"):
        make_splits(regions + regions[:1], 1)


def test_parse_protocol():
    assert str(parse_protocol("splits:10")) == "splits:10" and parse_protocol(None).kind == "cross"
    for bad in ("splits", "splits:0", "split:3", "kfold:5"):
        with pytest.raises(ValueError, match="use cross .* or splits:N"):
            parse_protocol(bad)


def test_mean_and_std_by_hand():
    per = [{"acc": 0.8, "macc": 0.5}, {"acc": 0.9, "macc": 0.7}, {"acc": 1.0, "macc": None}]
    agg = aggregate(per, keys=("acc", "macc"))
    assert agg["mean"]["acc"] == pytest.approx(0.9) and agg["std"]["acc"] == pytest.approx(0.1)  # ddof=1
    assert agg["mean"]["macc"] == pytest.approx(0.6)  # the missing value is left out, not counted as 0
    assert agg["std"]["macc"] == pytest.approx(math.sqrt(0.02)) == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert mean_std([0.25]) == (0.25, None)


# ----- fmmc eval --protocol splits:N end to end -----

@pytest.fixture(scope="module")
def learnable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("splits_data"), n_per_class=6, size=64, describe=False)


def _eval(data: Path, out: Path, backbone: Path, cache: Path, *extra: str) -> int:
    return main(["eval", str(data), "--out", str(out), "--backbone", f"hf:{backbone}", "--streams", "vision",
                 "--cache-dir", str(cache), "--bootstrap", "0", "--no-plots", "--quiet", *extra,
                 "image_size=56", "epochs=8", "lr=1e-3"])


def test_cli_splits_writes_reruns_and_refuses(learnable: Path, tiny_dinov2: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    from fmmc.vision.cache import FeatureCache

    stored: list[str] = []
    real_put = FeatureCache.put
    monkeypatch.setattr(FeatureCache, "put", lambda self, key, value: (stored.append(key), real_put(self, key, value))[1])
    out, cache = tmp_path / "fmd-splits", tmp_path / "cache"
    assert _eval(learnable, out, tiny_dinov2, cache, "--protocol", "splits:3", "--split-seed", "5") == 0
    printed = capsys.readouterr().out
    assert "mean ± std over 3 splits: acc" in printed
    assert len(stored) == len(set(stored)) == 18  # every region's features extracted once, for all 3 splits

    m = json.loads((out / "metrics.json").read_text())
    doc = json.loads((out / "splits.json").read_text())
    assert doc["seed"] == 5 and len(doc["splits"]) == 3 and m["protocol"] == "splits:3" and m["n"] == 18
    for i, s in enumerate(doc["splits"]):
        assert len(s["train"]) == len(s["test"]) == 9
        own = json.loads((out / "splits" / f"{i:02d}" / "metrics.json").read_text())
        assert own["n"] == 9 and own["acc"] == m["per_split"][i]["acc"] and own["ece"] == m["per_split"][i]["ece"]
        rows = (out / "splits" / f"{i:02d}" / "predictions.jsonl").read_text().splitlines()
        assert sorted(json.loads(r)["id"] for r in rows) == sorted(s["test"])  # scored on the test half only
        assert (out / "splits" / f"{i:02d}" / "train_summary.json").is_file()
    accs = [p["acc"] for p in m["per_split"]]
    assert m["mean"]["acc"] == pytest.approx(np.mean(accs)) == pytest.approx(m["acc"])
    assert m["std"]["acc"] == pytest.approx(np.std(accs, ddof=1))
    report = (out / "report.md").read_text()
    assert "Protocol `splits:3`" in report and "[report](splits/02/report.md)" in report
    assert not list(tmp_path.glob(".*splits-work"))  # the work folder is gone once the result is written

    # the same --out again: refused before any work, and left as it was
    before = (out / "metrics.json").read_text()
    assert _eval(learnable, out, tiny_dinov2, cache, "--protocol", "splits:3") == 1
    assert "pass --overwrite" in capsys.readouterr().err and (out / "metrics.json").read_text() == before

    # rerun from the written file: identical splits, identical numbers, identical predictions
    again = tmp_path / "again"
    assert _eval(learnable, again, tiny_dinov2, cache, "--splits", str(out / "splits.json")) == 0
    m2 = json.loads((again / "metrics.json").read_text())
    assert m2["per_split"] == m["per_split"] and m2["split_seed"] == 5
    assert json.loads((again / "splits.json").read_text())["splits"] == doc["splits"]
    for i in range(3):
        a = (out / "splits" / f"{i:02d}" / "predictions.jsonl").read_text()
        assert (again / "splits" / f"{i:02d}" / "predictions.jsonl").read_text() == a
    assert len(stored) == 18  # nothing extracted again: the cache served every split

    assert _eval(learnable, out, tiny_dinov2, cache, "--protocol", "splits:2", "--overwrite") == 0
    assert len(json.loads((out / "splits.json").read_text())["splits"]) == 2


def test_cli_protocol_errors(learnable: Path, tiny_dinov2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    cache = tmp_path / "c"
    assert _eval(learnable, tmp_path / "o", tiny_dinov2, cache, "--protocol", "splits:3", "--data", "x") == 1
    assert "drop --data" in capsys.readouterr().err
    assert main(["eval", "runs/model", "--data", str(learnable), "--out", str(tmp_path / "o"), "lr=1"]) == 1
    assert "only the in-domain protocol does" in capsys.readouterr().err
    assert main(["eval", "runs/model", "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "--data SPEC is required" in capsys.readouterr().err
    assert _eval(learnable, tmp_path / "o", tiny_dinov2, cache, "--protocol", "splits:x") == 1
    assert "use cross" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_killed_splits_run_resumes(learnable: Path, tiny_dinov2: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch):
    import fmmc.train.trainer as trainer

    real, calls = trainer.train, []

    def killed_on_second(cfg, overwrite=False):
        calls.append(cfg.out)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, overwrite=overwrite)

    monkeypatch.setattr(trainer, "train", killed_on_second)
    out, cache = tmp_path / "r", tmp_path / "c"
    assert _eval(learnable, out, tiny_dinov2, cache, "--protocol", "splits:3") == 130
    assert not out.exists() and (tmp_path / ".r.splits-work" / "00" / "eval" / "metrics.json").is_file()
    calls.clear()
    monkeypatch.setattr(trainer, "train", lambda cfg, overwrite=False: (calls.append(cfg.out), real(cfg, overwrite))[1])
    assert _eval(learnable, out, tiny_dinov2, cache, "--protocol", "splits:3") == 0
    assert len(calls) == 2 and (out / "splits" / "00" / "metrics.json").is_file()  # split 0 was kept
    assert not (tmp_path / ".r.splits-work").exists()


# ----- fmmc reproduce: both protocols, published figures with their sources -----

GRID = """
name: protocols grid
train: {{data: {train}, backbone: "hf:{dino}", image_size: 56, streams: vision, epochs: 6, lr: 1.0e-3}}
eval: {{n_boot: 0, split_seed: 2}}
test_sets:
  fmd: {{spec: "fmd:{fmd}", title: FMD}}
tables:
  - id: main
    metric: acc
    rows: {{Ours: {{}}}}
  - id: protocols
    metric: acc%
    test_set: fmd
    columns: {{in-domain: {{protocol: "splits:2"}}, cross-domain: {{}}}}
    rows: {{Ours: {{}}}}
"""


def test_reproduce_reports_both_protocols_with_sources(tiny_dinov2: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]):
    from fmmc.evaluation.grid import load_grid_config, plan

    cfg = tmp_path / "grid.yaml"
    cfg.write_text(GRID.format(train=write_train(tmp_path / "train", n=4), dino=tiny_dinov2,
                               fmd=write_fmd(tmp_path / "fmd", n=4)))
    cells = plan(load_grid_config(cfg))
    assert len(cells) == 2  # the cross-domain cell is Table 1's: trained once
    splits_cell = next(c for c in cells if c.protocol == "splits:2")
    assert splits_cell.train.data == "" and splits_cell.places == [("protocols", "Ours", "in-domain")]

    out = tmp_path / "run"
    assert main(["reproduce", str(cfg), "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert json.loads((out / "evals" / splits_cell.cell_id / "splits.json").read_text())["seed"] == 2
    tables = (out / "tables.md").read_text()
    assert "|  | in-domain | in-domain (published) | cross-domain | cross-domain (published) |" in tables
    ours = next(line for line in tables.splitlines() if line.startswith("| Ours |") and "±" in line).split(" | ")
    assert ours[2] == "–" and ours[4] == "89.0 |"  # ours (mean ± std) in-domain; the paper's 0.89 cross-domain
    assert float(ours[1].split(" ± ")[0]) >= 0 and float(ours[3]) >= 0
    for row, figure in (("RADAM (frozen ConvNeXt-L + linear SVM)", "95.2"), ("RADAM (frozen ConvNeXt-XXL + "
                        "linear SVM)", "97.1"), ("VORTEX (frozen ViTamin-L + linear SVM)", "98.8"),
                        ("FV-CNN (VGG features, Fisher vectors)", "79.8–82.3")):
        assert f"| {row} (published only) | – | {figure} | – | – |" in tables
    for row, figure in (("CLIP", "80.0"), ("GPT-4v", "74.0"), ("MatSim", "56.0")):
        assert f"| {row} (published only) | – | – | – | {figure} |" in tables
    assert "- RADAM (frozen ConvNeXt-L + linear SVM): Scabini" in tables and "arXiv 2303.04554" in tables
    assert "arXiv 2503.06368" in tables and "CVPR 2015" in tables
    assert "- CLIP, GPT-4v, MatSim, Ours: the paper (CVPR 2026, arXiv 2603.17390), Table 1" in tables
    assert "Published numbers: the paper (CVPR 2026, arXiv 2603.17390), Table 1" in tables  # the main table's
