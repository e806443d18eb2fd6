"""The pieces that make finished work survive: the feature cache's per-batch commits and merges, the
journal of batch predictions, output folders that never replace a user's files, one line per I/O fault."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import torch

from fmmc.core.errors import describe_os_error
from fmmc.core.journal import Journal, JournalMismatch
from fmmc.core.outputs import (
    MARKER,
    OutputRefused,
    atomic_dir,
    check_output_dir,
    check_output_file,
    write_marker,
)
from fmmc.vision.cache import CacheUnwritable, FeatureCache


def _vec(i: int) -> torch.Tensor:
    return torch.full((4,), float(i))


def test_each_commit_is_on_disk_at_once(tmp_path: Path):
    c = FeatureCache(tmp_path, "ns", shard_size=100)
    for i in range(3):
        c.put(f"k{i}", _vec(i))
    assert len(FeatureCache(tmp_path, "ns")) == 0  # buffered only
    c.commit()
    # a new process (no compact, no close: as after kill -9) sees the batch
    other = FeatureCache(tmp_path, "ns")
    assert len(other) == 3 and torch.equal(other.get("k2"), _vec(2))


def test_merge_keeps_every_vector_and_removes_parts(tmp_path: Path):
    c = FeatureCache(tmp_path, "ns", shard_size=6)
    for i in range(14):
        c.put(f"k{i}", _vec(i))
        if i % 2 == 1:
            c.commit()  # batches of 2; merged into a shard every 6 vectors
    c.compact()
    d = tmp_path / "ns"
    # two full shards; the last batch stays the one part (nothing to merge it with)
    assert len(list(d.glob("part-*"))) == 1 and len(list(d.glob("shard-*"))) == 2
    c.put("x", _vec(99))
    c.put("y", _vec(98))
    c.commit()
    c.compact()  # end of a run: its parts become one shard
    assert len(list(d.glob("part-*"))) == 0 and len(list(d.glob("shard-*"))) == 3
    fresh = FeatureCache(tmp_path, "ns")
    assert len(fresh) == 16 and all(torch.equal(fresh.get(f"k{i}"), _vec(i)) for i in range(14))


def test_unindexed_file_is_ignored_and_torn_line_does_not_swallow_the_next(tmp_path: Path):
    c = FeatureCache(tmp_path, "ns")
    c.put("a", _vec(1))
    c.commit()
    d = tmp_path / "ns"
    # a kill after a part was renamed into place but before its index lines: the file is simply unknown
    (d / "part-orphan.safetensors").write_bytes((next(d.glob("part-*"))).read_bytes())
    with open(d / "index.jsonl", "a") as f:
        f.write('{"key": "b", "sha')  # a kill in the middle of an index line
    again = FeatureCache(tmp_path, "ns")
    assert len(again) == 1 and again.get("b") is None
    again.put("c", _vec(3))
    again.commit()
    assert torch.equal(FeatureCache(tmp_path, "ns").get("c"), _vec(3))  # its line was not glued to the torn one


def test_two_writers_share_a_cache(tmp_path: Path):
    a, b = FeatureCache(tmp_path, "ns", shard_size=4), FeatureCache(tmp_path, "ns", shard_size=4)
    for i in range(8):
        (a if i % 2 else b).put(f"k{i}", _vec(i))
        (a if i % 2 else b).commit()
    a.compact()
    b.compact()
    seen = FeatureCache(tmp_path, "ns")
    assert len(seen) == 8 and all(torch.equal(seen.get(f"k{i}"), _vec(i)) for i in range(8))


def test_unwritable_cache_required_or_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheUnwritable, match=r"feature cache .*file/ns cannot be written.*FMMC_CACHE"):
        FeatureCache(blocker, "ns")
    soft = FeatureCache(blocker, "ns", required=False)
    soft.put("k", _vec(1))
    soft.commit()
    assert not soft.writable and len(soft) == 0
    assert sum("cannot be written" in r.message for r in caplog.records) == 1  # one warning


def test_journal_resumes_ignores_torn_lines_and_knows_its_run(tmp_path: Path):
    path = tmp_path / ".p.partial.jsonl"
    j = Journal(path, {"model": "m1"})
    assert not path.exists()  # appears with its first batch
    j.append([{"key": "a", "probs": [1.0]}, {"key": "b", "error": "bad"}])
    with open(path, "a") as f:
        f.write('{"key": "c", "pro')  # torn by a kill
    again = Journal(path, {"model": "m1"}, on_mismatch="refuse")
    assert set(again.done) == {"a", "b"} and again.successes == 1
    again.append([{"key": "c", "probs": [0.5]}])
    assert set(Journal(path, {"model": "m1"}).done) == {"a", "b", "c"}
    with pytest.raises(JournalMismatch, match="another run"):
        Journal(path, {"model": "m2"}, on_mismatch="refuse")
    assert Journal(path, {"model": "m2"}, on_mismatch="restart").done == {} and not path.exists()


def test_output_dir_rules(tmp_path: Path):
    f = tmp_path / "file.txt"
    f.write_text("mine")
    with pytest.raises(OutputRefused, match="is a file"):
        check_output_dir(f, "eval")
    with pytest.raises(OutputRefused, match="is a file, so nothing can be made under it"):
        check_output_dir(f / "out", "eval")
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    with pytest.raises(OutputRefused, match="fmmc did not write"):
        check_output_dir(user, "eval")
    other = tmp_path / "other"
    write_marker(other, "train", complete=True)
    with pytest.raises(OutputRefused, match="`fmmc train`, not `fmmc eval`"):
        check_output_dir(other, "eval", overwrite=True)
    stopped = tmp_path / "stopped"
    write_marker(stopped, "train", complete=False)
    check_output_dir(stopped, "train")  # a stopped run is taken up again
    write_marker(stopped, "train", complete=True)
    with pytest.raises(OutputRefused, match="--overwrite"):
        check_output_dir(stopped, "train")
    check_output_dir(stopped, "train", overwrite=True)
    check_output_dir(tmp_path / "new" / "deep", "eval")
    assert not (tmp_path / "new" / "deep").exists()  # the probe leaves nothing behind
    with pytest.raises(OutputRefused, match="exists; pass --overwrite"):
        check_output_file(f)
    assert f.read_text() == "mine" and (user / "notes.txt").read_text() == "keep"


def test_atomic_dir_appears_whole_or_not_at_all(tmp_path: Path):
    out = tmp_path / "res"
    with pytest.raises(RuntimeError):
        with atomic_dir(out, "eval") as tmp:
            (tmp / "a.json").write_text("{}")
            raise RuntimeError("killed half way")
    assert not out.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(out, "eval") as tmp:
        (tmp / "a.json").write_text("1")
    assert json.loads((out / MARKER).read_text())["complete"] is True
    with pytest.raises(OutputRefused):
        with atomic_dir(out, "eval") as tmp:
            pass
    with atomic_dir(out, "eval", overwrite=True) as tmp:
        (tmp / "b.json").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.json"]


@pytest.mark.parametrize(("code", "text"), [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only file system"),
                                            (errno.ENOTDIR, "is a file, not a folder"),
                                            (errno.EACCES, "permission denied")])
def test_every_io_fault_is_one_line_with_the_path(code: int, text: str):
    line = describe_os_error(OSError(code, "whatever", "/data/out/metrics.json"))
    assert line.startswith("/data/out/metrics.json: ") and text in line and "(" in line and "\n" not in line


def test_reproduce_overrides_after_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """As the reproduce docstring writes it: ``--only main,streams train.epochs=50``."""
    from fmmc.cli.main import _parse, build_parser

    args = _parse(build_parser(), ["reproduce", "configs/offline.yaml", "--only", "main,streams", "train.epochs=50",
                                   "--dry-run"])
    assert args.only == "main,streams" and args.overrides == ["train.epochs=50"] and args.dry_run
    from fmmc.evaluation.grid import load_grid_config

    cfg = load_grid_config(Path(__file__).parents[1] / "configs" / "offline.yaml", args.overrides, out=str(tmp_path))
    assert cfg.train["epochs"] == 50


_WRITER = """
import os, sys, signal, time, torch
from fmmc.vision.cache import FeatureCache
root, first, n, how = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
c = FeatureCache(root, "ns", shard_size=1000)
for i in range(first, first + n):
    c.put(f"k{i}", torch.full((4,), float(i)))
    c.commit()  # one part per vector, as a run's batches are
print("committed", flush=True)
if how == "die":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(60)  # alive, holding its lock, until the test kills it
"""


def test_parts_of_a_killed_writer_are_merged_and_a_live_writers_are_not(tmp_path: Path):
    """Found in an earlier review and left alone until now: the small parts of a killed or preempted run
    stayed parts for good (each process merged only its own). Real processes, a real SIGKILL."""
    import signal
    import subprocess
    import sys

    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    dead = subprocess.run([sys.executable, str(script), str(tmp_path), "0", "3", "die"], capture_output=True, text=True)
    assert dead.returncode == -signal.SIGKILL and "committed" in dead.stdout
    live = subprocess.Popen([sys.executable, str(script), str(tmp_path), "10", "2", "live"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert live.stdout is not None and live.stdout.readline().strip() == "committed"
        d = tmp_path / "ns"
        assert len(list(d.glob("part-*"))) == 5 and len(list(d.glob("writer-*.lock"))) == 2
        c = FeatureCache(tmp_path, "ns")
        c.put("mine", _vec(7))
        c.commit()
        c.compact()  # the end of this run: its part, with the dead writer's three, become one shard
        parts = sorted(p.name for p in d.glob("part-*"))
        assert len(parts) == 2 and len({p.split("-")[1] for p in parts}) == 1  # the live writer's two, untouched
        assert len(list(d.glob("shard-*"))) == 1
        assert len(list(d.glob("writer-*.lock"))) == 1  # the dead writer's lock is gone; the live one's stays
        fresh = FeatureCache(tmp_path, "ns")
        assert len(fresh) == 6 and all(torch.equal(fresh.get(f"k{i}"), _vec(i)) for i in (0, 1, 2, 10, 11))
    finally:
        live.kill()
        live.wait()
    again = FeatureCache(tmp_path, "ns")  # the live writer is dead now too: the next run takes its parts
    again.compact()
    assert not list(d.glob("part-*")) and not list(d.glob("writer-*.lock"))
    assert len(FeatureCache(tmp_path, "ns")) == 6


def test_a_file_system_without_locks_still_takes_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Some FUSE and network mounts refuse flock: the cache writes as before and adopts nothing there."""
    import fcntl

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    a = FeatureCache(tmp_path, "ns")
    a.put("a", _vec(1))
    a.commit()
    b = FeatureCache(tmp_path, "ns")
    b.put("b", _vec(2))
    b.commit()
    b.compact()  # a's part has a lock file nobody can lock: it is left to a
    assert a.writable and b.writable and len(list((tmp_path / "ns").glob("part-*"))) == 2
    assert len(FeatureCache(tmp_path, "ns")) == 2
