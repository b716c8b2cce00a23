"""The follow's hot path forms: a block of lines parsed as one (files.parse_lines) says what parsing
each line says, torn and foreign lines included; a one-series poll's Run is the same Emitted lines,
and the batches built from it are the batches built from those lines."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from runed.api import logs_wire
from runed.logs import cursor, files
from runed.logs.files import GAP_STREAM, LogLine
from runed.logs.stream import Emitted, LogStream, Run, Selection, Source

TS = "2026-12-01T00:00:00.123456789Z"


def _row(seq: int, line: str, stream: str = "stdout") -> bytes:
    return orjson.dumps({"seq": seq, "ts": TS, "stream": stream, "line": line})


BLOCKS = {
    "plain": [_row(1, "a"), _row(2, 'b "quoted" \\ ünï'), _row(3, "", "stderr")],
    "torn line": [_row(1, "a"), _row(2, "bbbb")[:17], _row(3, "c")],
    "empty line": [_row(1, "a"), b"", _row(2, "b")],
    "not an object": [_row(1, "a"), b"[1, 2]", b"7", _row(2, "b")],
    "no seq": [_row(1, "a"), b'{"ts": "x", "line": "y"}', _row(2, "b")],
    "seq not a number": [_row(1, "a"), b'{"seq": "x"}', _row(2, "b")],
    "two values on one line": [_row(1, "a") + b", " + _row(2, "b"), _row(3, "c")],
    "bad utf-8": [_row(1, "a"), b'{"seq": 2, "line": "\xff"}', _row(3, "c")],
    "fields missing or of other types": [b'{"seq": 4}', b'{"seq": 5.0, "ts": 1, "stream": null, "line": 2}'],
    "one line": [_row(9, "only")],
}


@pytest.mark.parametrize("rows", BLOCKS.values(), ids=BLOCKS.keys())
def test_a_block_parses_as_its_lines_do(rows: list[bytes]) -> None:
    assert files.parse_lines(b"\n".join(rows)) == [files.parse_line(raw) for raw in rows]


def _write(d: Path, rows: list[tuple[int, str, str]]) -> None:
    d.mkdir(exist_ok=True)
    with open(d / files.LOG_NAME, "a") as f:
        for seq, stream, line in rows:
            f.write(json.dumps({"seq": seq, "ts": TS, "stream": stream, "line": line}) + "\n")


def test_a_one_series_poll_is_a_run_of_the_same_lines(tmp_path: Path) -> None:
    src = Source("a" * 36, "web-0", "web", tmp_path)
    _write(tmp_path, [(1, "stdout", "one"), (2, "stderr", "two"), (3, "event", "not output")])
    s = LogStream(Selection(), {src.key: src}, {src.key: 0})
    got = s.poll()
    assert isinstance(got, Run) and len(got) == 2
    want = [
        Emitted(src, LogLine(1, TS, "stdout", "one"), cursor.encode({src.key: 1})),
        Emitted(src, LogLine(2, TS, "stderr", "two"), cursor.encode({src.key: 2})),
    ]
    assert list(got) == want and got[1] == want[1] and got[:1] == want[:1]
    # Rejected lines advance the position all the same; a poll that keeps none is empty.
    assert s.pos == {src.key: 3}
    _write(tmp_path, [(4, "event", "not output either")])
    assert s.poll() == [] and s.pos == {src.key: 4}
    s.close()


def _run() -> Run:
    src = Source("b" * 36, "web-1", "web", Path("/nonexistent"))
    lines = [LogLine(i, TS, "stderr" if i % 3 else "stdout", f"line {i} " + "x" * (i % 50)) for i in range(1, 1200)]
    lines.insert(700, LogLine(1300, TS, GAP_STREAM, "", 5))
    lines += [LogLine(1400 + i, TS, "stdout", "y" * 100_000) for i in range(6)]
    return Run(src, lines, cursor.prefix_of(src.key))


@pytest.mark.parametrize("timestamps", [False, True])
@pytest.mark.parametrize("max_batch", [0, 1, 2, 500, 1000])
def test_a_run_packs_into_the_batches_of_its_lines(timestamps: bool, max_batch: int) -> None:
    """Same messages (line counts, byte bound, gap lines, outer cursors) whichever form the lines come in."""
    run = _run()
    as_lines = list(run)
    assert [m.SerializeToString() for m in logs_wire.pack(run, timestamps, max_batch)] == [
        m.SerializeToString() for m in logs_wire.pack(as_lines, timestamps, max_batch)
    ]
    assert list(logs_wire.pack_json(run, timestamps, max_batch)) == list(
        logs_wire.pack_json(as_lines, timestamps, max_batch)
    )
