"""Run one stage over items, resumably: a manifest of finished items, shards, any engine (local or Ray).

    >>> import tempfile
    >>> stage_dir = tempfile.mkdtemp()
    >>> double = lambda batch: [{**i, "y": 2 * i["x"], "status": "ok"} for i in batch]
    >>> res = run_stage("double", [{"id": "a", "x": 1}], stage_dir, lambda: double, progress=False)
    >>> [r["y"] for r in res.ok()], res.done_now
    ([2], 1)
    >>> run_stage("double", [{"id": "a", "x": 1}], stage_dir, lambda: double, progress=False).done_before
    1

How a run goes:

* ``<stage_dir>/manifest.jsonl`` (``manifest-<i>-of-<n>.jsonl`` for ``--shard i/n``) gets one JSON line per
  finished item, flushed and fsync'd after every batch. Items already in *any* manifest file of the stage are
  skipped, so a resumed or re-sharded run never redoes or duplicates an item; a torn last line left by a
  crash is ignored (and cut off before the next append).
* ``--shard i/n`` keeps the items whose stable hash of ``id`` is ``i`` mod ``n``: the same item always falls in
  the same shard, on every machine and in every stage.
* Batches go through ``fmmc.engine`` (``local`` by default, ``ray`` for a cluster), which retries a failing
  batch item by item; finished work is written as it arrives, so one bad item never loses another's result.
* An item whose result has ``status: failed`` (or that raised) is not finished: it is listed at the end, in
  ``failures.jsonl``, and retried by the next run. ``ok`` and ``rejected`` are final.
* ``stage.json`` stores the settings that shape the outputs; resuming with different ones is refused
  (use a new output folder instead of mixing two configurations in one dataset).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fmmc.core.io import write_text_atomic

log = logging.getLogger(__name__)

Item = dict[str, Any]
StageFactory = Callable[[], Callable[[list[Item]], list[Item]]]
FINAL_STATUSES = ("ok", "rejected")
STAGE_FILE = "stage.json"


# ------------------------------------------------------------------------------------------------ shards
def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/8"`` -> ``(2, 8)`` (shard 2 of 8, counting from 0); None or ``"0/1"`` means everything."""
    if text in (None, "", "0/1"):
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError as e:
        raise ValueError(f"--shard {text!r}: expected i/n, e.g. 0/4 (shard 0 of 4, counting from 0)") from e
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n, e.g. 0/4 ... 3/4")
    return i, n


def shard_of(item_id: str, n: int) -> int:
    """The shard (0..n-1) of an id: a stable hash, the same on every machine and Python."""
    return int(hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:12], 16) % n


def in_shard(item_id: str, shard: tuple[int, int] | None) -> bool:
    return shard is None or shard_of(item_id, shard[1]) == shard[0]


# ---------------------------------------------------------------------------------------------- manifest
def manifest_name(shard: tuple[int, int] | None) -> str:
    return "manifest.jsonl" if shard is None else f"manifest-{shard[0]:03d}-of-{shard[1]:03d}.jsonl"


def _json_default(o: Any) -> Any:
    if hasattr(o, "item") and callable(o.item):  # numpy / torch scalars
        return o.item()
    if isinstance(o, (tuple, set, frozenset)):
        return list(o)
    return str(o)


def read_manifest_file(path: str | Path) -> list[Item]:
    """Records of one manifest file; a torn last line (no newline: a crash mid-write) is ignored."""
    data = Path(path).read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1].strip():
        log.info("%s: ignoring a torn last line (%d bytes) left by an interrupted run", path, len(lines[-1]))
    records = []
    for n, line in enumerate(lines[:-1], start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: not valid JSON, ignored (that item will be redone)", path, n)
            continue
        if isinstance(rec, dict) and isinstance(rec.get("id"), str):
            records.append(rec)
    return records


def read_manifests(stage_dir: str | Path) -> dict[str, Item]:
    """Every finished record of a stage, all shards (``id -> record``; a later line wins)."""
    out: dict[str, Item] = {}
    for p in sorted(Path(stage_dir).glob("manifest*.jsonl")):
        for rec in read_manifest_file(p):
            out[rec["id"]] = rec
    return out


class Manifest:
    """Append-only JSON-lines file, one writer at a time (an advisory lock refuses a second process)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._f: Any = None

    def __enter__(self) -> Manifest:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a+b")
        try:
            import fcntl

            fcntl.flock(self._f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not POSIX: no lock
            pass
        except OSError as e:
            self._f.close()
            raise RuntimeError(f"{self.path} is being written by another process; wait for it to finish, or "
                               "run the other process with a different --shard") from e
        self._cut_torn_tail()
        return self

    def _cut_torn_tail(self) -> None:
        f = self._f
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        keep = data.rfind(b"\n") + 1
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
        log.info("%s: cut a torn last line (%d bytes)", self.path, size - keep)

    def append(self, records: Sequence[Item]) -> None:
        if not records:
            return
        payload = "".join(json.dumps(r, ensure_ascii=False, default=_json_default) + "\n" for r in records)
        self._f.seek(0, os.SEEK_END)
        self._f.write(payload.encode("utf-8"))
        self._f.flush()
        os.fsync(self._f.fileno())

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


# ----------------------------------------------------------------------------------------- fingerprints
def check_fingerprint(stage_dir: Path, stage: str, settings: dict[str, Any] | None) -> None:
    """Refuse to resume a stage folder made with other output-shaping settings; record them otherwise."""
    if settings is None:
        return
    path = stage_dir / STAGE_FILE
    settings = json.loads(json.dumps(settings, default=_json_default))
    if path.is_file():
        try:
            old = json.loads(path.read_text()).get("settings", {})
        except (json.JSONDecodeError, AttributeError):
            old = None
        if old is not None and old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(
                f"{stage_dir} holds {stage} results made with other settings ({', '.join(diff)}: "
                f"{', '.join(f'{k}={old.get(k)!r}' for k in diff)}); resuming would mix them. Use a new output "
                f"folder (out=...), or delete {stage_dir} to redo this stage with the new settings.")
        if old is not None:
            return
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps({"stage": stage, "settings": settings}, indent=1, sort_keys=True) + "\n")


# -------------------------------------------------------------------------------------------- the runner
@dataclass
class StageResult:
    stage: str
    records: list[Item]                      # finished records (all shards) of the given items, input order
    done_before: int = 0                     # items of this shard skipped: already in a manifest
    done_now: int = 0                        # items finished by this run
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, message): retried next run
    manifest: Path | None = None
    seconds: float = 0.0
    pending_other_shards: int = 0            # items of other shards not finished yet

    def ok(self) -> list[Item]:
        return [r for r in self.records if r.get("status") == "ok"]

    @property
    def counts(self) -> Counter[str]:
        return Counter(str(r.get("status")) for r in self.records)

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return (f"{self.stage}: {self.done_now} done now, {self.done_before} already done, "
                f"{len(self.failures)} failed; all shards: {counts or 'nothing yet'}")


def _get_engine(engine: Any) -> tuple[Any, bool]:
    if engine is None or isinstance(engine, str):
        from fmmc.engine import get_engine

        return get_engine(engine or "local"), True
    return engine, False


def run_stage(
    stage: str,
    items: Sequence[Item],
    stage_dir: str | Path,
    factory: StageFactory,
    *,
    batch_size: int = 8,
    shard: tuple[int, int] | None = None,
    engine: Any = "local",
    settings: dict[str, Any] | None = None,
    progress: bool = True,
    concurrency: int | None = None,
    num_gpus: float | None = None,
) -> StageResult:
    """Map ``factory()`` (built only if there is work) over the unfinished items of this shard.

    ``items`` need unique string ``id``s. ``settings`` are the output-shaping settings checked on resume.
    ``engine`` is a spec (``local``, ``ray``, ``ray:auto``) or an engine object from :func:`fmmc.engine.get_engine`.
    """
    t0 = time.perf_counter()
    stage_dir = Path(stage_dir)
    ids = [str(i.get("id")) for i in items]
    if len(set(ids)) != len(ids) or not all(i and i != "None" for i in ids):
        dup = next((i for i, c in Counter(ids).items() if c > 1), None)
        raise ValueError(f"stage {stage}: every item needs a unique string 'id' (duplicate or missing: {dup!r})")
    check_fingerprint(stage_dir, stage, settings)
    done = read_manifests(stage_dir)
    mine = [it for it in items if in_shard(it["id"], shard)]
    todo = [it for it in mine if it["id"] not in done]
    result = StageResult(stage, [], done_before=len(mine) - len(todo))
    manifest_path = stage_dir / manifest_name(shard)
    result.manifest = manifest_path
    if todo:
        log.info("%s: %d to do, %d already done%s", stage, len(todo), result.done_before,
                 f" (shard {shard[0]}/{shard[1]})" if shard else "")
        failures = _map(stage, todo, stage_dir, manifest_path, factory, done, result, batch_size, engine,
                        progress, concurrency, num_gpus)
        result.failures = failures
    else:
        log.info("%s: nothing to do (%d already done)", stage, result.done_before)
    _write_failures(stage_dir, shard, result.failures)
    result.records = [done[i] for i in ids if i in done]
    result.pending_other_shards = sum(1 for it in items if it["id"] not in done and not in_shard(it["id"], shard))
    result.seconds = time.perf_counter() - t0
    if result.failures:
        shown = "\n  ".join(f"{i}: {m}" for i, m in result.failures[:20])
        more = f"\n  ... and {len(result.failures) - 20} more" if len(result.failures) > 20 else ""
        log.warning("%s: %d item(s) failed (listed in %s; the next run retries them):\n  %s%s", stage,
                    len(result.failures), stage_dir / _failures_name(shard), shown, more)
    log.info("%s (%.1f s)", result.summary(), result.seconds)
    return result


def _map(stage: str, todo: list[Item], stage_dir: Path, manifest_path: Path, factory: StageFactory,
         done: dict[str, Item], result: StageResult, batch_size: int, engine: Any, progress: bool,
         concurrency: int | None, num_gpus: float | None) -> list[tuple[str, str]]:
    pending = {it["id"] for it in todo}
    failed: dict[str, str] = {}
    eng, owned = _get_engine(engine)
    try:
        with Manifest(manifest_path) as manifest:
            def on_result(records: list[Item]) -> None:
                finished = []
                for r in records:
                    rid = r.get("id") if isinstance(r, dict) else None
                    if rid not in pending:
                        log.warning("%s: the stage returned an unknown or repeated id %r; ignored", stage, rid)
                        continue
                    if r.get("status") not in FINAL_STATUSES:
                        failed[rid] = str(r.get("reason") or f"status {r.get('status')!r}")
                        continue
                    pending.discard(rid)
                    failed.pop(rid, None)
                    finished.append(r)
                manifest.append(finished)
                for r in finished:
                    done[r["id"]] = r
                result.done_now += len(finished)

            engine_failures = eng.map_stage(todo, factory, batch_size=batch_size, concurrency=concurrency,
                                            num_gpus=num_gpus, on_result=on_result,
                                            progress=f"synth {stage}" if progress else False,
                                            info_path=stage_dir / "engine.json")
    finally:
        if owned and hasattr(eng, "close"):
            eng.close()
    for rid, message in engine_failures:
        if rid in pending:
            failed[rid] = message
    for rid in pending:
        failed.setdefault(rid, "the stage returned no record for this item")
    order = {it["id"]: k for k, it in enumerate(todo)}
    return sorted(failed.items(), key=lambda kv: order.get(kv[0], 0))


def _failures_name(shard: tuple[int, int] | None) -> str:
    return manifest_name(shard).replace("manifest", "failures")


def _write_failures(stage_dir: Path, shard: tuple[int, int] | None, failures: list[tuple[str, str]]) -> None:
    path = stage_dir / _failures_name(shard)
    if not failures:
        path.unlink(missing_ok=True)
        return
    stage_dir.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"id": i, "error": m}) + "\n" for i, m in failures))
