"""Driving a bidirectional RPC from HTTP: the request side fed by the adapter, the response side drained.

The REST forms of StreamLogs (``logs_http``) and StreamExec (``exec_http``, ``exec_ws``) call the
same pipeline as gRPC; this module holds what they share: :class:`Feed` (the request stream),
:func:`start` (errors known before the first frame become a real HTTP status; every stream route
uses it, server streams included) and :func:`drain` (the responses, with the call closed however
the reader stops).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from google.protobuf.message import Message
from starlette.requests import HTTPConnection
from starlette.responses import Response

from rune.gateway.http import call_context, close_stream, error_response
from runed.core import errors
from runed.pipeline.context import CallContext
from runed.pipeline.methods import by_full_name


def context(conn: HTTPConnection, full_name: str) -> CallContext:
    """The pipeline's call context for ``full_name``, with the dependencies the gateway app was built on."""
    return call_context(conn.app.state.runed, by_full_name()[full_name], conn)


class Feed:
    """The request side of a bidi call, fed by the adapter: ``put`` messages, ``close`` = half-close."""

    def __init__(self, *first: Message) -> None:
        self._q: asyncio.Queue[Message | None] = asyncio.Queue()
        for m in first:
            self._q.put_nowait(m)

    def put(self, msg: Message) -> None:
        self._q.put_nowait(msg)

    def close(self) -> None:
        self._q.put_nowait(None)

    def __aiter__(self) -> Feed:
        return self

    async def __anext__(self) -> Message:
        msg = await self._q.get()
        if msg is None:
            self._q.put_nowait(None)  # stay closed for any later reader
            raise StopAsyncIteration
        return msg


async def start(ctx: CallContext, source: AsyncIterator[Message], wait: float) -> asyncio.Task[Message] | Response:
    """Start the call (``source``, a pipeline stream on ``ctx``) and hold the HTTP status until its outcome is known.

    Errors before the call is admitted (authentication, authorization, validation) always become
    a real HTTP error response, however long admission takes; so do errors the handler raises
    within ``wait`` after admission (a target that does not exist). The stream starts (200) with
    the first message, or after ``wait`` when the handler has nothing to send yet; later errors are
    its last frame.
    """
    admitted = asyncio.Event()
    ctx.on_admitted = admitted.set
    first: asyncio.Task[Message] = asyncio.ensure_future(anext(source))  # type: ignore[arg-type]
    gate = asyncio.ensure_future(admitted.wait())
    try:
        await asyncio.wait({first, gate}, return_when=asyncio.FIRST_COMPLETED)
        if not first.done():
            await asyncio.wait({first}, timeout=wait)
    except BaseException:
        # The request itself was cancelled: the call must not outlive it.
        first.cancel()
        with contextlib.suppress(BaseException):
            await source.aclose()  # type: ignore[attr-defined]
        raise
    finally:
        gate.cancel()
    if first.done() and not first.cancelled() and isinstance(first.exception(), errors.RuneError):
        exc = first.exception()
        assert isinstance(exc, errors.RuneError)
        return error_response(exc, ctx.request_id)
    return first


async def drain(first: asyncio.Task[Message], source: AsyncIterator[Message]) -> AsyncIterator[Message]:
    """The already-started first item, then the rest; the call is closed however this ends."""
    try:
        try:
            yield await first
        except StopAsyncIteration:
            return
        async for msg in source:
            yield msg
    finally:
        await close_stream(source, first)
