"""Instance lifecycle events: ``events.jsonl`` beside the instance's ``log.jsonl``, written by the controller.

The shim owns ``log.jsonl`` and its seq; events get their own file and their own seq, in the same
line format (``"stream": "event"``), so the log readers, tails and cursors serve both: a cursor
names the event series of instance ``X`` as ``X~events``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import orjson

from runed.logs import files
from runed.logs.timeparse import format_ns

EVENTS_NAME = "events.jsonl"
EVENT_STREAM = "event"
# Events are a few lines per lifecycle step; past this size the file is rotated once (``.1``).
MAX_BYTES = 1 << 20

# Writing resumes only with this much more than the floor free, so it does not flap at the edge
# (as the shim does for ``log.jsonl``).
RESUME_SLACK_BYTES = 1 << 20
_NO_SPACE = (28, 122)  # ENOSPC, EDQUOT

log = logging.getLogger("runed.logs.events")


APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


class EventWriter:
    """Appends event lines for instances, one writer process per instance (the controller owning it).

    The next seq is read from the files once per instance directory, then kept in memory, so a
    controller restart continues the numbering instead of repeating it.

    Keeps ``min_free_bytes`` free on the data disk, as the shim does for the instance's own log
    (``controller.log_min_free_bytes``; 0: no floor): below it, or when a write fails for lack of
    space, events are counted and dropped; the next event written is preceded by a marker event
    saying how many were dropped. Dropped events take no seq.
    """

    def __init__(self, min_free_bytes: int = 0) -> None:
        self.min_free = max(0, min_free_bytes)
        self._seq: dict[Path, int] = {}
        # The time of the last event written, by directory (ns): an event stamped with an earlier
        # time of its own is stamped with this instead, so the file stays in time order.
        self._last_ns: dict[Path, int] = {}
        self.dropped: dict[Path, int] = {}  # events dropped since the last one written, by directory

    def append(self, log_dir: Path, text: str, at: float | None = None) -> None:
        """Record one event, stamped now or at ``at`` (epoch seconds: when what it tells happened,
        e.g. a process's start, which the controller learns of later than the instance's first
        output is logged); a failure is logged, never raised (events must not stop the controller)."""
        try:
            dropped = self.dropped.get(log_dir, 0)
            texts = [text]
            if dropped:
                short = f"had less than {self.min_free} bytes free" if self.min_free else "was full"
                texts.insert(0, f"runed: {dropped} events dropped: the disk holding this log {short}")
            if self._room(log_dir, dropped) and self._append(log_dir, texts, at):
                self.dropped.pop(log_dir, None)
            else:
                self.dropped[log_dir] = dropped + 1
        except OSError as e:
            log.warning("cannot record event for %s: %s", log_dir.name, e)

    def _room(self, log_dir: Path, dropped: int) -> bool:
        if not self.min_free:
            return True
        try:
            st = os.statvfs(log_dir)
        except OSError:
            return True  # cannot tell: the write itself will say
        room = st.f_bavail * st.f_frsize - self.min_free
        if dropped:
            room -= RESUME_SLACK_BYTES
        return room > 4096

    def _append(self, log_dir: Path, texts: list[str], at: float | None) -> bool:
        """Write event lines in one write; False (and nothing written) when the disk had no room."""
        path = os.path.join(log_dir, EVENTS_NAME)
        seq = self._seq.get(log_dir)
        if seq is None:
            seq = files.last_seq(log_dir, EVENTS_NAME)
        # One open says both whether the instance's directory is still there and how big the file is.
        try:
            fd = os.open(path, APPEND, 0o644)
        except FileNotFoundError:
            return True  # deleted with its instance: nothing left to read it
        try:
            if os.fstat(fd).st_size > MAX_BYTES:
                os.replace(path, log_dir / f"{EVENTS_NAME}.1")
                fd, old = os.open(path, APPEND, 0o644), fd
                os.close(old)
            return self._write(fd, log_dir, seq, texts, at)
        finally:
            os.close(fd)

    def _write(self, fd: int, log_dir: Path, seq: int, texts: list[str], at: float | None) -> bool:
        ns = time.time_ns()
        if at is not None:
            ns = min(ns, int(at * 1e9))
        ns = max(ns, self._last_ns.get(log_dir, 0))
        ts = format_ns(ns)
        data = b"".join(
            orjson.dumps({"seq": seq + i, "ts": ts, "stream": EVENT_STREAM, "line": text}) + b"\n"
            for i, text in enumerate(texts, 1)
        )
        seq += len(texts)
        # One write of whole lines to an O_APPEND file: a concurrent reader sees them whole or not at all.
        try:
            n = os.write(fd, data)
            if n != len(data):
                # Short of space mid-line: take the part back, the lines are dropped whole.
                os.ftruncate(fd, os.fstat(fd).st_size - n)
                return False
        except OSError as e:
            if e.errno not in _NO_SPACE:
                raise
            return False
        self._seq[log_dir] = seq
        self._last_ns[log_dir] = ns
        return True

    def forget(self, log_dir: Path) -> None:
        """Drop the cached seq of a deleted instance directory."""
        self._seq.pop(log_dir, None)
        self._last_ns.pop(log_dir, None)
        self.dropped.pop(log_dir, None)
