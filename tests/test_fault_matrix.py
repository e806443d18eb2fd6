"""I/O faults end as one line, never a traceback, and never cost a user's file (issue: "every disk fault is a
traceback").

The cheapest representative cells of ``tools/fault_matrix.py`` (the full matrix: ``python tools/fault_matrix.py``):
each command at least once, each fault at least once. A cell runs the real CLI in a subprocess against tiny
models built once for this file; the selected cells run two at a time in one module fixture, then each test
checks its own cell. Read-only and full-disk cells need ``mount -t tmpfs`` (root): skipped without it;
permission cells run root's command without CAP_DAC_OVERRIDE (``setpriv``): skipped if that is not possible.
"""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import fault_matrix as fm  # noqa: E402

# (command, fault): the target outcome is fm.expected() -- clean-error for an output that cannot be written
# or is not fmmc's to replace; ok (plus one warning naming the cache) for single-image predict and serve
# start-up when the cache cannot be written.
CELLS = [
    ("train", "out_file"),
    ("train", "out_under_file"),
    ("train", "cache_readonly"),
    ("features", "out_readonly"),
    ("predict-image", "cache_under_file"),
    ("predict-image", "cache_readonly"),
    ("predict-image-2s", "cache_full"),
    ("predict-folder", "out_full"),
    ("predict-folder", "out_user_dir"),
    ("eval", "out_file"),
    ("eval", "out_user_dir"),
    ("segment", "out_under_file"),
    ("reproduce", "out_readonly"),
    ("convert", "out_file"),
    ("convert", "out_under_file"),
    ("convert", "out_full"),
    ("serve", "cache_readonly"),
    ("convert", "out_no_permission"),  # EACCES (root: run without CAP_DAC_OVERRIDE)
    ("predict-image", "cache_no_permission"),
]


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], fm.Result]:
    """Run every selected cell of this module once (two at a time), on first use."""
    wanted = [item.callspec.params["cell"] for item in request.session.items
              if getattr(item, "module", None) is request.module and hasattr(item, "callspec")
              and "cell" in item.callspec.params]
    wanted = list(dict.fromkeys(wanted)) or CELLS
    root = tmp_path_factory.mktemp("fault_matrix")
    assets = fm.prepare(root / "assets", two_stream=any(c == "predict-image-2s" for c, _ in wanted))
    results = fm.run_matrix(assets, wanted, root / "cells", jobs=2)
    return {(r.command, r.fault): r for r in results}


def _explain(r: fm.Result) -> str:
    text = f"fmmc {' '.join(r.argv)}\n-> {r.outcome} (rc {r.rc}); expected {' or '.join(r.expected)}"
    if r.tb_exception:
        text += f"\n   {r.tb_exception}\n   at {r.tb_where}"
    if r.destroyed:
        text += f"\n   user files changed or removed: {r.destroyed}"
    return text + "\n--- stderr (last lines) ---\n" + r.stderr_tail


@pytest.mark.parametrize("cell", CELLS, ids=[f"{c}-{f}" for c, f in CELLS])
def test_fault_is_handled(matrix: dict[tuple[str, str], fm.Result], cell: tuple[str, str]):
    r = matrix[cell]
    if r.outcome == "skipped":
        pytest.skip(r.reason)
    assert r.as_expected, _explain(r)
    if fm.FAULTS[r.fault].target == "cache" and r.outcome == "ok" and fm.COMMANDS[r.command].cache == "optional":
        assert r.warned, "ran, but no warning names the unwritable cache\n" + _explain(r)


def test_every_command_and_fault_is_represented():
    assert {c for c, _ in CELLS} == set(fm.COMMANDS)
    assert set(fm.DEFAULT_FAULTS) <= {f for _, f in CELLS} <= set(fm.FAULTS)
    for command, fault in CELLS:
        assert fault in fm.COMMANDS[command].faults, (command, fault)


# ------------------------------------------------------------------ the harness itself (no CLI runs)

def test_classify():
    anchor = Path("/tmp/x/out")
    assert fm.classify(None, True, "", [], anchor, True) == "hang"
    assert fm.classify(0, False, "", ["/tmp/x/out/notes.txt"], anchor, False) == "destroyed"
    tb = 'Traceback (most recent call last):\n  File "/a/b.py", line 3, in f\nOSError: [Errno 28] No space left'
    assert fm.classify(1, False, tb, [], anchor, True) == "traceback"
    assert fm.classify(1, False, "fmmc eval: error: /tmp/x/out: read-only file system (...)", [], anchor,
                       True) == "clean-error"
    assert fm.classify(1, False, "fmmc eval: error: no space left on the device", [], anchor, True) == "vague-error"
    assert fm.classify(0, False, "", [], anchor, True) == "silent"
    assert fm.classify(0, False, "", [], anchor, False) == "ok"


def test_traceback_summary_names_the_raise_and_fmmc_frame():
    tb = ("Traceback (most recent call last):\n"
          '  File "/v/lib/python3.11/site-packages/x.py", line 5, in main\n    f()\n'
          '  File "/w/src/fmmc/core/io.py", line 52, in atomic_file\n    tmp.parent.mkdir()\n'
          '  File "/usr/lib/python3.11/pathlib.py", line 1116, in mkdir\n    os.mkdir(self, mode)\n'
          "NotADirectoryError: [Errno 20] Not a directory: '/t/a_file/out'\n")
    exc, where, _ = fm.traceback_summary("noise\n" + tb)
    assert exc == "NotADirectoryError: [Errno 20] Not a directory: '/t/a_file/out'"
    assert where == "pathlib.py:1116 in mkdir <- src/fmmc/core/io.py:52 in atomic_file"


@pytest.mark.parametrize("fault", ["out_readonly", "out_full"])
def test_mounted_faults_really_fail_writes(tmp_path: Path, fault: str):
    ok, why = fm.can_mount()
    if not ok:
        pytest.skip(why)
    s = fm.setup_fault(fm.FAULTS[fault], tmp_path / "cell", "dir")
    try:
        assert s.anchor is not None and s.out.parent == s.anchor
        with pytest.raises(OSError) as e:
            s.out.mkdir()
            (s.out / "f.txt").write_bytes(b"x" * 10)
        assert e.value.errno == (errno.EROFS if fault == "out_readonly" else errno.ENOSPC)
    finally:
        fm.teardown(s)
    assert not s.mounts and not (tmp_path / "cell" / "mnt_ro").is_mount() and not (
        tmp_path / "cell" / "mnt_full").is_mount()


def test_permission_fault_really_fails_writes(tmp_path: Path):
    prefix, why = fm.permission_prefix()
    if prefix is None:
        pytest.skip(why)
    s = fm.setup_fault(fm.FAULTS["out_no_permission"], tmp_path / "cell", "dir")
    try:
        code = "import sys, os\ntry:\n os.mkdir(sys.argv[1])\nexcept PermissionError:\n sys.exit(13)"
        assert subprocess.run([*prefix, sys.executable, "-c", code, str(s.out)], timeout=60).returncode == 13
    finally:
        fm.teardown(s)
    assert (s.anchor.stat().st_mode & 0o200) and not s.locked


def test_guards_see_a_replaced_user_file(tmp_path: Path):
    s = fm.setup_fault(fm.FAULTS["out_user_dir"], tmp_path / "cell", "dir")
    assert fm.guards_intact(s) == []
    (s.out / "notes.txt").write_text("changed")
    assert fm.guards_intact(s) == [str(s.out / "notes.txt")]
