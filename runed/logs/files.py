"""One instance's log files: ``log.jsonl`` plus rotated ``log.jsonl.1`` (newest) ... ``log.jsonl.N``.

Each line is a JSON object ``{"seq", "ts", "stream", "line"}``; ``seq`` strictly increases across
rotations and restarts, which is what makes reads resumable and rotation races harmless: whatever
order files are seen in, a reader only accepts lines beyond the last ``seq`` it returned. Because
``seq`` counts up by one, a reader that finds the next line further on than ``last + 1`` knows how
many lines rotation removed before it got to them, and says so with a gap line (:data:`GAP_STREAM`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import orjson

from runed.logs.timeparse import line_ns

LOG_NAME = "log.jsonl"
BLOCK = 64 * 1024
# Lines a follower's poll returns at most (about: it reads whole blocks).
POLL_LINES = 10_000
# The stream of a gap line: not output, but the report that lines were removed before being read.
GAP_STREAM = "gap"


class LogLine(NamedTuple):
    """One parsed log line of one instance (a tuple: thousands are parsed per second).

    A gap line (``stream`` :data:`GAP_STREAM`) stands for ``missing`` lines a reader will never
    see: its ``seq`` is the last of them, its ``ts`` that of the line after them.
    """

    seq: int
    ts: str
    stream: str
    line: str
    missing: int = 0

    @property
    def ns(self) -> int:
        """The timestamp as epoch nanoseconds, computed only where order or bounds need it."""
        return line_ns(self.ts)


# tuple.__new__ itself: a NamedTuple's constructor is a Python function, and this runs once per line.
_new = tuple.__new__
_loads = orjson.loads


def parse_line(raw: bytes) -> LogLine | None:
    """A log line, or None for a torn or foreign line (skipped rather than failing the stream)."""
    try:
        obj = _loads(raw)
        return _new(  # type: ignore[no-any-return]
            LogLine,
            (int(obj["seq"]), str(obj.get("ts", "")), str(obj.get("stream", "stdout")), str(obj.get("line", "")), 0),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def parse_lines(block: bytes) -> list[LogLine | None]:
    """:func:`parse_line` of each line of ``block`` (lines joined by newlines, the last without one).

    A follower of a fast writer parses its lines by the hundred thousand per second: decoded as one
    JSON array they cost a third less than one call each. A block that is not one complete object
    per line (a torn or foreign line, an empty one) is parsed line by line instead, with the same result.
    """
    count = block.count(b"\n") + 1
    try:
        objs = _loads(b"[" + block.replace(b"\n", b",") + b"]")
    except orjson.JSONDecodeError:
        objs = None
    if type(objs) is not list or len(objs) != count:
        return [parse_line(raw) for raw in block.split(b"\n")]
    out: list[LogLine | None] = []
    append = out.append
    for obj in objs:
        try:
            append(
                _new(
                    LogLine,
                    (
                        int(obj["seq"]),
                        str(obj.get("ts", "")),
                        str(obj.get("stream", "stdout")),
                        str(obj.get("line", "")),
                        0,
                    ),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            append(None)
    return out


def log_files(log_dir: Path, name: str = LOG_NAME) -> list[Path]:
    """The instance's log files, oldest first (the live ``log.jsonl`` last); ``name`` picks another series."""
    try:
        names = os.listdir(log_dir)
    except OSError:
        return []
    rotated: list[tuple[int, str]] = []
    for entry in names:
        suffix = entry[len(name) + 1 :]
        if entry.startswith(name + ".") and suffix.isdigit():
            rotated.append((int(suffix), entry))
    out = [log_dir / entry for _, entry in sorted(rotated, reverse=True)]
    if name in names:
        out.append(log_dir / name)
    return out


def _backwards(fh: BinaryIO, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset just past the line, line) for the complete lines before ``end``, last line first."""
    pos = end
    carry = b""
    carry_end = end
    while pos > 0:
        start = max(0, pos - BLOCK)
        fh.seek(start)
        chunk = fh.read(pos - start) + carry
        pos = start
        lines = chunk.split(b"\n")
        # lines[0] may be cut by the block boundary: keep it for the next round.
        carry = lines[0]
        tail_end = carry_end
        for piece in reversed(lines[1:]):
            line_end = tail_end
            tail_end -= len(piece) + 1
            if piece:
                yield line_end, piece
        carry_end = tail_end
    if carry:
        yield carry_end, carry


def complete_end(fh: BinaryIO) -> int:
    """Offset just past the last complete line (a line being written has no newline yet)."""
    size = fh.seek(0, os.SEEK_END)
    pos = size
    while pos > 0:
        start = max(0, pos - BLOCK)
        fh.seek(start)
        chunk = fh.read(pos - start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
    return 0


def tail(
    log_dir: Path, n: int, accept: Callable[[LogLine], bool], since_ns: int | None = None, name: str = LOG_NAME
) -> list[LogLine]:
    """The last ``n`` accepted lines (all when ``n`` <= 0), oldest first, reading backwards.

    Never reads more than it needs: it stops after ``n`` matches, or at the first line older than
    ``since_ns`` (a single instance writes in time order).
    """
    out: list[LogLine] = []
    for ln in _lines_backwards(log_dir, name):
        if since_ns is not None and ln.ns < since_ns:
            break
        if accept(ln):
            out.append(ln)
            if 0 < n <= len(out):
                break
    out.reverse()
    return out


def seq_before(log_dir: Path, since_ns: int, name: str = LOG_NAME) -> int:
    """The seq of the newest line older than ``since_ns`` (-1 when none), reading backwards."""
    return next((ln.seq for ln in _lines_backwards(log_dir, name) if ln.ns < since_ns), -1)


def _lines_backwards(log_dir: Path, name: str) -> Iterator[LogLine]:
    """Every parsed line of a series, newest first, across rotated files, read from the end."""
    below: int | None = None  # seq of the oldest line seen: guards against a file rotated mid-read
    for path in reversed(log_files(log_dir, name)):
        try:
            fh = open(path, "rb")
        except OSError:
            continue
        with fh:
            for _, raw in _backwards(fh, complete_end(fh)):
                ln = parse_line(raw)
                if ln is None or (below is not None and ln.seq >= below):
                    continue
                below = ln.seq
                yield ln


def last_seq(log_dir: Path, name: str = LOG_NAME) -> int:
    """The seq of the newest complete line, or -1 when there is none."""
    return next((ln.seq for ln in _lines_backwards(log_dir, name)), -1)


def _offset_after(fh: BinaryIO, after_seq: int) -> int:
    """Where the first line with seq > ``after_seq`` starts, searching back from the end."""
    fh.seek(0)
    head = parse_line(fh.readline().rstrip(b"\n"))
    if head is None or head.seq > after_seq:
        # The whole file is new to the reader (the common case after a rotation): no search.
        return 0
    end = complete_end(fh)
    pos = end
    for line_end, raw in _backwards(fh, end):
        ln = parse_line(raw)
        if ln is not None and ln.seq <= after_seq:
            return line_end + 1 if line_end < end else end
        pos = line_end - len(raw)
    return max(0, pos)


def gap(last_read: int, next_line: LogLine) -> LogLine:
    """The gap line for the lines between seq ``last_read`` and ``next_line`` (both exclusive)."""
    return LogLine(next_line.seq - 1, next_line.ts, GAP_STREAM, "", next_line.seq - 1 - last_read)


class Follower:
    """Reads one instance's new lines as they are written, across rotation and restarts.

    Lines rotation removed before they were read are reported by a gap line in their place, once
    the follower has a position (``after_seq`` >= 0, or after its first line): a reader that starts
    from nothing has no lines it expected to see.

    Not thread-safe; ``poll`` never blocks on anything but local file reads.
    """

    def __init__(self, log_dir: Path, after_seq: int | None = None, name: str = LOG_NAME) -> None:
        self.log_dir = log_dir
        self.name = name
        # None: start at the current end (only lines written from now on).
        self.last_seq = last_seq(log_dir, name) if after_seq is None else after_seq
        self._fh: BinaryIO | None = None
        self._ino = -1
        self._pos = 0
        self._buf = b""

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _take(self, block: bytes, out: list[LogLine]) -> None:
        """Appends the lines of ``block`` beyond ``last_seq`` to ``out``, a gap line before any jump."""
        last = self.last_seq
        append = out.append
        for ln in parse_lines(block):
            if ln is not None and ln.seq > last:
                if ln.seq > last + 1 and last >= 0:
                    append(gap(last, ln))
                append(ln)
                last = ln.seq
        self.last_seq = last

    def _read_fh(self, out: list[LogLine], limit: int) -> None:
        assert self._fh is not None
        while len(out) < limit:
            self._fh.seek(self._pos)
            chunk = self._fh.read(BLOCK)
            if not chunk:
                return
            data = self._buf + chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                self._buf = data
                self._pos += len(chunk)
                continue
            self._buf = data[cut + 1 :]
            self._pos += len(chunk)
            self._take(data[:cut], out)

    def _catch_up_rotated(self, out: list[LogLine], limit: int) -> None:
        """Lines beyond ``last_seq`` that sit in rotated files (we fell behind a rotation)."""
        for path in log_files(self.log_dir, self.name):
            if path.name == self.name:
                continue
            try:
                fh = open(path, "rb")
            except OSError:
                continue
            with fh:
                start = _offset_after(fh, self.last_seq)
                end = complete_end(fh)
                if start >= end:
                    continue
                fh.seek(start)
                # end > start: the read ends with a newline, which is not a line.
                self._take(fh.read(end - start)[:-1], out)
            if len(out) >= limit:
                return

    def poll(self, limit: int = POLL_LINES) -> list[LogLine]:
        """New lines since the previous call (at most about ``limit``), in seq order."""
        out: list[LogLine] = []
        if self._fh is not None:
            self._read_fh(out, limit)
            if len(out) >= limit:
                return out
        live = self.log_dir / self.name
        try:
            ino = os.stat(live).st_ino
        except OSError:
            ino = -1
        if ino == self._ino and self._fh is not None:
            if os.fstat(self._fh.fileno()).st_size < self._pos:
                # Truncated in place: start over; seq still filters what was already returned.
                self._pos = 0
                self._buf = b""
                self._read_fh(out, limit)
            return out
        # First poll, or the live file was rotated/recreated: finish with rotated files, then reopen.
        self.close()
        self._buf = b""
        self._catch_up_rotated(out, limit)
        if ino < 0 or len(out) >= limit:
            self._ino = -1
            return out
        try:
            fh = open(live, "rb")
        except OSError:
            return out
        self._fh = fh
        self._ino = os.fstat(fh.fileno()).st_ino
        self._pos = _offset_after(fh, self.last_seq)
        self._read_fh(out, limit)
        return out
