"""The instance shim: JSON-lines logs with strictly increasing seq across rotations and restarts, exit records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from runed.runner import shim
from runed.runner.process import SHIM_PATH


def _records(d: Path) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    names = sorted((p for p in d.glob("log.jsonl*")), key=lambda p: -int(p.suffix[1:]) if p.suffix != ".jsonl" else 0)
    for p in names:
        out += [json.loads(line) for line in p.read_text().splitlines()]
    return out


def test_rotation_keeps_seq_increasing_and_backups_bounded(tmp_path: Path) -> None:
    w = shim.LogWriter(tmp_path, max_bytes=2048, backups=2)
    for i in range(200):
        w.write("stdout", f"line {i}".encode())
    w.close()
    files = sorted(p.name for p in tmp_path.glob("log.jsonl*"))
    assert files == ["log.jsonl", "log.jsonl.1", "log.jsonl.2"]
    assert all(p.stat().st_size <= 2048 for p in tmp_path.glob("log.jsonl*"))
    recs = _records(tmp_path)
    seqs = [int(str(r["seq"])) for r in recs]
    assert seqs == sorted(seqs) and seqs[-1] == 200
    # A new writer (the instance restarted) continues the numbering.
    w2 = shim.LogWriter(tmp_path, max_bytes=2048, backups=2)
    w2.write("stderr", b"after restart")
    w2.close()
    last = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert last == {"seq": 201, "ts": last["ts"], "stream": "stderr", "line": "after restart"}
    assert str(last["ts"]).endswith("Z") and len(str(last["ts"]).split(".")[1]) == 10


def test_rfc3339_nanoseconds() -> None:
    assert shim.rfc3339_ns(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"


def _run_shim(tmp_path: Path, argv: list[str]) -> dict[str, object]:
    (tmp_path / "launch.json").write_text(json.dumps({"argv": argv, "cwd": str(tmp_path)}))
    subprocess.run([sys.executable, "-S", "-E", SHIM_PATH, str(tmp_path)], check=True, timeout=30, env={"X": "1"})
    data: dict[str, object] = json.loads((tmp_path / "exit.json").read_text())
    return data


def test_shim_records_streams_and_exit_code(tmp_path: Path) -> None:
    prog = (
        "import os, sys; print('out', os.environ['X']); print('err', file=sys.stderr); "
        "print('partial', end=''); sys.exit(3)"
    )
    ex = _run_shim(tmp_path, [sys.executable, "-c", prog])
    assert ex["code"] == 3 and ex["signal"] is None
    lines = {(r["stream"], r["line"]) for r in _records(tmp_path)}
    assert lines == {("stdout", "out 1"), ("stderr", "err"), ("stdout", "partial")}
    pid = json.loads((tmp_path / "pid.json").read_text())
    assert pid["pid"] > 0 and pid["pid_start"] is not None


def test_shim_records_signal_and_unstartable_command(tmp_path: Path) -> None:
    ex = _run_shim(tmp_path, [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"])
    assert ex["code"] is None and ex["signal"] == 9
    other = tmp_path / "other"
    other.mkdir()
    ex = _run_shim(other, [str(tmp_path / "no-such-program")])
    assert ex["code"] == 127 and "cannot start" in str(ex["error"])
    assert "cannot start" in str(_records(other)[-1]["line"])


def test_proc_start_time_identifies_a_process() -> None:
    import os

    assert shim.proc_start_time(os.getpid()) is not None
    assert shim.proc_start_time(2**22 + 12345) is None


def test_children_left_behind_end_with_the_instance(tmp_path: Path) -> None:
    prog = (
        "import subprocess, sys; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        "print(p.pid, flush=True)"
    )
    ex = _run_shim(tmp_path, [sys.executable, "-c", prog])
    assert ex["code"] == 0
    orphan = int(str(_records(tmp_path)[0]["line"]))
    assert shim.proc_start_time(orphan) is None, "the grandchild was killed with its group"
