"""Stage runner: manifest, resume, torn lines, shards, failures, settings check (no models needed)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from fmmc.synth.runner import (
    Manifest,
    in_shard,
    parse_shard,
    read_manifest_file,
    read_manifests,
    run_stage,
    shard_of,
)

ITEMS = [{"id": f"item-{k:02d}", "x": k} for k in range(20)]


class Square:
    """A stage that squares ``x``; rejects multiples of 7, raises on ids in ``boom``, reports 'failed' on ``bad``."""

    def __init__(self, boom=(), bad=(), log=None):
        self.boom, self.bad, self.log = set(boom), set(bad), log if log is not None else []

    def __call__(self, batch):
        self.log.append([i["id"] for i in batch])
        out = []
        for it in batch:
            if it["id"] in self.boom:
                raise RuntimeError(f"boom on {it['id']}")
            status = "failed" if it["id"] in self.bad else "rejected" if it["x"] % 7 == 0 else "ok"
            out.append({**it, "y": it["x"] ** 2, "status": status, "reason": "nope" if status != "ok" else None})
        return out


def lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_run_writes_manifest_and_skips_done(tmp_path):
    calls = []
    res = run_stage("sq", ITEMS, tmp_path, lambda: Square(log=calls), batch_size=6, progress=False)
    assert res.done_now == 20 and res.done_before == 0 and not res.failures
    assert [r["id"] for r in res.records] == [i["id"] for i in ITEMS]
    assert res.counts == {"ok": 17, "rejected": 3}
    assert len(lines(tmp_path / "manifest.jsonl")) == 20
    assert [len(b) for b in calls] == [6, 6, 6, 2]

    built = []
    res2 = run_stage("sq", ITEMS, tmp_path, lambda: built.append(1) or Square(), progress=False)
    assert res2.done_now == 0 and res2.done_before == 20 and built == []  # nothing to do: the model is not even built
    assert [r["y"] for r in res2.records] == [r["y"] for r in res.records]
    assert len(lines(tmp_path / "manifest.jsonl")) == 20


def test_failures_are_listed_kept_apart_and_retried(tmp_path):
    res = run_stage("sq", ITEMS, tmp_path, lambda: Square(boom={"item-03"}, bad={"item-10"}), batch_size=4,
                    progress=False)
    assert sorted(i for i, _ in res.failures) == ["item-03", "item-10"]
    assert "boom on item-03" in dict(res.failures)["item-03"] and dict(res.failures)["item-10"] == "nope"
    assert res.done_now == 18  # the three other items of item-03's batch were saved
    failed = lines(tmp_path / "failures.jsonl")
    assert {f["id"] for f in failed} == {"item-03", "item-10"}
    ids = [r["id"] for r in lines(tmp_path / "manifest.jsonl")]
    assert "item-03" not in ids and "item-10" not in ids and len(ids) == len(set(ids)) == 18

    calls = []
    res2 = run_stage("sq", ITEMS, tmp_path, lambda: Square(log=calls), batch_size=4, progress=False)
    assert calls == [["item-03", "item-10"]] and res2.done_now == 2 and not res2.failures
    assert not (tmp_path / "failures.jsonl").exists()
    assert len(lines(tmp_path / "manifest.jsonl")) == 20


def test_crash_after_some_batches_then_resume_equals_one_run(tmp_path):
    class Crash(Square):
        def __init__(self, after):
            super().__init__()
            self.n, self.after = 0, after

        def __call__(self, batch):
            self.n += 1
            if self.n > self.after:
                raise KeyboardInterrupt  # not an item failure: stops the run like a kill
            return super().__call__(batch)

    with pytest.raises(KeyboardInterrupt):
        run_stage("sq", ITEMS, tmp_path / "a", lambda: Crash(after=2), batch_size=3, progress=False)
    assert len(lines(tmp_path / "a" / "manifest.jsonl")) == 6
    resumed = run_stage("sq", ITEMS, tmp_path / "a", lambda: Square(), batch_size=3, progress=False)
    once = run_stage("sq", ITEMS, tmp_path / "b", lambda: Square(), batch_size=3, progress=False)
    assert resumed.done_before == 6 and resumed.done_now == 14
    assert resumed.records == once.records
    assert sorted(map(json.dumps, lines(tmp_path / "a" / "manifest.jsonl"))) == \
        sorted(map(json.dumps, lines(tmp_path / "b" / "manifest.jsonl")))


def test_torn_last_line_is_ignored_and_cut(tmp_path):
    run_stage("sq", ITEMS[:5], tmp_path, lambda: Square(), progress=False)
    path = tmp_path / "manifest.jsonl"
    with open(path, "ab") as f:
        f.write(b'{"id": "item-05", "x": 5, "y": 2')  # a crash in the middle of a write
    assert [r["id"] for r in read_manifest_file(path)] == [f"item-{k:02d}" for k in range(5)]
    res = run_stage("sq", ITEMS[:8], tmp_path, lambda: Square(), progress=False)
    assert res.done_now == 3
    assert [r["id"] for r in lines(path)] == [f"item-{k:02d}" for k in range(8)]  # parses: the torn tail is gone


def test_corrupt_middle_line_is_redone(tmp_path):
    run_stage("sq", ITEMS[:3], tmp_path, lambda: Square(), progress=False)
    path = tmp_path / "manifest.jsonl"
    text = path.read_text().splitlines()
    path.write_text("\n".join([text[0], "{garbage", text[2]]) + "\n")
    res = run_stage("sq", ITEMS[:3], tmp_path, lambda: Square(), progress=False)
    assert res.done_now == 1 and len(read_manifests(tmp_path)) == 3


def test_shards_partition_items_stably(tmp_path):
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None and parse_shard("0/1") is None
    for bad in ("4/4", "-1/2", "x", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    ids = [i["id"] for i in ITEMS]
    parts = [[i for i in ids if in_shard(i, (k, 3))] for k in range(3)]
    assert sorted(sum(parts, [])) == ids and all(parts)
    assert shard_of("item-07", 3) == shard_of("item-07", 3) == int(shard_of("item-07", 3))

    results = [run_stage("sq", ITEMS, tmp_path, lambda: Square(), shard=(k, 3), progress=False) for k in range(3)]
    assert [r.done_now for r in results] == [len(p) for p in parts]
    assert results[0].pending_other_shards == len(parts[1]) + len(parts[2])
    assert results[2].pending_other_shards == 0 and len(results[2].records) == 20
    assert sorted(p.name for p in tmp_path.glob("manifest*.jsonl")) == [
        "manifest-000-of-003.jsonl", "manifest-001-of-003.jsonl", "manifest-002-of-003.jsonl"]
    # an unsharded run afterwards finds everything done
    assert run_stage("sq", ITEMS, tmp_path, lambda: Square(), progress=False).done_now == 0


def test_changed_settings_are_refused(tmp_path):
    run_stage("sq", ITEMS[:2], tmp_path, lambda: Square(), settings={"steps": 30, "model": "m"}, progress=False)
    run_stage("sq", ITEMS[:4], tmp_path, lambda: Square(), settings={"steps": 30, "model": "m"}, progress=False)
    with pytest.raises(ValueError, match=r"other settings \(steps: steps=30\).*new output"):
        run_stage("sq", ITEMS, tmp_path, lambda: Square(), settings={"steps": 20, "model": "m"}, progress=False)


def test_ids_must_be_unique(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        run_stage("sq", [{"id": "a"}, {"id": "a"}], tmp_path, lambda: Square(), progress=False)
    with pytest.raises(ValueError, match="unique"):
        run_stage("sq", [{"x": 1}], tmp_path, lambda: Square(), progress=False)


def test_second_writer_is_refused(tmp_path):
    with Manifest(tmp_path / "manifest.jsonl"):
        with pytest.raises(RuntimeError, match="another process"):
            run_stage("sq", ITEMS[:2], tmp_path, lambda: Square(), progress=False)


def test_generation_plan_seeds_and_balance():
    from fmmc.synth.config import SynthConfig
    from fmmc.synth.pipeline import plan_generation, stable_seed
    from fmmc.synth.triplets import make_triplet

    trip = [make_triplet(f"obj{k}", "wood", "oak", "wood") for k in range(4)] + [make_triplet("key", "metal", "brass", "metal")]
    trip.append({**make_triplet("vase", "metal", "copper", "metal"), "status": "filtered"})
    cfg = SynthConfig()
    cfg.triplets.per_class, cfg.generate.seeds_per_prompt = 4, 2
    items = plan_generation(trip, cfg)
    assert Counter(i["label"] for i in items) == {"wood": 8, "metal": 8}  # 1 metal triplet gets 4x the seeds
    assert len({i["id"] for i in items}) == len(items) and "metal--vase--copper--0" not in {i["id"] for i in items}
    first = items[0]
    assert first["id"] == "wood--obj0--oak--0" and first["seed"] == stable_seed(0, "wood--obj0--oak", 0)
    assert first["prompt"].startswith("a photo of an oak wood obj0")
    again = {i["id"]: i["seed"] for i in plan_generation(list(reversed(trip)), cfg)}
    assert again == {i["id"]: i["seed"] for i in items}  # the order of triplets does not matter
    cfg.generate.balance_seeds = False
    assert Counter(i["label"] for i in plan_generation(trip, cfg)) == {"wood": 8, "metal": 2}
    cfg.seed = 1
    assert plan_generation(trip, cfg)[0]["seed"] != first["seed"]
