"""The log file reader: backwards tails, selections, following across rotation, merged cursors."""

from __future__ import annotations

import asyncio
import json
import os
import time
import types
from pathlib import Path

import pytest

from runed.logs import cursor, files
from runed.logs.files import LOG_NAME, Follower
from runed.logs.stream import FOLLOW_LINES, LogStream, Selection, Source, compile_filter
from runed.logs.timeparse import format_ns, line_ns, parse_bound, parse_duration
from tests.support import LogWriter

BASE_NS = 1_800_000_000 * 1_000_000_000


def lines(got: list[files.LogLine]) -> list[str]:
    return [ln.line for ln in got]


def test_timestamps_and_durations() -> None:
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("250ms") == 0.25
    assert parse_duration("5") is None
    assert parse_duration("m5") is None
    ts = "2027-01-15T08:00:00.123456789Z"
    assert format_ns(line_ns(ts)) == ts
    assert parse_bound("2027-01-15T09:00:00.5+01:00") == line_ns("2027-01-15T08:00:00.500000000Z")
    now = 2_000_000_000.0
    assert parse_bound("5m", now=now) == int((now - 300) * 1e9)
    with pytest.raises(ValueError):
        parse_bound("yesterday")


def test_filter_substring_and_regex() -> None:
    sub = compile_filter("a.c")
    assert sub is not None and sub("xa.cx") and not sub("abc")
    rx = compile_filter("/^err(or)?:/")
    assert rx is not None and rx("error: x") and rx("err: y") and not rx("an error: z")
    with pytest.raises(ValueError):
        compile_filter("/([/")


def test_tail_reads_backwards_without_reading_the_whole_file(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, base_ns=BASE_NS)
    # A 4 GiB sparse hole in front of the lines: reading it all would take far longer than allowed.
    with open(tmp_path / LOG_NAME, "wb") as f:
        f.truncate(4 << 30)
        f.seek(0, os.SEEK_END)
        f.write(b"\n")
    for i in range(1000):
        w.write(f"line {i}")
    t0 = time.monotonic()
    got = files.tail(tmp_path, 5, lambda ln: True)
    assert time.monotonic() - t0 < 0.5
    assert lines(got) == [f"line {i}" for i in range(995, 1000)]


def test_tail_spans_rotated_files_and_applies_the_selection(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, base_ns=BASE_NS)
    for i in range(10):
        w.write(f"out {i}")
        w.write(f"err {i}", stream="stderr")
        if i % 3 == 2:
            w.rotate()
    got = files.tail(tmp_path, 4, Selection(stream="stderr").accept)
    assert lines(got) == ["err 6", "err 7", "err 8", "err 9"]
    assert [ln.stream for ln in got] == ["stderr"] * 4
    # since stops the backwards walk; until and filter only select.
    since = BASE_NS + 5 * 1_000_000
    until = BASE_NS + 12 * 1_000_000
    sel = Selection(since_ns=since, until_ns=until, match=compile_filter("/[02468]$/"))
    got = files.tail(tmp_path, 0, sel.accept, since)
    assert lines(got) == ["out 2", "err 2", "out 4", "err 4"]
    assert files.last_seq(tmp_path) == 20


def test_follower_across_rotations_and_partial_lines(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, backups=5, base_ns=BASE_NS)
    w.write("before")
    f = Follower(tmp_path)  # from the current end
    assert f.poll() == []
    w.write("a")
    assert lines(f.poll()) == ["a"]
    # A line being written (no newline yet) is not returned until it is complete.
    with open(tmp_path / LOG_NAME, "a") as fh:
        fh.write('{"seq": 3, "ts": "2027-01-15T08:00:00.000000000Z", "stream": "stdout", "li')
    assert f.poll() == []
    with open(tmp_path / LOG_NAME, "a") as fh:
        fh.write('ne": "b"}\n')
    w.seq = 3
    assert lines(f.poll()) == ["b"]
    # Several rotations between two polls: nothing lost, nothing repeated.
    for i in range(3):
        w.write(f"r{i}")
        w.rotate()
    w.write("live")
    got = f.poll()
    assert lines(got) == ["r0", "r1", "r2", "live"]
    assert [ln.seq for ln in got] == [4, 5, 6, 7]
    # The live file is recreated by a restarted writer: seq keeps increasing.
    (tmp_path / LOG_NAME).unlink()
    w.write("after restart")
    assert lines(f.poll()) == ["after restart"]
    f.close()


def test_follower_resumes_after_a_seq(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, base_ns=BASE_NS)
    for i in range(20):
        w.write(f"l{i}")
        if i == 9:
            w.rotate()
    f = Follower(tmp_path, after_seq=7)
    assert lines(f.poll()) == [f"l{i}" for i in range(7, 20)]
    f.close()


def test_merged_stream_orders_by_time_and_resumes_without_gaps(tmp_path: Path) -> None:
    wa, wb = LogWriter(tmp_path / "a", base_ns=BASE_NS), LogWriter(tmp_path / "b", base_ns=BASE_NS)
    for i in range(6):
        wa.write(f"a{i}", ns=BASE_NS + (2 * i) * 1000)
        wb.write(f"b{i}", ns=BASE_NS + (2 * i + 1) * 1000)
    sources = {
        "a": Source("a", "web-0", "web", tmp_path / "a"),
        "b": Source("b", "web-1", "web", tmp_path / "b"),
    }
    s = LogStream(Selection(), dict(sources))
    hist = list(s.history(4))
    assert [e.line.line for e in hist] == ["a4", "b4", "a5", "b5"]
    assert s.poll() == []
    # Resume from the second line's cursor: the rest of the history, then new lines, exactly once.
    resumed = LogStream(Selection(), dict(sources), cursor.decode(hist[1].cursor))
    assert [e.line.line for e in resumed.history(0)] == ["a5", "b5"]
    wa.write("a6", ns=BASE_NS + 20_000)
    wb.write("b6", ns=BASE_NS + 19_000)
    assert [e.line.line for e in s.poll()] == ["b6", "a6"]
    assert [e.line.line for e in resumed.poll()] == ["b6", "a6"]
    # A new instance joins and is read from its first line.
    wc = LogWriter(tmp_path / "c", base_ns=BASE_NS)
    wc.write("c0", ns=BASE_NS + 30_000)
    s.add_source(Source("c", "web-2", "web", tmp_path / "c"))
    got = s.poll()
    assert [(e.source.instance_name, e.line.line) for e in got] == [("web-2", "c0")]
    assert cursor.decode(got[0].cursor) == {"a": 7, "b": 7, "c": 1}
    s.close()
    resumed.close()


def test_cursor_rejects_garbage() -> None:
    assert cursor.decode(cursor.encode({"x": 3, "y": -1})) == {"x": 3, "y": -1}
    for bad in ("", "v2;x=1", "v1;x", "v1;=1", "v1;x=a"):
        with pytest.raises(ValueError):
            cursor.decode(bad)


def test_full_history_is_merged_lazily_and_since_starts_late(tmp_path: Path) -> None:
    wa, wb = LogWriter(tmp_path / "a", base_ns=BASE_NS), LogWriter(tmp_path / "b", base_ns=BASE_NS)
    for i in range(3000):
        wa.write(f"a{i}", ns=BASE_NS + 2 * i)
        wb.write(f"b{i}", ns=BASE_NS + 2 * i + 1)
        if i % 1000 == 999:
            wa.rotate()
    sources = {
        "a": Source("a", "x-0", "x", tmp_path / "a"),
        "b": Source("b", "x-1", "x", tmp_path / "b"),
    }
    s = LogStream(Selection(), dict(sources))
    it = s.history(0)
    first = [next(it) for _ in range(4)]
    assert [e.line.line for e in first] == ["a0", "b0", "a1", "b1"]
    rest = list(it)
    assert len(rest) == 5996 and [e.line.line for e in rest[-2:]] == ["a2999", "b2999"]
    ts = [e.line.ns for e in first + rest]
    assert ts == sorted(ts)
    # Following continues after the history, from the followers it used.
    wb.write("b-new", ns=BASE_NS + 10**9)
    assert [e.line.line for e in s.poll()] == ["b-new"]
    s.close()
    since = Selection(since_ns=BASE_NS + 2 * 2990)
    late = LogStream(since, dict(sources))
    assert [e.line.line for e in late.history(0)][:3] == ["a2990", "b2990", "a2991"]
    late.close()
    # An abandoned history closes its files.
    gen = LogStream(Selection(), dict(sources)).history(0)
    assert isinstance(gen, types.GeneratorType)
    next(gen)
    gen.close()


def test_retired_instance_is_drained_then_dropped(tmp_path: Path) -> None:
    wa, wb = LogWriter(tmp_path / "a", base_ns=BASE_NS), LogWriter(tmp_path / "b", base_ns=BASE_NS)
    wa.write("a0")
    wb.write("b0")
    s = LogStream(
        Selection(), {"a": Source("a", "x-0", "x", tmp_path / "a"), "b": Source("b", "x-1", "x", tmp_path / "b")}
    )
    assert len(list(s.history(1))) == 1
    wa.write("a last words")
    assert [e.line.line for e in s.retire("a")] == ["a last words"]
    assert s.retire("a") == []
    wb.write("b1")
    got = s.poll()
    assert [e.line.line for e in got] == ["b1"] and cursor.decode(got[0].cursor) == {"b": 2}
    s.close()


def test_lines_rotated_away_before_they_were_read_are_reported_as_a_gap(tmp_path: Path) -> None:
    w = LogWriter(tmp_path, backups=1, base_ns=BASE_NS)
    for i in range(1, 10):
        w.write(f"l{i}")
        if i % 3 == 0 and i < 9:
            w.rotate()  # one backup: l1-l3 are gone once l4-l6 are rotated
    # Resuming after l1: l2 and l3 are reported missing, in their place, then the rest follows.
    f = Follower(tmp_path, after_seq=1)
    got = f.poll()
    assert [(ln.stream, ln.seq, ln.missing) for ln in got[:2]] == [(files.GAP_STREAM, 3, 2), ("stdout", 4, 0)]
    assert got[0].ts == got[1].ts
    assert lines(got[1:]) == [f"l{i}" for i in range(4, 10)]
    # A follower that falls behind by more than the backups reports what it missed too (the file it
    # has open still gives it l10-l12; l13-l15 are gone).
    for i in range(10, 23):
        w.write(f"l{i}")
        if i in (12, 15, 18):
            w.rotate()
    got = f.poll()
    assert lines(got[:3]) == ["l10", "l11", "l12"]
    assert (got[3].stream, got[3].seq, got[3].missing) == (files.GAP_STREAM, 15, 3)
    assert lines(got[4:]) == [f"l{i}" for i in range(16, 23)]
    f.close()
    # Reading from the start (no position) expects nothing in particular: no gap for what rotated before.
    fresh = Follower(tmp_path, after_seq=-1)
    assert all(ln.stream != files.GAP_STREAM for ln in fresh.poll())
    fresh.close()
    # In a stream the gap passes any selection, and its cursor resumes after the missing lines.
    s = LogStream(Selection(stream="stderr", match=compile_filter("nothing")), {"a": Source("a", "x-0", "x", tmp_path)})
    s.positions = {"a": 2}
    got_s = list(s.history(0))
    assert [(e.line.stream, e.line.missing) for e in got_s] == [(files.GAP_STREAM, 13)]
    assert cursor.decode(got_s[0].cursor) == {"a": 15}
    s.close()


def test_a_follow_sends_a_fast_writers_lines_in_steps_and_lets_the_loop_run_between_them(tmp_path: Path) -> None:
    """A follow behind by many lines reads about FOLLOW_LINES before handing them on, not all at once,
    and other tasks run between two reads even when the consumer never waits."""
    w = LogWriter(tmp_path, base_ns=BASE_NS)
    w.write("first")
    s = LogStream(Selection(), {"a": Source("a", "x-0", "x", tmp_path)})
    assert len(list(s.history(1))) == 1
    total = 3 * FOLLOW_LINES + 123
    with open(tmp_path / LOG_NAME, "a") as f:
        for i in range(total):
            f.write(
                json.dumps({"seq": i + 2, "ts": format_ns(BASE_NS + i), "stream": "stdout", "line": f"l{i}"}) + "\n"
            )

    async def follow() -> list[list[str]]:
        loop = asyncio.get_running_loop()
        turns: list[int] = []
        got: list[list[str]] = []
        async for batch in s.follow(asyncio.Event(), lambda: sum(map(len, got)) >= total):
            if got:
                assert turns, "the loop did not run between two reads"
            turns.clear()
            loop.call_soon(turns.append, 1)
            got.append([e.line.line for e in batch])
        return got

    got = asyncio.run(follow())
    assert [ln for b in got for ln in b] == [f"l{i}" for i in range(total)]
    assert len(got) >= 3 and all(len(b) < FOLLOW_LINES + 2000 for b in got)
