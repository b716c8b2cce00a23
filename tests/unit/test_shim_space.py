"""The shim's log writer on a disk short of space: a free-space floor, dropped lines counted, a marker on resume."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from runed.runner import native, shim
from runed.runner.process import shim_argv


def _lines(d: Path, name: str = "log.jsonl") -> list[dict[str, object]]:
    return [json.loads(raw) for raw in (d / name).read_text().splitlines() if raw.strip()]


def _free(d: Path) -> int:
    st = os.statvfs(d)
    return st.f_bavail * st.f_frsize


def test_below_the_floor_lines_are_dropped_then_a_marker_counts_them(tmp_path: Path) -> None:
    w = shim.LogWriter(tmp_path, max_bytes=1 << 20, backups=1, min_free_bytes=1024)
    w.write("stdout", b"before")
    # The floor now lies above what the filesystem has free: nothing more is written.
    w.min_free = _free(tmp_path) + (1 << 30)
    w._checked = -shim.SPACE_CHECK_SECONDS  # look at the free space at the next line, not in a second
    for i in range(500):
        w.write("stdout", f"dropped {i}".encode())
    assert [r["line"] for r in _lines(tmp_path)] == ["before"]
    assert w.dropped == 500
    # Room again: within a second of looking the writer resumes, the marker first.
    w.min_free = 1024
    deadline = time.monotonic() + 2 * shim.SPACE_CHECK_SECONDS + 5
    n = 0
    while w.dropped and time.monotonic() < deadline:
        w.write("stdout", f"after {n}".encode())
        n += 1
    w.close()
    recs = _lines(tmp_path)
    assert recs[0]["line"] == "before"
    marker = recs[1]
    assert marker["stream"] == "stderr" and str(marker["line"]).startswith(f"runed: {500 + n - 1} lines dropped")
    assert recs[2]["line"] == f"after {n - 1}"
    # Dropped lines take no seq: the numbers stay consecutive.
    assert [r["seq"] for r in recs] == [1, 2, 3]


def test_a_write_the_disk_refuses_is_dropped_not_fatal(tmp_path: Path) -> None:
    w = shim.LogWriter(tmp_path, max_bytes=1 << 20, backups=1, min_free_bytes=0)
    w.write("stdout", b"before")
    # /dev/full refuses every write with ENOSPC, as a full filesystem does.
    w.f.close()
    w.f = open("/dev/full", "ab", buffering=0)
    for i in range(100):
        w.write("stdout", f"line {i}".encode())
    assert w.dropped == 100
    assert w.seq == 1
    w.close()  # the marker is tried once more, and refused quietly too
    assert [r["line"] for r in _lines(tmp_path)] == ["before"]


@pytest.mark.parametrize("kind", ["native", "python"])
def test_the_exit_code_survives_a_disk_the_instance_filled(tmp_path: Path, kind: str) -> None:
    program = native.shim_path() if kind == "native" else None
    assert program is not None or kind == "python", "the native shim did not build"
    d = tmp_path / "tiny"
    d.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs: {mounted.stderr.decode().strip()}")
    try:
        # The instance fills the disk to the last block, then exits 7.
        script = f"cat /dev/zero > {d}/fill 2>/dev/null; exit 7"
        shim.write_json_atomic(d / shim.LAUNCH_NAME, {"argv": ["/bin/sh", "-c", script], "min_free_bytes": 0})
        subprocess.run(shim_argv(d, program), check=True, timeout=60)
        assert _free(d) == 0
        assert shim.read_json(d / shim.EXIT_NAME)["code"] == 7
        assert shim.read_json(d / shim.PID_NAME)["pid"] > 0
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize("kind", ["native", "python"])
def test_a_rotation_with_no_inode_left_does_not_shift_the_backups_again(tmp_path: Path, kind: str) -> None:
    """The new log file of a rotation cannot be created (no inode left): the lines after it are
    dropped, and each later try opens the log again; it does not rotate again, which moved the
    rotated file one backup further at every try."""
    program = native.shim_path() if kind == "native" else None
    assert program is not None or kind == "python", "the native shim did not build"
    d = tmp_path / "few-inodes"
    d.mkdir()
    # The root, launch.json, the two reserved records and log.jsonl: nothing left for a new log.jsonl.
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=5", "tmpfs", str(d)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        # 2 KB lines for 3.5 s: a rotation after the first, then a try every second while dropping.
        script = "import time\nfor i in range(70):\n    print(str(i) * 2000, flush=True)\n    time.sleep(0.05)\n"
        spec = {"argv": ["python3", "-c", script], "max_bytes": 4096, "backups": 3, "min_free_bytes": 0}
        shim.write_json_atomic(d / shim.LAUNCH_NAME, spec)
        subprocess.run(shim_argv(d, program), check=True, timeout=60, env={"PATH": os.environ["PATH"]})
        assert shim.read_json(d / shim.EXIT_NAME)["code"] == 0
        logs = sorted(p.name for p in d.glob("log.jsonl*"))
        assert logs == ["log.jsonl.1"], logs
        assert [str(r["line"])[:1] for r in _lines(d, "log.jsonl.1")] == ["0"]
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)
