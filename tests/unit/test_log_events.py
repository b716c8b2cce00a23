"""Event files: seq continues across writers and rotation; streams merge them with output under one cursor."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from runed.logs import cursor, events, files
from runed.logs.stream import Emitted, LogStream, Selection, Source
from runed.logs.timeparse import format_ns


def _seqs(d: Path) -> list[int]:
    out = []
    for path in files.log_files(d, events.EVENTS_NAME):
        out += [json.loads(line)["seq"] for line in path.read_text().splitlines()]
    return out


def test_seq_continues_across_writers_and_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "inst"
    d.mkdir()
    w = events.EventWriter()
    w.append(d, "Starting")
    w.append(d, "Started: pid 1")
    # A restarted controller has a fresh writer: numbering continues from the file.
    events.EventWriter().append(d, "Exited: exit code 3")
    assert _seqs(d) == [0, 1, 2]
    # Past the size cap the file is rotated, and the seq still moves on.
    monkeypatch.setattr(events, "MAX_BYTES", 10)
    w2 = events.EventWriter()
    w2.append(d, "Back-off")
    assert (d / f"{events.EVENTS_NAME}.1").exists()
    assert _seqs(d) == [0, 1, 2, 3]
    assert files.last_seq(d, events.EVENTS_NAME) == 3


def test_an_event_is_stamped_with_its_time_but_never_before_the_one_written_before_it(tmp_path: Path) -> None:
    d = tmp_path / "inst"
    d.mkdir()
    w = events.EventWriter()
    w.append(d, "Starting", at=1_000.25)
    w.append(d, "Started: pid 7", at=1_000.5)
    w.append(d, "Ready", at=999.0)  # earlier than the last: stamped as the last
    w.append(d, "Exited", at=4_000_000_000.0)  # a time to come: stamped now
    stamps = [json.loads(line)["ts"] for line in (d / events.EVENTS_NAME).read_text().splitlines()]
    assert stamps[:3] == [format_ns(1_000_250_000_000), format_ns(1_000_500_000_000), format_ns(1_000_500_000_000)]
    assert format_ns(1_000_500_000_000) < stamps[3] < format_ns(4_000_000_000 * 10**9)


def test_a_missing_directory_is_not_an_error(tmp_path: Path) -> None:
    events.EventWriter().append(tmp_path / "gone", "Exited: exit code 1")
    assert not (tmp_path / "gone").exists()


def _write(d: Path, name: str, rows: list[tuple[int, int, str, str]]) -> None:
    d.mkdir(exist_ok=True)
    with open(d / name, "a") as fh:
        for seq, ns, stream, line in rows:
            fh.write(json.dumps({"seq": seq, "ts": format_ns(ns), "stream": stream, "line": line}) + "\n")


def _read(sel: Selection, sources: list[Source], tail: int = 0, at: dict[str, int] | None = None) -> list[Emitted]:
    stream = LogStream(sel, {s.key: s for s in sources}, at)
    try:
        return list(stream.history(tail))
    finally:
        stream.close()  # a finished history keeps its files open for following


def test_stream_merges_events_and_output_and_resumes_both(tmp_path: Path) -> None:
    d = tmp_path / "a"
    t0 = 1_700_000_000 * 10**9
    _write(d, files.LOG_NAME, [(0, t0 + 2, "stdout", "run"), (1, t0 + 4, "stdout", "run")])
    _write(d, events.EVENTS_NAME, [(0, t0 + 1, "event", "Started"), (1, t0 + 3, "event", "Exited")])
    out = Source("a", "web-0", "web", d)
    ev = dataclasses.replace(out, file=events.EVENTS_NAME)
    assert (out.key, ev.key) == ("a", "a~events")

    shown = _read(Selection(events=True), [out, ev])
    assert [e.line.line for e in shown] == ["Started", "run", "Exited", "run"]
    hidden = _read(Selection(), [out, ev])
    assert [e.line.line for e in hidden] == ["run", "run"]
    # Both series are in the cursor: resuming after "run" (seq 0) skips "Started" and that "run".
    at = cursor.decode(shown[1].cursor)
    assert at == {"a": 0, "a~events": 0}
    rest = _read(Selection(events=True), [out, ev], at=at)
    assert [e.line.line for e in rest] == ["Exited", "run"]
    # Tails count events as lines when they are shown.
    tail = _read(Selection(events=True), [out, ev], tail=2)
    assert [e.line.line for e in tail] == ["Exited", "run"]


def _lines(d: Path) -> list[str]:
    return [json.loads(line)["line"] for line in (d / events.EVENTS_NAME).read_text().splitlines()]


def test_below_the_floor_events_are_dropped_then_a_marker_counts_them(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    w = events.EventWriter(min_free_bytes=1024)
    w.append(tmp_path, "Starting")
    # The floor now lies above what the filesystem has free: nothing more is written.
    w.min_free = free + (1 << 30)
    for i in range(5):
        w.append(tmp_path, f"dropped {i}")
    assert _lines(tmp_path) == ["Starting"]
    # Room again: the marker comes first, and dropped events took no seq.
    w.min_free = 1024
    w.append(tmp_path, "Started")
    lines = _lines(tmp_path)
    assert lines[0] == "Starting" and lines[2] == "Started"
    assert lines[1].startswith("runed: 5 events dropped: the disk holding this log had less than")
    assert _seqs(tmp_path) == [0, 1, 2]


def test_on_a_full_disk_events_are_dropped_whole_then_counted(tmp_path: Path) -> None:
    d = tmp_path / "tiny"
    d.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tiny tmpfs: {mounted.stderr.decode().strip()}")
    try:
        w = events.EventWriter(min_free_bytes=0)
        w.append(d, "Starting")
        subprocess.run(["sh", "-c", f"cat /dev/zero > {d}/fill 2>/dev/null"], check=False)
        for i in range(3):
            w.append(d, f"dropped {i} " + "x" * 5000)
        assert w.dropped[d] == 3
        (d / "fill").unlink()
        w.append(d, "Started")
        lines = _lines(d)
        assert lines[0] == "Starting" and lines[2] == "Started"
        assert lines[1].startswith("runed: 3 events dropped: the disk holding this log was full")
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)
