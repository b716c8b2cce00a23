"""A log stream over one or more instances: history (tail/since/until/filter) then live following.

Lines of several instances are merged in time order; every emitted line carries a cursor that
records, for each instance, the last seq the stream has consumed up to that line, so a reader
resuming from it sees no duplicates, and no gap it is not told about: lines that rotation removed
before the stream read them come out as one gap line (stream :data:`GAP_STREAM`, ``missing`` lines)
in their place, which every selection lets through.
"""

from __future__ import annotations

import asyncio
import heapq
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, overload

from runed.logs import cursor, files
from runed.logs.files import GAP_STREAM, Follower, LogLine

STREAMS = ("stdout", "stderr")
EVENT_STREAM = "event"
EVENTS_KEY_SUFFIX = "~events"
# Idle polling backs off between these bounds; any new line resets it to the minimum.
POLL_MIN = 0.005
POLL_MAX = 0.05
# Lines a follow reads per series before it sends them: a fast writer's lines leave in steps of
# about this many (a few batches), not after a whole 10,000-line read, which held the first of them
# back by the time it took to read and send the rest.
FOLLOW_LINES = 2000


@dataclass(frozen=True)
class Source:
    """One series of files feeding the stream: an instance's output, or its lifecycle events."""

    instance_id: str
    instance_name: str
    service: str
    log_dir: Path
    file: str = files.LOG_NAME

    @property
    def key(self) -> str:
        """The series' name in the stream and its cursors (the instance id for its output)."""
        return self.instance_id if self.file == files.LOG_NAME else f"{self.instance_id}{EVENTS_KEY_SUFFIX}"


def compile_filter(text: str) -> Callable[[str], bool] | None:
    """``/re/`` is a regular expression (search), anything else a plain substring.

    Raises ValueError for an invalid regular expression.
    """
    if not text:
        return None
    if len(text) >= 2 and text.startswith("/") and text.endswith("/"):
        try:
            rx = re.compile(text[1:-1])
        except re.error as e:
            raise ValueError(f"invalid regular expression: {e}") from None
        return lambda s: rx.search(s) is not None
    return lambda s: text in s


@dataclass
class Selection:
    """Which lines pass; mutable so parameter updates apply to an open stream."""

    stream: str = ""  # "" = both; EVENT_STREAM: the lifecycle events alone
    since_ns: int | None = None
    until_ns: int | None = None
    match: Callable[[str], bool] | None = None
    events: bool = False

    def passes_output(self) -> bool:
        """Whether every output line (and gap) passes: :meth:`accept` is then ``stream != "event"``."""
        return (
            not self.stream
            and self.since_ns is None
            and self.until_ns is None
            and self.match is None
            and not self.events
        )

    def reads(self, src: Source) -> bool:
        """Whether any line of ``src`` can pass: an instance's output does not when only its events
        are asked for (``rune events``, ``rune describe``), so its files are not read for them."""
        return self.stream != EVENT_STREAM or src.file != files.LOG_NAME

    def accept(self, ln: LogLine) -> bool:
        if ln.stream == EVENT_STREAM:
            # Events are not output: the stdout/stderr choice does not hide them, show_events does.
            if not self.events and self.stream != EVENT_STREAM:
                return False
        elif ln.stream == GAP_STREAM:
            # Missing lines are reported whatever the selection: nobody can tell whether they matched.
            return True
        elif self.stream and ln.stream != self.stream:
            return False
        if self.since_ns is not None and ln.ns < self.since_ns:
            return False
        if self.until_ns is not None and ln.ns > self.until_ns:
            return False
        return self.match is None or self.match(ln.line)


class Emitted(NamedTuple):
    source: Source
    line: LogLine
    cursor: str


class Run(Sequence[Emitted]):
    """Lines of one series emitted together, the cursor of each being ``prefix`` and its seq: what a
    poll of a one-series stream (the common case) returns instead of an :class:`Emitted` per line.

    A fast writer's lines pass here by the hundred thousand per second; building a tuple and a cursor
    string for each only for the sender to take them apart again was a fifth of what a follow cost.
    A sender that knows this form reads ``lines`` directly; anything else sees the same
    :class:`Emitted` items as from any poll.
    """

    __slots__ = ("lines", "prefix", "source")

    def __init__(self, source: Source, lines: list[LogLine], prefix: str) -> None:
        self.source = source
        self.lines = lines
        self.prefix = prefix

    def __len__(self) -> int:
        return len(self.lines)

    @overload
    def __getitem__(self, i: int) -> Emitted: ...
    @overload
    def __getitem__(self, i: slice) -> list[Emitted]: ...
    def __getitem__(self, i: int | slice) -> Emitted | list[Emitted]:
        if isinstance(i, slice):
            return [self._emitted(ln) for ln in self.lines[i]]
        return self._emitted(self.lines[i])

    def __iter__(self) -> Iterator[Emitted]:
        return map(self._emitted, self.lines)

    def _emitted(self, ln: LogLine) -> Emitted:
        return Emitted(self.source, ln, f"{self.prefix}{ln.seq}")

    def __repr__(self) -> str:
        return f"Run({self.source.key!r}, {len(self.lines)} lines)"


# What a poll returns: lines of several series merged (each with its cursor), or one series' run.
Batch = list[Emitted] | Run


@dataclass
class LogStream:
    """History then (optionally) live lines of ``sources``.

    ``positions`` (from a cursor) makes every read start after the recorded seq of each instance;
    instances missing from it are read from their beginning (they appeared after the cursor).
    """

    selection: Selection
    sources: dict[str, Source]
    positions: dict[str, int] | None = None
    pos: dict[str, int] = field(default_factory=dict)
    _followers: dict[str, Follower] = field(default_factory=dict)
    # Series :meth:`poll` passes over (nothing of them is asked for now), not read: their positions
    # are moved to their ends only when a cursor is made, or when they are read again.
    _passed: set[str] = field(default_factory=set)

    def history(self, tail: int) -> Iterator[Emitted]:
        """The lines already written that the request asks for, merged, with cursors.

        ``tail`` > 0 holds at most ``tail`` lines per instance; ``tail`` 0 streams every line
        through a lazy merge, so a large history never sits in memory.
        """
        if tail <= 0:
            return self._stream_all()
        return iter(self._tail(tail))

    def _stream_all(self) -> Iterator[Emitted]:
        sel = self.selection
        followers: dict[str, Follower] = {}
        for iid, src in self.sources.items():
            if not sel.reads(src):
                start = files.last_seq(src.log_dir, src.file)  # passed over: none of it is asked for
            elif self.positions is not None:
                start = self.positions.get(iid, -1)
            elif sel.since_ns is not None:
                start = files.seq_before(src.log_dir, sel.since_ns, src.file)
            else:
                start = -1
            followers[iid] = Follower(src.log_dir, start, src.file)
            self.pos[iid] = start

        def lines(src: Source, f: Follower) -> Iterator[tuple[Source, LogLine]]:
            while batch := f.poll(1000):
                for ln in batch:
                    yield src, ln

        merged = heapq.merge(
            *(lines(self.sources[iid], f) for iid, f in followers.items()), key=lambda p: (p[1].ns, p[1].seq)
        )
        completed = False
        try:
            for src, ln in merged:
                self.pos[src.key] = ln.seq
                if sel.accept(ln):
                    yield Emitted(src, ln, cursor.encode(self.pos))
            completed = True
        finally:
            if completed:
                # The followers are at the end of every file now: following continues from there.
                self._followers.update(followers)
            else:
                for f in followers.values():
                    f.close()

    def _tail(self, tail: int) -> list[Emitted]:
        sel = self.selection
        picked: list[tuple[Source, LogLine]] = []
        end: dict[str, int] = {}
        for iid, src in self.sources.items():
            if not sel.reads(src):
                end[iid] = files.last_seq(src.log_dir, src.file)
                continue
            if self.positions is not None:
                f = Follower(src.log_dir, self.positions.get(iid, -1), src.file)
                lines: list[LogLine] = []
                while batch := f.poll():
                    lines.extend(ln for ln in batch if sel.accept(ln))
                end[iid] = f.last_seq
                f.close()
                if tail > 0:
                    lines = lines[-tail:]
            else:
                recorded = files.last_seq(src.log_dir, src.file)
                lines = files.tail(src.log_dir, tail, sel.accept, sel.since_ns, src.file)
                end[iid] = max(recorded, lines[-1].seq if lines else -1)
            picked.extend((src, ln) for ln in lines)
        picked.sort(key=lambda p: (p[1].ns, p[1].seq))
        if tail > 0:
            picked = picked[-tail:]
        # Before the first picked line of each instance, or at its end when none was picked.
        first: dict[str, int] = {}
        for src, ln in picked:
            first.setdefault(src.key, ln.seq - 1)
        self.pos = {iid: first.get(iid, end[iid]) for iid in self.sources}
        out = []
        for src, ln in picked:
            self.pos[src.key] = ln.seq
            out.append(Emitted(src, ln, cursor.encode(self.pos)))
        self.pos = dict(end)
        return out

    def add_source(self, src: Source) -> None:
        """A series that appeared after the stream started: read it from its first line."""
        if src.key in self.sources:
            return
        self.sources[src.key] = src
        start = -1 if self.positions is None else self.positions.get(src.key, -1)
        self.pos[src.key] = start

    def retire(self, instance_id: str) -> Batch:
        """An instance is gone: its last lines, then its series leave the stream (and future cursors)."""
        keys = [k for k, src in self.sources.items() if src.instance_id == instance_id]
        if not keys:
            return []
        out = self.poll()
        for key in keys:
            f = self._followers.pop(key, None)
            if f is not None:
                f.close()
            del self.sources[key]
            self.pos.pop(key, None)
            self._passed.discard(key)
        return out

    def poll(self, limit: int = files.POLL_LINES) -> Batch:
        """Lines written since the last poll (about ``limit`` per series at most), merged by time;
        rejected lines still advance cursors.

        A series nothing of which can pass (an instance's output, while only its events are asked
        for: ``rune events -f``) is not read: a chatty instance's every line was read and parsed
        here, only to be dropped (bench/README.md, "an events-only follower"). Its cursor position
        moves to its end when a cursor is made, as if its lines had been read and rejected (up to
        the poll, where reading stopped at the line of each cursor); a parameter update that asks
        for its lines again reads those written from then on.
        """
        got: list[tuple[Source, LogLine]] = []
        sel = self.selection
        for iid, src in self.sources.items():
            if not sel.reads(src):
                self._pass_over(iid)
                continue
            f = self._followers.get(iid)
            if f is None:
                if iid in self._passed:
                    self._passed.discard(iid)
                    self.pos[iid] = files.last_seq(src.log_dir, src.file)
                f = self._followers[iid] = Follower(src.log_dir, self.pos.get(iid, -1), src.file)
            lines = f.poll(limit)
            if lines and len(self.sources) == 1:
                return self._single(src, lines)
            got.extend((src, ln) for ln in lines)
        if not got:
            return []
        for iid in self._passed:
            src = self.sources[iid]
            self.pos[iid] = max(self.pos.get(iid, -1), files.last_seq(src.log_dir, src.file))
        if len(self.sources) > 1:
            got.sort(key=lambda p: (p[1].ns, p[1].seq))
        out = []
        accept = self.selection.accept
        for src, ln in got:
            self.pos[src.key] = ln.seq
            if accept(ln):
                out.append(Emitted(src, ln, cursor.encode(self.pos)))
        return out

    def _pass_over(self, iid: str) -> None:
        """``iid``'s series is not read for now (see :meth:`poll`)."""
        if iid not in self._passed:
            self._passed.add(iid)
            f = self._followers.pop(iid, None)
            if f is not None:
                f.close()

    def _single(self, src: Source, lines: list[LogLine]) -> Batch:
        """:meth:`poll` of a stream of one series (the common case, per line the hot path): no merge,
        and each cursor is a prefix plus the seq (a :class:`Run`)."""
        self.pos[src.key] = lines[-1].seq
        if self.selection.passes_output():
            lines = [ln for ln in lines if ln.stream != EVENT_STREAM]
        else:
            accept = self.selection.accept
            lines = [ln for ln in lines if accept(ln)]
        return Run(src, lines, cursor.prefix_of(src.key)) if lines else []

    def close(self) -> None:
        for f in self._followers.values():
            f.close()
        self._followers.clear()

    async def follow(self, wake: asyncio.Event, done: Callable[[], bool]) -> AsyncIterator[Batch]:
        """Batches of new lines until ``done()``; ``wake`` cuts an idle wait short (new source, new params)."""
        delay = POLL_MIN
        try:
            while not done():
                batch = self.poll(FOLLOW_LINES)
                if batch:
                    delay = POLL_MIN
                    yield batch
                    # A writer that never pauses must not keep the loop: the sender (and every other
                    # task of the role) runs between two reads.
                    await asyncio.sleep(0)
                    continue
                wake.clear()
                try:
                    # asyncio.timeout: 3.11's wait_for can swallow the follower's cancellation.
                    async with asyncio.timeout(delay):
                        await wake.wait()
                except TimeoutError:
                    delay = min(POLL_MAX, delay * 2)
        finally:
            self.close()
