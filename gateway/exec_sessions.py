"""The REST exec sessions of one rest process: a registry the gateway app creates and hands to the exec routes.

A session is a running StreamExec call whose output waits in a bounded queue until someone reads
it. Sessions live in the process that created them (REST exec needs sticky routing to that
process); one whose output nobody reads for ``SESSION_IDLE_SECONDS`` is ended, which kills its
command.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from google.protobuf.message import Message

from rune.gateway.bidi import Feed, drain
from runed.core import errors

SESSION_IDLE_SECONDS = 30.0
OUTPUT_BUFFER = 256


@dataclass(frozen=True)
class ErrorFrame:
    """An error at the end of an exec output stream (carried through the output queue)."""

    err: errors.RuneError
    request_id: str


@dataclass
class ExecSession:
    """A running exec call of this process, owned by the principal that started it."""

    id: str
    owner: str
    feed: Feed
    output: asyncio.Queue[Message | ErrorFrame | None] = field(default_factory=lambda: asyncio.Queue(OUTPUT_BUFFER))
    pump: asyncio.Task[None] | None = None
    attached: bool = False
    idle_since: float = field(default_factory=time.monotonic)


class Sessions:
    """The exec sessions of one rest process, by id; an idle reaper runs while any exist."""

    def __init__(self, idle_seconds: float = SESSION_IDLE_SECONDS) -> None:
        self.by_id: dict[str, ExecSession] = {}
        self.idle_seconds = idle_seconds
        self._reaper: asyncio.Task[None] | None = None

    def add(self, s: ExecSession) -> None:
        self.by_id[s.id] = s
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap_idle())

    def end(self, s: ExecSession) -> None:
        self.by_id.pop(s.id, None)
        if s.pump is not None and not s.pump.done():
            s.pump.cancel()

    async def _reap_idle(self) -> None:
        while self.by_id:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for s in list(self.by_id.values()):
                if not s.attached and now - s.idle_since > self.idle_seconds:
                    self.end(s)


async def pump(s: ExecSession, first: asyncio.Task[Message], source: AsyncIterator[Message], rid: str) -> None:
    """Move the call's responses into the session's output queue; ``None`` marks the end."""
    try:
        async for msg in drain(first, source):
            await s.output.put(msg)
    except errors.RuneError as err:
        await s.output.put(ErrorFrame(err, rid))
    finally:
        with contextlib.suppress(asyncio.QueueFull):
            s.output.put_nowait(None)
