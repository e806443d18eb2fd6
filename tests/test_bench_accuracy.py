"""``benchmarks/bench_accuracy.py``: its core on a tiny setting (one seed, 64 px, 3 scenes per class), and its
summary (mean and spread over seeds, the gain over the probe, the +5-point mark). The figures themselves
come from the full run (``python benchmarks/bench_accuracy.py``, see benchmarks/README.md)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("skimage")  # the demo's photos
pytest.importorskip("sklearn")  # the probe
pytest.importorskip("efficientnet_lite_pytorch")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_accuracy.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_accuracy", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_accuracy"] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("bench_accuracy", None)


def test_core_scores_every_recipe_from_one_extraction_per_feature_setting(bench, tmp_path):
    every = {r.name: r for r in bench.recipes()}
    # one feature setting (max-pooled Lite0) for all three, the last two-stream on the demo's descriptions
    chosen = [every[n] for n in ("probe", "auto")] + [bench.Recipe("auto +text", "both", train=bench.AUTO)]
    bench.check_recipes(chosen)
    cache = tmp_path / "cache"
    res = bench.run_seed(0, chosen, tmp_path / "work", cache, image_size=64, per_class=3, download=False,
                         log=lambda _: None)
    assert set(res["recipes"]) == {"probe", "auto", "auto +text"}
    assert 0.0 <= res["recipes"]["auto +text"]["no_text_accuracy"] <= 1.0  # describer=none at inference
    assert "no_text_accuracy" not in res["recipes"]["auto"]
    for s in res["recipes"].values():
        assert 0.0 <= s["accuracy"] <= 1.0 and 0.0 <= s["mean_class_accuracy"] <= 1.0
    assert res["recipes"]["auto"]["chosen"]  # what recipe=auto chose, from the run's summary.json
    assert res["n_regions"]["test"] > 0 and res["n_photos"]["test"] > 0
    # the probe and both fmmc recipes read one cache namespace: the features were extracted once
    assert len([p for p in (cache / "features").iterdir() if p.is_dir()]) == 1


def test_summary_gives_mean_spread_and_the_gain_over_the_probe(bench):
    chosen = [r for r in bench.recipes() if r.name in ("probe", "paper", "auto")]

    def seed(probe: float, paper: float, auto: float) -> dict:
        return {"recipes": {"probe": {"accuracy": probe, "mean_class_accuracy": probe},
                            "paper": {"accuracy": paper, "mean_class_accuracy": paper},
                            "auto": {"accuracy": auto, "mean_class_accuracy": auto - 0.1}}}

    s = bench.summarize_runs([seed(0.5, 0.5, 0.6), seed(0.6, 0.4, 0.6)], chosen)
    assert s["best"] == "auto" and s["gain_points"] == pytest.approx(5.0) and s["target_met"]
    assert s["gain_points_per_seed"] == [10.0, 0.0]
    assert s["rows"]["paper"]["acc_std"] == pytest.approx(0.0707, abs=1e-4)
    lines = bench.table(s, [0, 1])
    assert "[PASS]" in lines[-1] and "+5.0 points" in lines[-1]
    s = bench.summarize_runs([seed(0.5, 0.5, 0.54), seed(0.6, 0.4, 0.6)], chosen)
    assert not s["target_met"] and "[MISS]" in bench.table(s, [0, 1])[-1]
    # with a two-stream recipe the vision-only best is reported too (like for like with the probe)
    text = bench.Recipe("t", "both")
    runs = [seed(0.5, 0.5, 0.6), seed(0.6, 0.4, 0.6)]
    for r, a in zip(runs, (0.9, 0.8)):
        r["recipes"]["t"] = {"accuracy": a, "mean_class_accuracy": a, "no_text_accuracy": a - 0.3}
    s = bench.summarize_runs(runs, chosen + [text])
    assert s["best"] == "t" and s["gain_points"] == pytest.approx(30.0) and s["vision"]["best"] == "auto"
    assert s["rows"]["t"]["no_text_acc_mean"] == pytest.approx(0.55) and s["rows"]["auto"]["no_text_acc_mean"] is None
    assert "best vision-only recipe: auto, +5.0" in "\n".join(bench.table(s, [0, 1]))


def test_a_recipe_naming_an_unknown_field_fails_before_any_work(bench):
    bad = bench.Recipe("x", train={"no_such_field": 1})
    with pytest.raises(SystemExit, match=r"recipe 'x': \['no_such_field'\] are not TrainConfig fields"):
        bench.check_recipes([bad])
