#!/usr/bin/env python
"""Fault matrix: how every writing ``fmmc`` command handles I/O faults.

For each command that writes (train, features, predict, eval, segment, reproduce, convert, serve start-up)
and each fault (``--out`` an existing file, under a file, on a read-only mount, on a full disk, an existing
folder holding a user's file; the feature cache ``$FMMC_CACHE`` under a file, read-only, on a full disk) it
runs the real CLI in a subprocess and classifies what happened:

    ok           exit 0, and the fault did not apply or was handled (a cache that cannot be written: skipped)
    clean-error  non-zero exit, no traceback, stderr's last line names the faulty path
    vague-error  non-zero exit, no traceback, but the last line does not name the path
    silent       exit 0 although the output could not have been written where it was asked to go
    traceback    a Python traceback on stderr
    destroyed    a user's file or folder was modified or removed
    hang         no exit within the time limit

    python tools/fault_matrix.py                       # the whole matrix, table + totals (about 2-3 min, 2 cores)
    python tools/fault_matrix.py --commands train,eval --faults out_file,out_full --json faults.json
    python tools/fault_matrix.py --all                 # + EACCES faults and the rerun control (about 4 min)
    PYTHONPATH=/tmp/fmmc_base/src python tools/fault_matrix.py   # another checkout (prep and runs both use it)

Mount faults (read-only, disk full) need ``mount -t tmpfs`` (root or CAP_SYS_ADMIN); without it those cells
are skipped with the reason. Permission faults (EACCES, ``--all``) run root's command under ``setpriv``
without CAP_DAC_OVERRIDE, so the folder's 0555 mode applies (a normal user needs nothing).
The same functions back ``tests/test_fault_matrix.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"

OUTCOMES = ("ok", "clean-error", "vague-error", "silent", "traceback", "destroyed", "hang", "skipped")
BAD = ("vague-error", "silent", "traceback", "destroyed", "hang")
USER_BYTES = b"my own notes, not fmmc's: keep me\n"


# --------------------------------------------------------------------------------------------------- faults

@dataclass(frozen=True)
class Fault:
    name: str
    target: str  # "out": the command's output path; "cache": $FMMC_CACHE
    mount: str | None  # None, "ro" or "full"
    text: str
    perm: bool = False  # a folder without write permission (EACCES): the run drops root's DAC override


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("out_file", "out", None, "--out is an existing regular file"),
    Fault("out_under_file", "out", None, "--out is under a regular file (its parent is a file)"),
    Fault("out_readonly", "out", "ro", "--out on a read-only mount"),
    Fault("out_full", "out", "full", "--out on a full disk (ENOSPC)"),
    Fault("out_user_dir", "out", None, "--out is an existing folder holding a user's file"),
    Fault("cache_under_file", "cache", None, "$FMMC_CACHE is under a regular file"),
    Fault("cache_readonly", "cache", "ro", "$FMMC_CACHE is a read-only mount"),
    Fault("cache_full", "cache", "full", "$FMMC_CACHE is on a full disk"),
    # a control, not a fault (not in the default matrix): --out is the output of an earlier run of the same
    # command; a rerun may replace it or refuse in one line (e.g. "pass --overwrite"), never a traceback
    Fault("out_rerun", "out", None, "--out is the output of an earlier run of the same command (control)"),
    # EACCES (not in the default matrix, to keep it within minutes): a folder without write permission
    Fault("out_no_permission", "out", None, "--out in a folder without write permission (EACCES)", perm=True),
    Fault("cache_no_permission", "cache", None, "$FMMC_CACHE is a folder without write permission", perm=True),
)}
EXTRA_FAULTS = ("out_rerun", "out_no_permission", "cache_no_permission")
DEFAULT_FAULTS = tuple(f for f in FAULTS if f not in EXTRA_FAULTS)


@dataclass
class CellSetup:
    """What one (command, fault) run gets: its output path, cache dir, guarded user files, and the path the
    error must name (``anchor``: every path the fault can be reported on contains it)."""

    work: Path
    out: Path
    cache: Path
    anchor: Path | None = None
    guards: dict[Path, bytes] = field(default_factory=dict)  # file -> its bytes (must be unchanged)
    mounts: list[Path] = field(default_factory=list)
    locked: list[Path] = field(default_factory=list)  # chmod 0555 folders (made writable again by teardown)


_MOUNT_LOCK = threading.Lock()
_MOUNT_OK: tuple[bool, str] | None = None


def _mount(directory: Path, options: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise OSError(f"mount -t tmpfs -o {options} {directory}: {(proc.stderr or proc.stdout).strip()}")


def umount(directory: Path) -> None:
    """Unmount (lazily if busy); never raises."""
    for cmd in (["umount", str(directory)], ["umount", "-l", str(directory)]):
        try:
            if subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0:
                return
        except (OSError, subprocess.SubprocessError):
            pass


def can_mount() -> tuple[bool, str]:
    """Whether tmpfs mounts work here (root / CAP_SYS_ADMIN), and why not."""
    global _MOUNT_OK
    with _MOUNT_LOCK:
        if _MOUNT_OK is None:
            if shutil.which("mount") is None:
                _MOUNT_OK = (False, "no `mount` command")
            else:
                probe = Path(tempfile.mkdtemp(prefix="fmmc-mount-probe-"))
                try:
                    _mount(probe, "size=64k,ro")
                    umount(probe)
                    _MOUNT_OK = (True, "")
                except (OSError, subprocess.SubprocessError) as e:
                    _MOUNT_OK = (False, f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {e}")
                finally:
                    shutil.rmtree(probe, ignore_errors=True)
        return _MOUNT_OK


def mount_readonly(directory: Path) -> Path:
    _mount(directory, "size=4m,ro")
    return directory


def mount_full(directory: Path, size: str = "64k") -> Path:
    """A tiny tmpfs filled up: every write of a byte fails with ENOSPC (creating empty files/folders may not)."""
    _mount(directory, f"size={size}")
    try:
        with open(directory / ".filler", "wb", buffering=0) as f:
            chunk = b"\0" * 4096
            while True:
                f.write(chunk)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            umount(directory)
            raise
    return directory


def setup_fault(fault: Fault, work: Path, out_kind: str | None) -> CellSetup:
    """Lay out the fault under ``work`` (mounts are listed in ``.mounts``: call :func:`teardown` after)."""
    work.mkdir(parents=True, exist_ok=True)
    name = "preds.jsonl" if out_kind == "file" else "out"
    s = CellSetup(work=work, out=work / name, cache=work / "cache")
    try:
        if fault.name == "out_file":
            s.out.write_bytes(USER_BYTES)
            s.anchor = s.out
            s.guards[s.out] = USER_BYTES  # refused, not replaced: a file output too (no --overwrite is given)
        elif fault.name in ("out_under_file", "cache_under_file"):
            blocker = work / ("a_file" if fault.target == "out" else "a_cache_file")
            blocker.write_bytes(USER_BYTES)
            s.guards[blocker] = USER_BYTES
            s.anchor = blocker
            if fault.target == "out":
                s.out = blocker / name
            else:
                s.cache = blocker / "cache"
        elif fault.mount is not None:
            mnt = work / f"mnt_{fault.mount}"
            s.mounts.append(mnt)
            (mount_readonly if fault.mount == "ro" else mount_full)(mnt)
            s.anchor = mnt
            if fault.target == "out":
                s.out = mnt / name
            else:
                s.cache = mnt
        elif fault.perm:
            locked = work / ("locked" if fault.target == "out" else "locked_cache")
            locked.mkdir()
            locked.chmod(0o555)
            s.locked.append(locked)
            s.anchor = locked
            if fault.target == "out":
                s.out = locked / name
            else:
                s.cache = locked
        elif fault.name == "out_rerun":
            s.anchor = s.out  # the first run is made by run_cell
        elif fault.name == "out_user_dir":
            s.out.mkdir()
            (s.out / "notes.txt").write_bytes(USER_BYTES)
            s.guards[s.out / "notes.txt"] = USER_BYTES
            s.anchor = s.out
        else:  # pragma: no cover
            raise ValueError(f"unknown fault {fault.name}")
    except BaseException:
        teardown(s)
        raise
    return s


def teardown(s: CellSetup) -> None:
    for mnt in s.mounts:
        umount(mnt)
    s.mounts.clear()
    for locked in s.locked:
        try:
            locked.chmod(0o755)
        except OSError:
            pass
    s.locked.clear()


_PERM_LOCK = threading.Lock()
_PERM: tuple[list[str] | None, str] | None = None


def permission_prefix() -> tuple[list[str] | None, str]:
    """(argv prefix under which permission bits apply, why not). A normal user needs none; root runs the
    command under ``setpriv`` without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (root still owns its files)."""
    global _PERM
    with _PERM_LOCK:
        if _PERM is None:
            if os.geteuid() != 0:
                _PERM = ([], "")
            elif shutil.which("setpriv") is None:
                _PERM = (None, "running as root without `setpriv`: permission bits would not stop a write")
            else:
                prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"]
                probe = Path(tempfile.mkdtemp(prefix="fmmc-perm-probe-"))
                try:
                    probe.chmod(0o555)
                    code = "import sys\ntry:\n open(sys.argv[1], 'w')\nexcept PermissionError:\n sys.exit(0)\nsys.exit(1)"
                    proc = subprocess.run([*prefix, sys.executable, "-c", code, str(probe / "x")],
                                          capture_output=True, timeout=60)
                    _PERM = (prefix, "") if proc.returncode == 0 else (
                        None, f"setpriv cannot drop CAP_DAC_OVERRIDE here: {proc.stderr.decode(errors='replace')[-200:]}")
                except (OSError, subprocess.SubprocessError) as e:
                    _PERM = (None, f"setpriv failed: {e}")
                finally:
                    probe.chmod(0o755)
                    shutil.rmtree(probe, ignore_errors=True)
        return _PERM


def guards_intact(s: CellSetup) -> list[str]:
    """The guarded user files that were changed or removed."""
    bad = []
    for path, data in s.guards.items():
        try:
            if not path.is_file() or path.read_bytes() != data:
                bad.append(str(path))
        except OSError:
            bad.append(str(path))
    return bad


# ------------------------------------------------------------------------------------------------- assets

@dataclass
class Assets:
    root: Path
    train_data: Path  # fmmc dataset (metadata.jsonl)
    folder: Path  # <class>/*.jpg
    photo: Path  # one image
    dino: Path  # tiny DINOv2 dir
    model: Path  # trained vision-only model dir
    grid: Path  # tiny reproduce YAML
    model2: Path | None = None  # trained two-stream model (tiny CLIP text tower), if built
    seconds: float = 0.0


GRID = """\
name: fault matrix grid
train:
  data: {train}
  backbone: "hf:{dino}"
  image_size: 56
  streams: vision
  epochs: 2
eval: {{n_boot: 0}}
test_sets:
  google: {{spec: "folder:{folder}", title: Google-test}}
tables:
  - id: main
    metric: acc
    rows: {{Ours: {{}}}}
"""


def prepare(root: Path, two_stream: bool = True) -> Assets:
    """Tiny data and models, built once (the test fixtures' builders) and shared by every run (~10-20 s)."""
    t0 = time.monotonic()
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from fixtures_eval import make_tiny_dinov2, write_folder, write_train

    from fmmc.train.config import TrainConfig
    from fmmc.train.trainer import train

    with _quiet_libraries():
        return _prepare(root, two_stream, t0, make_tiny_dinov2, write_folder, write_train, TrainConfig, train)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """No progress bars or load reports while the assets are built (restored after)."""
    import logging

    from transformers.utils import logging as hf_logging

    level, fmmc_level = hf_logging.get_verbosity(), logging.getLogger("fmmc").level
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("fmmc").setLevel(logging.ERROR)
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        hf_logging.enable_progress_bar()
        logging.getLogger("fmmc").setLevel(fmmc_level)


def _prepare(root: Path, two_stream: bool, t0: float, make_tiny_dinov2: Any, write_folder: Any, write_train: Any,
             TrainConfig: Any, train: Any) -> Assets:  # noqa: N803 - the class, passed in
    root.mkdir(parents=True, exist_ok=True)
    data = write_train(root / "train", n=4)
    folder = write_folder(root / "folder", n=2)
    photo = root / "photo.jpg"
    shutil.copy(next(iter(sorted(folder.rglob("*.jpg")))), photo)
    dino = make_tiny_dinov2(root / "dino")
    prep_cache = root / "prep-cache"
    run = train(TrainConfig(data=str(data), out=str(root / "run"), backbone=f"hf:{dino}", image_size=56,
                            streams="vision", epochs=3, progress=False, cache_dir=str(prep_cache)))
    grid = root / "grid.yaml"
    grid.write_text(GRID.format(train=data, dino=dino, folder=folder))
    model2 = None
    if two_stream:
        from fixtures_eval import make_tiny_clip

        clip = make_tiny_clip(root / "clip")
        run2 = train(TrainConfig(data=str(data), out=str(root / "run2"), backbone=f"hf:{dino}", image_size=56,
                                 streams="both", text_encoder=f"hf:{clip}",
                                 describer="fmmc.evaluation.toydata:build_stats_describer", epochs=3,
                                 progress=False, cache_dir=str(prep_cache)))
        model2 = Path(run2) / "model"
    return Assets(root=root, train_data=data, folder=folder, photo=photo, dino=dino, model=Path(run) / "model",
                  grid=grid, model2=model2, seconds=time.monotonic() - t0)


# ----------------------------------------------------------------------------------------------- commands

@dataclass(frozen=True)
class Command:
    name: str
    argv: Callable[[Assets, CellSetup], list[str]]
    out_kind: str | None  # "dir", "file" (what its output path names) or None (writes no output)
    cache: str | None  # "needs" (may refuse when it cannot write), "optional" (must work, with a warning), None
    faults: tuple[str, ...]
    timeout: float = 120.0
    serve: bool = False
    needs: str | None = None  # an Assets field that must be set
    user_dir_ok: bool = False  # writing into an existing folder beside a user's file is documented


OUT_FAULTS = ("out_file", "out_under_file", "out_readonly", "out_full", "out_user_dir", "out_rerun",
              "out_no_permission")
CACHE_FAULTS = ("cache_under_file", "cache_readonly", "cache_full", "cache_no_permission")

COMMANDS: dict[str, Command] = {c.name: c for c in (
    Command("train", lambda a, s: ["train", "--data", str(a.train_data), "--out", str(s.out), "--backbone",
                                   f"hf:{a.dino}", "--streams", "vision", "--epochs", "2", "image_size=56", "--quiet"],
            "dir", "needs", OUT_FAULTS + CACHE_FAULTS),
    # features writes only the cache: its output path is --cache-dir (a cache folder is shared by design)
    Command("features", lambda a, s: ["features", str(a.train_data), "--backbone", f"hf:{a.dino}", "--image-size",
                                      "56", "--cache-dir", str(s.out), "--quiet"],
            "dir", None, OUT_FAULTS, user_dir_ok=True),
    Command("predict-image", lambda a, s: ["predict", str(a.model), str(a.photo), "--json"],
            None, "optional", CACHE_FAULTS),
    Command("predict-image-2s", lambda a, s: ["predict", str(a.model2), str(a.photo), "--json", "--description",
                                              "a warm brown surface"],
            None, "optional", CACHE_FAULTS, needs="model2"),
    Command("predict-folder", lambda a, s: ["predict", str(a.model), str(a.folder), "--out", str(s.out), "--quiet"],
            "file", "optional-or-error", OUT_FAULTS + CACHE_FAULTS),
    Command("eval", lambda a, s: ["eval", str(a.model), "--data", f"folder:{a.folder}", "--out", str(s.out),
                                  "--bootstrap", "0", "--no-plots", "--quiet"],
            "dir", "needs", OUT_FAULTS + CACHE_FAULTS),
    Command("segment", lambda a, s: ["segment", str(a.model), str(a.photo), "--out", str(s.out), "--mode", "grid",
                                     "--quiet"],
            "dir", "optional-or-error", OUT_FAULTS + CACHE_FAULTS),
    # the grid keeps its cache in OUT/cache unless train.cache_dir is set: point it at the cell's cache
    Command("reproduce", lambda a, s: ["reproduce", str(a.grid), "--out", str(s.out), "--quiet",
                                       f"train.cache_dir={s.cache}"],
            "dir", "needs", OUT_FAULTS + CACHE_FAULTS, timeout=180.0),
    # convert writes OUT/metadata.jsonl into a dataset folder, created if missing (an existing one is fine)
    Command("convert", lambda a, s: ["convert", f"folder:{a.folder}", str(s.out)],
            "dir", None, OUT_FAULTS, user_dir_ok=True),
    Command("serve", lambda a, s: ["serve", str(a.model), "--port", str(_free_port())],
            None, "optional", CACHE_FAULTS, serve=True),
)}

SKIPPED_COMMANDS = {
    "demo": "builds a dataset from downloaded texture photos and trains on real weights (minutes): too slow here",
    "synth build": "needs a generated and labelled synth run (tiny SD + Grounding DINO + SAM, minutes) and reads "
                   "its input from the same out= folder it writes",
}


def expected(cmd: Command, fault: Fault) -> tuple[str, ...]:
    """The outcomes the target behaviour allows for ``cmd`` under ``fault``."""
    if fault.target == "cache":
        if cmd.cache == "optional":  # needs no cache write: must work, with one warning
            return ("ok",)
        return ("ok", "clean-error")
    if fault.name == "out_rerun":
        return ("ok", "clean-error")
    if fault.name == "out_user_dir" and cmd.user_dir_ok:
        return ("ok", "clean-error")  # written beside the user's file; never over it
    return ("clean-error",)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -------------------------------------------------------------------------------------------------- runs

@dataclass
class Result:
    command: str
    fault: str
    outcome: str
    expected: tuple[str, ...]
    rc: int | None = None
    seconds: float = 0.0
    last_line: str = ""
    warned: bool = False  # stderr names the fault's path (a warning, for an 'ok' run)
    tb_exception: str = ""
    tb_where: str = ""
    tb_tail: str = ""
    destroyed: list[str] = field(default_factory=list)
    reason: str = ""  # why skipped
    argv: list[str] = field(default_factory=list)
    stderr_tail: str = ""

    @property
    def as_expected(self) -> bool:
        return self.outcome in self.expected

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["as_expected"] = self.as_expected
        return d


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", FMMC_CACHE=str(cache),
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", FMMC_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1",
               PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONWARNINGS", None)
    return env


FMMC = "import sys; from fmmc.cli.main import main; sys.exit(main(sys.argv[1:]))"


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _run_cli(argv: list[str], env: dict[str, str], log: Path, timeout: float, serve_port: int | None,
             prefix: list[str] | None = None) -> tuple[int | None, bool, str]:
    """(exit code or None, timed out, stderr). A server counts as exit 0 once /healthz answers."""
    with open(log, "wb") as err, open(log.with_suffix(".out"), "wb") as out:
        proc = subprocess.Popen([*(prefix or []), sys.executable, "-c", FMMC, *argv], stdout=out, stderr=err, env=env,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        rc: int | None
        timed_out = False
        try:
            if serve_port is None:
                rc = proc.wait(timeout=timeout)
            else:
                rc = _await_server(proc, serve_port, timeout)
                if rc is None:
                    timed_out = True
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
        finally:
            if proc.poll() is None:
                if serve_port is not None and not timed_out:
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
                if proc.poll() is None:
                    _kill(proc)
    return rc, timed_out, log.read_text(errors="replace")


def _await_server(proc: subprocess.Popen, port: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rc = proc.poll()
        if rc is not None:
            return rc
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return 0
        except OSError:
            pass
        time.sleep(0.25)
    return None


def traceback_summary(stderr: str) -> tuple[str, str, str]:
    """(exception line, where it was raised, the traceback's last lines) of the last traceback in ``stderr``.

    Where: the innermost frame as ``file:line in func``, followed by the innermost fmmc frame when the
    innermost is in a library (``pathlib.py:1116 in mkdir <- src/fmmc/core/io.py:40 in atomic_dir``)."""
    lines = stderr.splitlines()
    start = max(i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call last)"))
    block = lines[start:]
    frames = [i for i, ln in enumerate(block) if ln.lstrip().startswith('File "')]
    parsed = [_frame(block[i].strip()) for i in frames]
    where = ""
    if parsed:
        where = parsed[-1][1]
        if "/fmmc/" not in parsed[-1][0]:
            own = [f for f in parsed if "/fmmc/" in f[0]]
            if own:
                where += f" <- {own[-1][1]}"
    exc = ""  # the first unindented line after the innermost frame (what follows it is the CLI's own output)
    for ln in block[(frames[-1] + 1) if frames else 1:]:
        if ln and not ln.startswith(" "):
            exc = ln.strip()
            break
    if not exc:
        exc = block[-1].strip() if block else ""
    return exc, where, "\n".join(block[-6:])


def _frame(line: str) -> tuple[str, str]:
    """``File "/x/y.py", line 12, in f`` -> (path, "y.py:12 in f", shortened)."""
    try:
        path = line.split('"')[1]
        rest = line.split('"', 2)[2]
        lineno = rest.split("line", 1)[1].split(",")[0].strip()
        func = rest.split(" in ", 1)[1].strip() if " in " in rest else ""
        return path, f"{_short(path)}:{lineno} in {func}"
    except IndexError:
        return line, line


def _short(path: str) -> str:
    if "/site-packages/" in path:
        return path.split("/site-packages/", 1)[1]
    if "/src/fmmc/" in path:
        return "src/fmmc/" + path.split("/src/fmmc/", 1)[1]
    if "/lib/python" in path:  # the standard library
        return path.rsplit("/", 1)[1]
    return path


def _names(text: str, anchor: Path | None) -> bool:
    if anchor is None:
        return False
    return str(anchor) in text or os.path.realpath(anchor) in text


def classify(rc: int | None, timed_out: bool, stderr: str, destroyed: list[str], anchor: Path | None,
             blocks_output: bool) -> str:
    if timed_out:
        return "hang"
    if destroyed:
        return "destroyed"
    if "Traceback (most recent call last)" in stderr:
        return "traceback"
    if rc == 0:
        return "silent" if blocks_output else "ok"
    last = next((ln for ln in reversed(stderr.splitlines()) if ln.strip()), "")
    return "clean-error" if _names(last, anchor) else "vague-error"


def run_cell(command: str, fault: str, assets: Assets, work_root: Path) -> Result:
    """Run one (command, fault) cell in a fresh folder under ``work_root``; mounts are always unmounted."""
    cmd, flt = COMMANDS[command], FAULTS[fault]
    exp = expected(cmd, flt)
    if cmd.needs and getattr(assets, cmd.needs) is None:
        return Result(command, fault, "skipped", exp, reason=f"assets.{cmd.needs} was not built")
    if flt.mount is not None:
        ok, why = can_mount()
        if not ok:
            return Result(command, fault, "skipped", exp, reason=why)
    prefix: list[str] | None = None
    if flt.perm:
        prefix, why = permission_prefix()
        if prefix is None:
            return Result(command, fault, "skipped", exp, reason=why)
    work = work_root / f"{command}--{fault}"
    if work.exists():
        shutil.rmtree(work, ignore_errors=True)
    t0 = time.monotonic()
    setup = setup_fault(flt, work, cmd.out_kind)
    try:
        argv = cmd.argv(assets, setup)
        port = int(argv[argv.index("--port") + 1]) if cmd.serve else None
        if flt.name == "out_rerun":  # the earlier run, without a fault
            first, _, err = _run_cli(argv, _env(setup.cache), work / "first-run.log", cmd.timeout, port)
            if first != 0:
                return Result(command, fault, "skipped", exp, rc=first, seconds=time.monotonic() - t0, argv=argv,
                              reason=f"the first run failed (rc {first}): {err.strip().splitlines()[-1:]}")
        rc, timed_out, stderr = _run_cli(argv, _env(setup.cache), work / "stderr.log", cmd.timeout, port, prefix)
        destroyed = guards_intact(setup)
        # exit 0 cannot be right when the output had nowhere to go (or was to go over the user's file)
        blocks = flt.target == "out" and flt.name not in ("out_user_dir", "out_rerun")
        outcome = classify(rc, timed_out, stderr, destroyed, setup.anchor, blocks)
        res = Result(command, fault, outcome, exp, rc=rc, seconds=time.monotonic() - t0, argv=argv,
                     warned=_names(stderr, setup.anchor), destroyed=destroyed,
                     last_line=next((ln for ln in reversed(stderr.splitlines()) if ln.strip()), ""),
                     stderr_tail="\n".join(stderr.splitlines()[-15:]))
        if "Traceback (most recent call last)" in stderr:
            res.tb_exception, res.tb_where, res.tb_tail = traceback_summary(stderr)
        return res
    finally:
        teardown(setup)


def cells(commands: Iterable[str] | None = None, faults: Iterable[str] | None = None) -> list[tuple[str, str]]:
    want_f = list(faults) if faults else list(DEFAULT_FAULTS)
    out = []
    for name in commands or COMMANDS:
        cmd = COMMANDS[name]
        out += [(name, f) for f in want_f if f in cmd.faults]
    return out


def run_matrix(assets: Assets, selection: list[tuple[str, str]], work_root: Path, jobs: int = 2,
               echo: Callable[[Result], None] | None = None) -> list[Result]:
    """Run ``selection`` with ``jobs`` runs at a time (each run is one torch thread); results in order."""
    work_root.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()

    def one(cell: tuple[str, str]) -> Result:
        res = run_cell(cell[0], cell[1], assets, work_root)
        if echo is not None:
            with lock:
                echo(res)
        return res

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, selection))


# ------------------------------------------------------------------------------------------------ report

def table(results: list[Result]) -> str:
    faults = [f for f in FAULTS if any(r.fault == f for r in results)]
    by = {(r.command, r.fault): r for r in results}
    commands = list(dict.fromkeys(r.command for r in results))
    w0 = max(len("command"), *(len(c) for c in commands))
    widths = [max(len(f), 12) for f in faults]
    head = "| " + "command".ljust(w0) + " | " + " | ".join(f.ljust(w) for f, w in zip(faults, widths)) + " |"
    rule = "|" + "-" * (w0 + 2) + "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    rows = [head, rule]
    for c in commands:
        cellsv = []
        for f, w in zip(faults, widths):
            r = by.get((c, f))
            text = "" if r is None else r.outcome + ("" if r.as_expected or r.outcome == "skipped" else " !")
            cellsv.append(text.ljust(w))
        rows.append("| " + c.ljust(w0) + " | " + " | ".join(cellsv) + " |")
    return "\n".join(rows)


def totals(results: list[Result]) -> str:
    ran = [r for r in results if r.outcome != "skipped"]
    n = len(ran)
    count = Counter(r.outcome for r in ran)
    lines = [f"tracebacks: {count['traceback']} of {n} runs",
             f"destroyed: {count['destroyed']} of {n} runs",
             "outcomes: " + ", ".join(f"{o} {count[o]}" for o in OUTCOMES if count[o]),
             f"as the target behaviour expects: {sum(r.as_expected for r in ran)} of {n} runs"]
    skipped = [r for r in results if r.outcome == "skipped"]
    if skipped:
        lines.append(f"skipped: {len(skipped)} ({'; '.join(sorted({r.reason for r in skipped}))})")
    for name, why in SKIPPED_COMMANDS.items():
        lines.append(f"not in the matrix: fmmc {name}: {why}")
    return "\n".join(lines)


def details(results: list[Result]) -> str:
    out = []
    for r in results:
        if r.outcome in ("ok", "clean-error", "skipped") and r.as_expected:
            continue
        out.append(f"- {r.command} x {r.fault}: {r.outcome} (rc {r.rc}, {r.seconds:.1f}s; expected "
                   f"{' or '.join(r.expected)})")
        if r.outcome == "traceback":
            out.append(f"    {r.tb_exception}\n    at {r.tb_where}")
        elif r.outcome == "destroyed":
            out.append(f"    changed or removed: {', '.join(r.destroyed)}"
                       + (f"; also a traceback: {r.tb_exception} at {r.tb_where}" if r.tb_exception else ""))
        elif r.last_line:
            out.append(f"    last stderr line: {r.last_line[:300]}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--commands", help=f"comma-separated, from: {', '.join(COMMANDS)} (default all)")
    p.add_argument("--faults", help=f"comma-separated, from: {', '.join(FAULTS)} (default: all but "
                                    f"{', '.join(EXTRA_FAULTS)}; see --all)")
    p.add_argument("--all", action="store_true", help=f"also the extra faults: {', '.join(EXTRA_FAULTS)}")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    p.add_argument("--root", help="work folder (default: a temp folder, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs of every run)")
    p.add_argument("--json", help="write every result to this JSON file")
    p.add_argument("--no-two-stream", action="store_true", help="skip the two-stream model (and predict-image-2s)")
    args = p.parse_args(argv)
    commands = args.commands.split(",") if args.commands else None
    faults = args.faults.split(",") if args.faults else (list(FAULTS) if args.all else None)
    for name in commands or []:
        if name not in COMMANDS:
            p.error(f"unknown command {name!r}")
    for name in faults or []:
        if name not in FAULTS:
            p.error(f"unknown fault {name!r}")
    import fmmc

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="fmmc-faults-"))
    t0 = time.monotonic()
    print(f"fmmc under test: {Path(fmmc.__file__).parent} (python {sys.executable})", flush=True)
    ok, why = can_mount()
    print(f"mount faults: {'available' if ok else 'skipped: ' + why}", flush=True)
    try:
        selection = cells(commands, faults)
        need2 = any(c == "predict-image-2s" for c, _ in selection) and not args.no_two_stream
        assets = prepare(root / "assets", two_stream=need2)
        print(f"prepared tiny data and models in {assets.seconds:.1f}s; {len(selection)} runs, {args.jobs} at a time",
              flush=True)

        def echo(r: Result) -> None:
            print(f"  {r.command:<17} {r.fault:<17} {r.outcome:<12} rc={r.rc} {r.seconds:5.1f}s", flush=True)

        results = run_matrix(assets, selection, root / "cells", jobs=args.jobs, echo=echo)
        print()
        print(table(results))
        print()
        print(totals(results))
        bad = details(results)
        if bad:
            print("\nnot as expected:")
            print(bad)
        elapsed = time.monotonic() - t0
        print(f"\ntotal time {elapsed:.0f}s")
        if args.json:
            Path(args.json).write_text(json.dumps({"fmmc": str(Path(fmmc.__file__).parent), "seconds": elapsed,
                                                   "results": [r.to_json() for r in results]}, indent=1))
        return 0
    finally:
        if not args.keep and not args.root:
            shutil.rmtree(root, ignore_errors=True)
        elif args.keep:
            print(f"work folder kept: {root}")


if __name__ == "__main__":
    sys.exit(main())
