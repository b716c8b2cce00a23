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
- :func:`read_body` reads a request body within ``server.max_body_bytes`` (413 beyond it) and
  ``server.body_timeout_seconds`` (408 after it, and the connection closed) and turns a client that
  hangs up mid-body into :class:`ClientDisconnected`; :func:`check_json_type` answers 415
  for a body that does not say it is JSON; :func:`json_body` does both for the JSON routes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from google.protobuf import json_format
from starlette.requests import ClientDisconnect, HTTPConnection, Request
from starlette.responses import Response, StreamingResponse

from rune.gateway.backend import Backend
from rune.gateway.tls import CN_KEY
from runed.core import errors
from runed.pipeline.context import CallContext
from runed.pipeline.methods import Method
from runed.pipeline.status import status_proto

log = logging.getLogger("runed.gateway")

REQUEST_ID_HEADER = "x-request-id"
# Where call_context leaves the request's CallContext in the ASGI scope.
CALL_KEY = "rune.call"
_REQUEST_ID_RAW = REQUEST_ID_HEADER.encode()
KEEPALIVE_SECONDS = 15.0
JSON = "application/json"


class PayloadTooLarge(errors.ResourceExhausted, http=413):
    """The request body is over server.max_body_bytes (HTTP 413; RESOURCE_EXHAUSTED over gRPC)."""

    reason = "PAYLOAD_TOO_LARGE"


# The Connect protocol answers a Content-Type it does not serve with 415 as well.
class UnsupportedMediaType(errors.InvalidArgument, http=415, connect_http=415):
    """A body whose Content-Type this route does not read (HTTP 415)."""

    reason = "UNSUPPORTED_MEDIA_TYPE"


class BodyTimeout(errors.DeadlineExceeded, http=408):
    """The request body was not in within server.body_timeout_seconds (HTTP 408, connection closed).

    Like a head that never completes (``gateway/protocol.py``), a body sent a byte at a time would
    otherwise hold its connection and its handler for as long as the client likes.
    """

    reason = "REQUEST_BODY_TIMEOUT"


class ClientDisconnected(errors.Cancelled):
    """The client hung up before its request body was complete: nobody is left to answer.

    Logged once at INFO (it says something about the client, nothing about the server) and
    counted as CANCELLED; the response rendered for it is never delivered.
    """


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def is_json_type(content_type: str) -> bool:
    """Whether a Content-Type is JSON: ``application/json`` or ``application/<anything>+json``."""
    essence = _media_type(content_type)
    return essence == JSON or (essence.startswith("application/") and essence.endswith("+json"))


def check_json_type(conn: HTTPConnection) -> None:
    """Refuse (415) a body labelled as anything but JSON; no Content-Type at all reads as JSON.

    ``text/plain`` and form encodings are what a browser may send cross-site without asking
    first, and a body in them was never meant for a JSON API.
    """
    ctype = conn.headers.get("content-type", "")
    if ctype and not is_json_type(ctype):
        raise UnsupportedMediaType(
            f"unsupported media type {_media_type(ctype)!r}: send the body as JSON (Content-Type: {JSON})"
        )


def no_query(conn: HTTPConnection) -> None:
    """Refuse query parameters on a route whose request is its body (or its socket's first message):
    one given there (``?tty=true``) is named, not ignored."""
    names = dict.fromkeys(conn.query_params.keys())
    if names:
        raise errors.invalid(
            *((n, "unknown query parameter (this route takes none: send it in the body)") for n in names)
        )


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The whole body, at most ``limit`` bytes (413 beyond) and within ``timeout`` seconds (408 after);
    a client gone mid-body is ClientDisconnected."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except ClientDisconnect:
        log_disconnect(request, size)
        raise ClientDisconnected(f"the client disconnected after {size} bytes of its request body") from None
    except TimeoutError:
        log.info(
            "client %s sent %d bytes of its request body in %gs, not all of it: %s %s (request %s) answered 408",
            _peer(request),
            size,
            timeout,
            request.method,
            request.url.path,
            request_id_of(request),
        )
        raise BodyTimeout(f"request body not received within {timeout:g}s ({size} bytes arrived)") from None
    return b"".join(chunks)


async def json_body(request: Request) -> bytes:
    """A JSON route's body: labelled JSON (or unlabelled) and within ``server.max_body_bytes``."""
    check_json_type(request)
    server = request.app.state.runed.config.server
    return await read_body(request, server.max_body_bytes, server.body_timeout_seconds)


def log_disconnect(conn: HTTPConnection, received: int | None = None) -> None:
    """One INFO line, no traceback: a client that hangs up mid-request is not a server fault."""
    got = "" if received is None else f" after {received} bytes of its body"
    log.info(
        "client %s disconnected mid-request%s: %s %s (request %s)",
        _peer(conn),
        got,
        conn.scope.get("method", ""),
        conn.scope.get("path", ""),
        request_id_of(conn),
    )


def _peer(conn: HTTPConnection) -> str:
    client = conn.scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "?"


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
    # The request's call, for what answers after the pipeline (rune.gateway.middleware's RateLimit headers).
    scope[CALL_KEY] = ctx
    return ctx


def status_dict(err: errors.RuneError, request_id: str) -> dict[str, Any]:
    """The protojson ``google.rpc.Status`` (code, message, details with ``@type``)."""
    out: dict[str, Any] = json_format.MessageToDict(status_proto(err, request_id))
    out.setdefault("details", [])
    return out


def _headers(err: errors.RuneError, request_id: str) -> dict[str, str]:
    headers = {"x-request-id": request_id}
    if isinstance(err, BodyTimeout):
        # The rest of the body may still come: it is not the next request.
        headers["connection"] = "close"
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


def connect_error_dict(err: errors.RuneError, request_id: str) -> dict[str, Any]:
    """An error in the Connect protocol's JSON shape: ``code`` by name, each detail as ``type``, ``value``
    (base64 without padding) and ``debug`` (its protojson, for people; clients decode ``value``)."""
    st = status_proto(err, request_id)
    body: dict[str, Any] = {"code": errors.connect_code(err.code), "message": err.message}
    body["details"] = [
        {
            "type": d.type_url.rpartition("/")[2],
            "value": base64.b64encode(d.value).decode().rstrip("="),
            "debug": {k: v for k, v in json_format.MessageToDict(d).items() if k != "@type"},
        }
        for d in st.details
    ]
    return body


def connect_error_response(err: errors.RuneError, request_id: str) -> Response:
    """A unary Connect error: the HTTP status from the Connect protocol's table, the Connect JSON body."""
    return Response(
        orjson.dumps(connect_error_dict(err, request_id)),
        status_code=err.connect_status,
        media_type=JSON,
        headers=_headers(err, request_id),
    )


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


def shutdown_event() -> asyncio.Event:
    """Set once the role is stopping: open streams (SSE here, Connect in rune.gateway.connect) end then."""
    return _shutdown_event()


def begin_shutdown() -> None:
    """End every open event stream now (the role is stopping); clients reconnect elsewhere or later."""
    _shutdown_event().set()


async def close_stream(source: object, pending: asyncio.Future[Any] | None = None) -> None:
    """Cancel the step of ``source`` in flight (and wait for it), then close ``source``: the call ends with it.

    The step must be finished first: an async generator cannot be closed while a step of it runs.
    """
    if pending is not None:
        pending.cancel()
        with contextlib.suppress(BaseException):
            await pending
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(BaseException):
            await aclose()


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
        await close_stream(it, pending)


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
