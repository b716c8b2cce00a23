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

log = logging.getLogger("runed.logs.events")


class EventWriter:
    """Appends event lines for instances, one writer process per instance (the controller owning it).

    The next seq is read from the files once per instance directory, then kept in memory, so a
    controller restart continues the numbering instead of repeating it.
    """

    def __init__(self) -> None:
        self._seq: dict[Path, int] = {}

    def append(self, log_dir: Path, text: str) -> None:
        """Record one event; a failure is logged, never raised (events must not stop the controller)."""
        try:
            self._append(log_dir, text)
        except OSError as e:
            log.warning("cannot record event for %s: %s", log_dir.name, e)

    def _append(self, log_dir: Path, text: str) -> None:
        if not log_dir.is_dir():
            return  # deleted with its instance: nothing left to read it
        seq = self._seq.get(log_dir)
        if seq is None:
            seq = files.last_seq(log_dir, EVENTS_NAME)
        seq += 1
        path = log_dir / EVENTS_NAME
        try:
            if path.stat().st_size > MAX_BYTES:
                os.replace(path, log_dir / f"{EVENTS_NAME}.1")
        except FileNotFoundError:
            pass
        line = orjson.dumps({"seq": seq, "ts": format_ns(time.time_ns()), "stream": EVENT_STREAM, "line": text})
        # One write of a whole line to an O_APPEND file: a concurrent reader sees it whole or not at all.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line + b"\n")
        finally:
            os.close(fd)
        self._seq[log_dir] = seq

    def forget(self, log_dir: Path) -> None:
        """Drop the cached seq of a deleted instance directory."""
        self._seq.pop(log_dir, None)
