"""Helpers every gateway route uses: a CallContext from a Request, error bodies, SSE framing.

The logs/exec routes (``gateway/bidi.py``) use these too, so errors and streams look the same
on every REST endpoint:

- :func:`call_context` builds the pipeline's CallContext from a Starlette request (headers as
  lower-cased metadata, ``X-Request-Id`` honoured, the client address as peer).
- :func:`error_response` renders a :class:`runed.core.errors.RuneError` as the HTTP status from
  ``runed.core.errors.HTTP_STATUS`` and a protojson ``google.rpc.Status`` body (``Retry-After`` on 429).
- :func:`sse_event`, :func:`sse_comment` frame Server-Sent Events; :func:`sse_response` wraps an
  async iterator of frames into a ``text/event-stream`` response with keep-alives and a final
  ``event: error`` frame when the stream fails.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from google.protobuf import json_format
from starlette.requests import HTTPConnection
from starlette.responses import Response, StreamingResponse

from rune.gateway.backend import Backend
from rune.gateway.tls import CN_KEY
from runed.core import errors
from runed.pipeline.context import CallContext
from runed.pipeline.methods import Method
from runed.pipeline.status import status_proto

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RAW = REQUEST_ID_HEADER.encode()
KEEPALIVE_SECONDS = 15.0
JSON = "application/json"


def request_id_of(conn: HTTPConnection) -> str:
    """The caller's ``X-Request-Id`` (bounded) or a fresh one, fixed for the rest of the request."""
    scope = conn.scope
    rid = scope.get("rune.request_id")
    if rid:
        return str(rid)
    # The raw ASGI list, not conn.headers: building Starlette's Headers showed in the GET profile.
    supplied = ""
    for k, v in scope["headers"]:
        if k == _REQUEST_ID_RAW:
            supplied = v.decode("latin-1")
            break
    # Same shape as the pipeline's ids (16 hex digits), without uuid4's overhead on the hot path.
    rid = supplied[:128] if supplied else os.urandom(8).hex()
    scope["rune.request_id"] = rid
    return rid


def call_context(backend: Backend, method: Method, conn: HTTPConnection) -> CallContext:
    """The pipeline's per-call context for an HTTP request: same metadata rules as gRPC."""
    scope = conn.scope
    # ASGI header names are lower-case already; a repeated header keeps its last value.
    metadata = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    client = scope.get("client")
    ctx = CallContext(
        deps=backend.deps,
        method=method,
        transport="rest",
        metadata=metadata,
        peer=client[0] if client else "",
        request_id=request_id_of(conn),
        # Present only when the TLS handshake verified a client certificate (gateway/tls.py).
        tls_client_cn=scope.get(CN_KEY, ""),
    )
    timeout_ms = metadata.get("connect-timeout-ms")
    if timeout_ms and timeout_ms.isdigit():
        ctx.deadline = time.monotonic() + int(timeout_ms) / 1000
    return ctx


def status_dict(err: errors.RuneError, request_id: str) -> dict[str, Any]:
    """The protojson ``google.rpc.Status`` (code, message, details with ``@type``)."""
    out: dict[str, Any] = json_format.MessageToDict(status_proto(err, request_id))
    out.setdefault("details", [])
    return out


def _headers(err: errors.RuneError, request_id: str) -> dict[str, str]:
    headers = {"x-request-id": request_id}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(err.retry_after)))
    return headers


def error_response(err: errors.RuneError, request_id: str) -> Response:
    """HTTP status from the one table, body = google.rpc.Status as protojson."""
    return Response(
        orjson.dumps(status_dict(err, request_id)),
        status_code=err.http_status,
        media_type=JSON,
        headers=_headers(err, request_id),
    )


# Connect spells CANCELLED with one L; every other code is the gRPC name in lower case.
def _connect_code(err: errors.RuneError) -> str:
    name = err.code.name.lower()
    return "canceled" if name == "cancelled" else name


def connect_error_response(err: errors.RuneError, request_id: str) -> Response:
    """An error in the Connect protocol's unary JSON shape (``code`` is a string, details base64)."""
    st = status_proto(err, request_id)
    details = [
        {
            "type": d.type_url.rpartition("/")[2],
            "value": base64.b64encode(d.value).decode().rstrip("="),
        }
        for d in st.details
    ]
    body: dict[str, Any] = {"code": _connect_code(err), "message": err.message}
    if details:
        body["details"] = details
    return Response(orjson.dumps(body), status_code=err.http_status, media_type=JSON, headers=_headers(err, request_id))


def sse_event(data: bytes | str, event: str = "", id: str = "") -> bytes:
    """One SSE frame. ``data`` must not contain raw newlines (JSON from orjson never does)."""
    out = b""
    if event:
        out += b"event: " + event.encode() + b"\n"
    if id:
        out += b"id: " + id.encode() + b"\n"
    payload = data.encode() if isinstance(data, str) else data
    for line in payload.split(b"\n"):
        out += b"data: " + line + b"\n"
    return out + b"\n"


def sse_comment(text: str = "keep-alive") -> bytes:
    return b": " + text.encode() + b"\n\n"


_shutdown: asyncio.Event | None = None


def _shutdown_event() -> asyncio.Event:
    global _shutdown
    if _shutdown is None:
        _shutdown = asyncio.Event()
    return _shutdown


def begin_shutdown() -> None:
    """End every open event stream now (the role is stopping); clients reconnect elsewhere or later."""
    _shutdown_event().set()


async def _with_keepalive(frames: AsyncIterator[bytes], interval: float) -> AsyncIterator[bytes]:
    """Interleave comment frames while ``frames`` is idle, without cancelling its pending step.

    Ends with an ``event: error`` (UNAVAILABLE) frame when the role shuts down, so a server stop
    does not wait out its grace period on streams that never end by themselves.
    """
    it = frames.__aiter__()
    pending: asyncio.Task[bytes] | None = None
    stopping = asyncio.ensure_future(_shutdown_event().wait())
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(it.__anext__())
            done, _ = await asyncio.wait({pending, stopping}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                yield sse_comment()
                continue
            if pending not in done:
                err = errors.Unavailable("the server is shutting down: reconnect with Last-Event-ID to resume")
                yield sse_event(orjson.dumps(status_dict(err, "")), event="error")
                return
            try:
                frame = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield frame
    finally:
        stopping.cancel()
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(BaseException):
                await aclose()


async def _guarded(frames: AsyncIterator[bytes], request_id: str) -> AsyncIterator[bytes]:
    """A failure mid-stream becomes a final ``event: error`` frame carrying the Status JSON."""
    try:
        async for frame in frames:
            yield frame
    except errors.RuneError as err:
        yield sse_event(orjson.dumps(status_dict(err, request_id)), event="error")


def sse_response(
    frames: AsyncIterator[bytes], request_id: str, keepalive: float = KEEPALIVE_SECONDS
) -> StreamingResponse:
    """A ``text/event-stream`` response over ``frames`` with keep-alives and error framing.

    When the client goes away Starlette cancels the task iterating ``frames``; the generators
    above close their source on the way out, so the handler's work stops at once.
    """
    return StreamingResponse(
        _with_keepalive(_guarded(frames, request_id), keepalive),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no", "x-request-id": request_id},
    )
