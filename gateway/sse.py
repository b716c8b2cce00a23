"""Server-streaming RPCs as Server-Sent Events: event names, resumable ids, Last-Event-ID."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response

from rune.gateway import codec
from rune.gateway.bidi import start
from rune.gateway.http import close_stream, sse_event, sse_response
from runed.core import errors
from runed.pipeline.context import CallContext
from runed.transport import metrics

# Admission errors (401/403/400) always get a real HTTP status, and so do errors the handler raises
# this soon after admission (404 for a missing target); later ones arrive as an `event: error` frame
# on an already-open stream (see rune.gateway.bidi.start).
FIRST_FRAME_WINDOW = 0.25
RESUME_FIELD = "since_revision"
POSITION_FIELD = "revision"
# Log lines carry an opaque cursor instead of a revision; requests resume with after_cursor.
CURSOR_FIELD = "cursor"
CURSOR_RESUME_FIELD = "after_cursor"


@functools.cache
def _event_field(desc: Descriptor) -> Any:
    for f in desc.fields:
        if f.type == FieldDescriptor.TYPE_ENUM and f.enum_type is not None and f.enum_type.name == "EventType":
            return f
    return None


def frame(msg: Message, high: int = 0) -> tuple[bytes, int]:
    """One SSE frame and the stream's new high-water revision.

    ``event:`` comes from the EventType field (ADDED/MODIFIED/DELETED, else ``message``); ``id:`` is
    the highest store revision the stream has delivered. Snapshot events carry their objects'
    (unordered) revisions, so the running maximum is what a reconnect may safely resume after.
    """
    desc = msg.DESCRIPTOR
    event = "message"
    ef = _event_field(desc)
    if ef is not None:
        value = ef.enum_type.values_by_number.get(getattr(msg, ef.name))
        if value is not None and value.number != 0:
            event = value.name.removeprefix("EVENT_TYPE_")
    position = ""
    if CURSOR_FIELD in desc.fields_by_name:
        position = str(getattr(msg, CURSOR_FIELD))
    elif POSITION_FIELD in desc.fields_by_name:
        high = max(high, int(getattr(msg, POSITION_FIELD)))
        if high:
            position = str(high)
    return sse_event(codec.dumps(msg), event=event, id=position), high


def apply_last_event_id(request: Request, msg: Message) -> None:
    """A reconnecting EventSource sends ``Last-Event-ID``: resume right after that revision."""
    last = request.headers.get("last-event-id", "").strip()
    fields = msg.DESCRIPTOR.fields_by_name
    if last and CURSOR_RESUME_FIELD in fields and not getattr(msg, CURSOR_RESUME_FIELD):
        setattr(msg, CURSOR_RESUME_FIELD, last)
        return
    if not last or RESUME_FIELD not in fields or getattr(msg, RESUME_FIELD):
        return
    if not last.isdigit():
        raise codec.BadRequest(
            f"invalid Last-Event-ID {last!r}: expected a revision number",
            violations=[errors.FieldViolation("Last-Event-ID", "expected a revision number")],
        )
    setattr(msg, RESUME_FIELD, int(last))


async def _frames(first: asyncio.Task[Message], source: AsyncIterator[Message]) -> AsyncIterator[bytes]:
    metrics.stream_opened("rest")
    try:
        try:
            msg = await first
        except StopAsyncIteration:
            return
        data, high = frame(msg)
        yield data
        async for msg in source:
            data, high = frame(msg, high)
            yield data
    finally:
        metrics.stream_opened("rest", -1)
        await close_stream(source, first)


async def stream_response(ctx: CallContext, source: AsyncIterator[Message], keepalive: float) -> Response:
    """Serve a pipeline stream on ``ctx`` (a server stream, or a bidi call fed one message) as ``text/event-stream``.

    Errors known before the first frame are a real HTTP status (:func:`rune.gateway.bidi.start`).
    """
    started = await start(ctx, source, FIRST_FRAME_WINDOW)
    if isinstance(started, Response):
        return started
    return sse_response(_frames(started, source), ctx.request_id, keepalive)
