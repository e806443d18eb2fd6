"""The engine abstraction without Ray: spec parsing, batching, retries, the local engine, import hygiene."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fmmc.engine import engine_spec, get_engine, run_batch
from fmmc.engine.base import chunked, write_info


class Doubler:
    """Deterministic stage; ``bad`` ids raise; counts calls."""

    def __init__(self, bad: tuple[str, ...] = ()) -> None:
        self.bad = set(bad)
        self.calls: list[list[str]] = []

    def __call__(self, items: list[dict]) -> list[dict]:
        self.calls.append([i["id"] for i in items])
        if any(i["id"] in self.bad for i in items):
            raise RuntimeError("bad item in batch")
        return [{**i, "y": 2 * i["x"]} for i in items]


def _items(n: int) -> list[dict]:
    return [{"id": f"i{k:02d}", "x": k} for k in range(n)]


def test_core_imports_no_ray() -> None:
    code = ("import sys, fmmc, fmmc.engine, fmmc.synth.runner, fmmc.cli.main, fmmc.cli.features_cmd;"
            "from fmmc.engine import get_engine; get_engine('local');"
            "sys.exit(1 if any(m == 'ray' or m.startswith('ray.') for m in sys.modules) else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_engine_spec_from_flags() -> None:
    assert engine_spec(None) == "local"
    assert engine_spec("ray") == "ray"
    assert engine_spec("ray", "auto") == "ray:auto"
    assert engine_spec("ray:auto", "auto") == "ray:auto"
    with pytest.raises(ValueError, match="needs --engine ray"):
        engine_spec("local", "auto")
    with pytest.raises(ValueError, match="disagree"):
        engine_spec("ray:a:1", "b:2")


def test_registry_knows_engines() -> None:
    from fmmc.core.registry import registry

    specs = [s for s, _ in registry("engine").specs()]
    assert "local" in specs and "ray" in specs and "ray:auto" in specs
    assert get_engine("local").spec == "local"
    with pytest.raises(ValueError, match="takes no argument"):
        get_engine("local:x")
    with pytest.raises(ValueError, match="unknown engine spec"):
        get_engine("spark")


def test_chunked_is_the_same_everywhere() -> None:
    assert [len(b) for b in chunked(_items(7), 3)] == [3, 3, 1]
    with pytest.raises(ValueError):
        chunked(_items(2), 0)


def test_run_batch_isolates_the_bad_item() -> None:
    stage = Doubler(bad=("i01",))
    results, failures = run_batch(stage, _items(3), max_retries=1)
    assert [r["id"] for r in results] == ["i00", "i02"]
    assert failures == [("i01", "RuntimeError: bad item in batch")]
    # one batch try, then each item alone; the bad one gets 1 + max_retries tries
    assert stage.calls == [["i00", "i01", "i02"], ["i00"], ["i01"], ["i01"], ["i02"]]


def test_run_batch_of_one_retries_max_retries_times() -> None:
    stage = Doubler(bad=("i00",))
    _, failures = run_batch(stage, _items(1), max_retries=2)
    assert len(stage.calls) == 3 and len(failures) == 1
    stage = Doubler(bad=("i00",))
    run_batch(stage, _items(1), max_retries=0)
    assert len(stage.calls) == 1


def test_run_batch_rejects_bad_output() -> None:
    _, failures = run_batch(lambda b: "nope", _items(1), max_retries=0)  # type: ignore[arg-type,return-value]
    assert "list of dicts" in failures[0][1]


def test_local_engine_maps_batches_in_order(tmp_path) -> None:
    stage = Doubler(bad=("i04",))
    built = []

    def factory() -> Doubler:
        built.append(1)
        return stage

    got: list[dict] = []
    engine = get_engine("local", max_retries=0)
    failures = engine.map_stage(_items(10), factory, batch_size=4, on_result=got.extend, info_path=tmp_path)
    assert len(built) == 1  # the model is built once
    assert [r["id"] for r in got] == [f"i{k:02d}" for k in range(10) if k != 4]
    assert failures == [("i04", "RuntimeError: bad item in batch")]
    assert stage.calls[0] == ["i00", "i01", "i02", "i03"]
    assert (tmp_path / "engine.json").is_file()
    assert engine.last_stats["items"] == 10


def test_local_engine_refuses_duplicate_ids() -> None:
    with pytest.raises(ValueError, match="duplicate id"):
        get_engine("local").map_stage([{"id": "a"}, {"id": "a"}], lambda: (lambda b: b))


def test_local_engine_builds_nothing_without_items() -> None:
    def factory():
        raise AssertionError("must not load a model for no work")

    assert get_engine("local").map_stage([], factory) == []


def test_write_info(tmp_path) -> None:
    p = write_info(tmp_path / "x", {"engine": "local"})
    assert p.name == "engine.json" and '"engine": "local"' in p.read_text()


def test_features_cli_is_registered() -> None:
    from fmmc.cli.main import build_parser

    args = build_parser().parse_args(["features", "data", "--backbone", "builtin:efficientnet-lite0",
                                      "--engine", "ray", "--ray-address", "auto", "--num-gpus", "0.5"])
    assert args.engine == "ray" and args.ray_address == "auto" and args.num_gpus == 0.5


def test_features_cli_needs_something_to_do(tmp_path, capsys) -> None:
    from fmmc.cli.main import main

    assert main(["features", str(tmp_path)]) == 1
    assert "nothing to do" in capsys.readouterr().err


def test_features_takes_the_train_overrides_and_fills_the_cache_train_reads(tiny_dataset, tiny_dinov2, tmp_path,
                                                                             capsys) -> None:
    """``fmmc features`` takes ``key=value`` TrainConfig overrides as ``fmmc train`` does (layers, scales,
    flip_tta had no way in but --config), and ``fmmc train`` with the same ones finds every feature cached."""
    from fmmc.cli.main import main

    cache = tmp_path / "cache"
    same = ["layers=2", "flip_tta=true"]
    common = ["--backbone", f"hf:{tiny_dinov2}", "--quiet"]
    assert main(["features", str(tiny_dataset), *common, "--image-size", "56", "--cache-dir", str(cache), *same]) == 0
    first = capsys.readouterr().out
    assert " 0 cached" in first and "0 failed" in first, first
    (ns,) = [d for d in (cache / "features").iterdir() if d.is_dir()]
    assert main(["train", "--data", str(tiny_dataset), "--out", str(tmp_path / "run"), *common, "--streams", "vision",
                 "--epochs", "1", "image_size=56", f"cache_dir={cache}", *same]) == 0
    assert [d for d in (cache / "features").iterdir() if d.is_dir()] == [ns]  # the same namespace, nothing new
    assert main(["features", str(tiny_dataset), *common, "--image-size", "56", "--cache-dir", str(cache), *same]) == 0
    assert "features: 0 extracted" in capsys.readouterr().out
    # key=value wins over a flag, as in `fmmc train` (the help said the opposite for a while)
    assert main(["features", str(tiny_dataset), *common, "--image-size", "112", "--cache-dir", str(cache), *same,
                 "image_size=56"]) == 0
    assert "features: 0 extracted" in capsys.readouterr().out
