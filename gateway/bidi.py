"""REST forms of the bidirectional RPCs (StreamLogs, StreamExec), through the same pipeline as gRPC.

Logs: ``GET /v1/namespaces/{ns}/logs/{target}`` with the LogRequest fields as query parameters
(``follow``, ``tail``, ``since``, ``until``, ``timestamps``, ``filter``, ``stream``,
``after_cursor``). Following streams Server-Sent Events whose ``id:`` is the line's cursor, so a
reconnecting EventSource resumes with ``Last-Event-ID``; otherwise the response is JSON lines
(``application/x-ndjson``, one LogResponse per line) and ends with the last line.

Exec: ``POST /v1/namespaces/{ns}/exec/{target}`` (target ``service/<n>``, ``svc/<n>``,
``instance/<id>``, ``inst/<id>`` or a bare service name; body = ExecInitRequest JSON) starts a
session and answers ``201 {"sessionId": ...}``. ``GET .../exec/sessions/{id}/output`` streams its
output as SSE (events ``status``, ``stdout``, ``stderr``, ``exit``; data = ExecResponse JSON, bytes
in base64). ``POST .../exec/sessions/{id}/input`` takes one ExecRequest JSON (``stdin`` base64,
``resize``, ``signal``) or ``{"close": true}`` for end of input. A session whose output nobody
reads for ``SESSION_IDLE_SECONDS`` is ended, which kills its command. Only the principal that
created a session can read or feed it.

``/v1/namespaces/{ns}/exec/{target}/ws`` is the interactive form (credentials in the
``Authorization`` header, or for browsers as the subprotocols ``rune.exec.v1`` and
``bearer.<token>``): the first text message is the ExecInitRequest JSON; then text messages are
ExecRequest JSON and binary messages raw stdin (an empty one closes input); the server sends every
ExecResponse as a JSON text message.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from rune.api import exec_pb2, logs_pb2
from rune.gateway import codec, sse
from rune.gateway.http import call_context, error_response, sse_event, sse_response, status_dict
from runed.core import errors
from runed.pipeline.context import CallContext
from runed.pipeline.methods import Method, by_full_name
from runed.server.app import App

LOGS_METHOD = "/rune.api.LogService/StreamLogs"
EXEC_METHOD = "/rune.api.ExecService/StreamExec"
SESSION_IDLE_SECONDS = 30.0
# How long a new exec session may take to be admitted and spawned before POST gives up.
START_TIMEOUT_SECONDS = 15.0
KEEPALIVE_SECONDS = 15.0
OUTPUT_BUFFER = 256
BATCH_MAX = 4096
NDJSON = "application/x-ndjson"

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _app(conn: HTTPConnection) -> App:
    app: App = conn.app.state.runed
    return app


def _method(full_name: str) -> Method:
    return by_full_name()[full_name]


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


async def _first(ctx: CallContext, source: AsyncIterator[Message], wait: float) -> asyncio.Task[Message] | Response:
    """Start the call; admission errors seen within ``wait`` become a real HTTP error response."""
    first: asyncio.Task[Message] = asyncio.ensure_future(anext(source))  # type: ignore[arg-type]
    done, _ = await asyncio.wait({first}, timeout=wait)
    if done and not first.cancelled() and isinstance(first.exception(), errors.RuneError):
        exc = first.exception()
        assert isinstance(exc, errors.RuneError)
        return error_response(exc, ctx.request_id)
    return first


async def _drain(first: asyncio.Task[Message], source: AsyncIterator[Message]) -> AsyncIterator[Message]:
    """The already-started first item, then the rest; the call is closed however this ends."""
    try:
        try:
            yield await first
        except StopAsyncIteration:
            return
        async for msg in source:
            yield msg
    finally:
        if not first.done():
            first.cancel()
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(BaseException):
                await aclose()


# -- logs -------------------------------------------------------------------------------------
def _flag(q: Any, name: str, bad: list[errors.FieldViolation]) -> bool:
    raw = str(q.get(name, "")).lower()
    if raw in _TRUE:
        return True
    if raw not in _FALSE:
        bad.append(errors.FieldViolation(name, "expected true or false"))
    return False


def log_request(request: Request) -> logs_pb2.LogRequest:
    q = request.query_params
    bad: list[errors.FieldViolation] = []
    tail_raw = q.get("tail", "0")
    if not tail_raw.isdigit():
        bad.append(errors.FieldViolation("tail", "expected a non-negative integer"))
    msg = logs_pb2.LogRequest(
        resource_target=request.path_params["target"],
        namespace=request.path_params["ns"],
        follow=_flag(q, "follow", bad),
        tail=int(tail_raw) if tail_raw.isdigit() else 0,
        since=q.get("since", ""),
        until=q.get("until", ""),
        timestamps=_flag(q, "timestamps", bad),
        show_events=_flag(q, "show_events", bad) or _flag(q, "showEvents", bad),
        filter=q.get("filter", ""),
        stream=q.get("stream", ""),
        after_cursor=q.get("after_cursor", "") or q.get("afterCursor", ""),
    )
    if bad:
        raise errors.invalid(*bad)
    sse.apply_last_event_id(request, msg)
    return msg


def log_json(msg: logs_pb2.LogResponse) -> bytes:
    """LogResponse as protojson (same bytes as the codec), built directly: this runs once per line."""
    out: dict[str, Any] = {
        "serviceName": msg.service_name,
        "instanceId": msg.instance_id,
        "instanceName": msg.instance_name,
        "timestamp": msg.timestamp,
        "content": msg.content,
        "stream": msg.stream,
    }
    if msg.HasField("status"):
        out["status"] = codec.to_dict(msg.status)
    out["logLevel"] = msg.log_level
    out["cursor"] = msg.cursor
    out["seq"] = str(msg.seq)  # protojson writes int64 as a string
    return orjson.dumps(out)


def _ndjson_line(msg: Message) -> bytes:
    assert isinstance(msg, logs_pb2.LogResponse)
    return log_json(msg) + b"\n"


def _sse_line(msg: Message) -> bytes:
    assert isinstance(msg, logs_pb2.LogResponse)
    return sse_event(log_json(msg), event="message", id=msg.cursor)


async def _batched(items: AsyncIterator[Message], encode: Callable[[Message], bytes]) -> AsyncIterator[bytes]:
    """Encoded items, joined into one chunk per write: a fast writer costs one send per batch, not per line.

    Bounded: past BATCH_MAX pending items the reader waits for the client to take them.
    """
    buf: list[bytes] = []
    ready = asyncio.Event()
    drained = asyncio.Event()
    failure: list[BaseException] = []
    finished = False

    async def pump() -> None:
        nonlocal finished
        try:
            async for m in items:
                buf.append(encode(m))
                ready.set()
                while len(buf) >= BATCH_MAX:
                    drained.clear()
                    await drained.wait()
        except Exception as e:  # the pipeline already turned anything unexpected into a RuneError
            failure.append(e)
        finally:
            finished = True
            ready.set()

    task = asyncio.ensure_future(pump())
    try:
        while True:
            await ready.wait()
            ready.clear()
            if buf:
                chunk = b"".join(buf)
                buf.clear()
                drained.set()
                yield chunk
            if finished and not buf:
                if failure:
                    raise failure[0]
                return
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def _ndjson(items: AsyncIterator[Message], request_id: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in _batched(items, _ndjson_line):
            yield chunk
    except errors.RuneError as err:
        yield orjson.dumps({"error": status_dict(err, request_id)}) + b"\n"


async def logs(request: Request) -> Response:
    app = _app(request)
    ctx = call_context(app, _method(LOGS_METHOD), request)
    try:
        msg = log_request(request)
    except errors.RuneError as err:
        return error_response(err, ctx.request_id)
    feed = Feed(msg)
    source = app.pipeline.bidi(ctx, feed)
    started = await _first(ctx, source, sse.FIRST_FRAME_WINDOW)
    if isinstance(started, Response):
        return started
    items = _drain(started, source)
    if msg.follow:
        return sse_response(_batched(items, _sse_line), ctx.request_id, KEEPALIVE_SECONDS)
    feed.close()
    return StreamingResponse(
        _ndjson(items, ctx.request_id), media_type=NDJSON, headers={"x-request-id": ctx.request_id}
    )


# -- exec -------------------------------------------------------------------------------------
def _init_from(body: bytes, target: str, ns: str) -> exec_pb2.ExecInitRequest:
    init = exec_pb2.ExecInitRequest()
    if body.strip():
        try:
            json_format.Parse(body, init, ignore_unknown_fields=False)
        except json_format.ParseError as e:
            raise errors.invalid(("body", str(e))) from None
    kind, sep, name = target.partition("/")
    if not sep:
        kind, name = "service", kind
    if kind in ("service", "svc"):
        init.service_name = name
    elif kind in ("instance", "inst"):
        init.instance_id = name
    else:
        raise errors.invalid(("target", f"invalid exec target {target!r}: use service/<name> or instance/<id>"))
    init.namespace = ns
    return init


def _input_from(body: bytes) -> exec_pb2.ExecRequest:
    try:
        data = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as e:
        raise errors.invalid(("body", f"invalid JSON: {e}")) from None
    if not isinstance(data, dict):
        raise errors.invalid(("body", "expected a JSON object"))
    if data.pop("close", False) is True:
        return exec_pb2.ExecRequest(stdin=b"")
    req = exec_pb2.ExecRequest()
    try:
        json_format.ParseDict(data, req, ignore_unknown_fields=False)
    except json_format.ParseError as e:
        raise errors.invalid(("body", str(e))) from None
    if req.WhichOneof("request") in (None, "init"):
        raise errors.invalid(("body", "expected one of stdin, resize, signal or close"))
    return req


@dataclass(frozen=True)
class _ErrorFrame:
    """An error at the end of an exec output stream (carried through the output queue)."""

    err: errors.RuneError
    request_id: str


@dataclass
class ExecSession:
    """A running exec call of this process, owned by the principal that started it."""

    id: str
    owner: str
    feed: Feed
    output: asyncio.Queue[Message | _ErrorFrame | None] = field(default_factory=lambda: asyncio.Queue(OUTPUT_BUFFER))
    pump: asyncio.Task[None] | None = None
    attached: bool = False
    idle_since: float = field(default_factory=time.monotonic)


class Sessions:
    """The exec sessions of one rest process (REST exec needs sticky routing to that process)."""

    def __init__(self) -> None:
        self.by_id: dict[str, ExecSession] = {}
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
                if not s.attached and now - s.idle_since > SESSION_IDLE_SECONDS:
                    self.end(s)


SESSIONS = Sessions()


def _owner(ctx: CallContext) -> str:
    return ctx.principal.key


async def _pump(s: ExecSession, first: asyncio.Task[Message], source: AsyncIterator[Message], rid: str) -> None:
    try:
        async for msg in _drain(first, source):
            await s.output.put(msg)
    except errors.RuneError as err:
        await s.output.put(_ErrorFrame(err, rid))
    finally:
        with contextlib.suppress(asyncio.QueueFull):
            s.output.put_nowait(None)


async def exec_create(request: Request) -> Response:
    app = _app(request)
    ctx = call_context(app, _method(EXEC_METHOD), request)
    try:
        init = _init_from(await request.body(), request.path_params["target"], request.path_params["ns"])
    except errors.RuneError as err:
        return error_response(err, ctx.request_id)
    feed = Feed(exec_pb2.ExecRequest(init=init))
    source = app.pipeline.bidi(ctx, feed)
    first: asyncio.Task[Message] = asyncio.ensure_future(anext(source))  # type: ignore[arg-type]
    done, _ = await asyncio.wait({first}, timeout=START_TIMEOUT_SECONDS)
    if not done:
        first.cancel()
        with contextlib.suppress(BaseException):
            await source.aclose()  # type: ignore[attr-defined]
        return error_response(errors.DeadlineExceeded("the exec session did not start in time"), ctx.request_id)
    exc = first.exception()
    if isinstance(exc, errors.RuneError):
        return error_response(exc, ctx.request_id)
    session = ExecSession(id=secrets.token_urlsafe(16), owner=_owner(ctx), feed=feed)
    session.pump = asyncio.ensure_future(_pump(session, first, source, ctx.request_id))
    SESSIONS.add(session)
    return JSONResponse({"sessionId": session.id}, status_code=201, headers={"x-request-id": ctx.request_id})


async def _session_for(request: Request) -> tuple[ExecSession, CallContext]:
    """The caller's session; authentication is the pipeline's own stage, and only the owner matches."""
    app = _app(request)
    ctx = call_context(app, _method(EXEC_METHOD), request)
    ctx.principal = await app.authenticator.authenticate(ctx)
    s = SESSIONS.by_id.get(request.path_params["id"])
    if s is None or s.owner != _owner(ctx):
        raise errors.not_found("exec session", request.path_params["id"], request.path_params["ns"])
    return s, ctx


async def _output_frames(s: ExecSession) -> AsyncIterator[bytes]:
    try:
        while True:
            msg = await s.output.get()
            if msg is None:
                SESSIONS.end(s)
                return
            if isinstance(msg, _ErrorFrame):
                yield sse_event(orjson.dumps(status_dict(msg.err, msg.request_id)), event="error")
                continue
            assert isinstance(msg, exec_pb2.ExecResponse)
            yield sse_event(codec.dumps(msg), event=msg.WhichOneof("response") or "message")
    finally:
        s.attached = False
        s.idle_since = time.monotonic()


async def exec_output(request: Request) -> Response:
    try:
        s, ctx = await _session_for(request)
    except errors.RuneError as err:
        return error_response(err, request.headers.get("x-request-id", ""))
    if s.attached:
        return error_response(errors.Conflict("the session's output is already being read"), ctx.request_id)
    s.attached = True
    return sse_response(_output_frames(s), ctx.request_id, KEEPALIVE_SECONDS)


async def exec_input(request: Request) -> Response:
    try:
        s, ctx = await _session_for(request)
        msg = _input_from(await request.body())
    except errors.RuneError as err:
        return error_response(err, request.headers.get("x-request-id", ""))
    s.feed.put(msg)
    return Response(status_code=204, headers={"x-request-id": ctx.request_id})


WS_SUBPROTOCOL = "rune.exec.v1"
WS_BEARER_PREFIX = "bearer."


async def exec_ws(ws: WebSocket) -> None:
    app = _app(ws)
    ctx = call_context(app, _method(EXEC_METHOD), ws)
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    # Browsers cannot set headers on a WebSocket: they may pass the token as a subprotocol instead.
    bearer = next((p[len(WS_BEARER_PREFIX) :] for p in offered if p.startswith(WS_BEARER_PREFIX)), "")
    if bearer and "authorization" not in ctx.metadata:
        ctx.metadata["authorization"] = f"Bearer {bearer}"
    await ws.accept(subprotocol=WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else None)
    try:
        init = _init_from((await ws.receive_text()).encode(), ws.path_params["target"], ws.path_params["ns"])
    except errors.RuneError as err:
        await ws.send_text(orjson.dumps({"error": status_dict(err, ctx.request_id)}).decode())
        await ws.close(1008)
        return
    except WebSocketDisconnect:
        return
    feed = Feed(exec_pb2.ExecRequest(init=init))

    async def read_input() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                m = await ws.receive()
                if m["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(int(m.get("code") or 1000))
                if m.get("bytes") is not None:
                    feed.put(exec_pb2.ExecRequest(stdin=m["bytes"]))
                elif m.get("text") is not None:
                    try:
                        feed.put(_input_from(m["text"].encode()))
                    except errors.RuneError as err:
                        await ws.send_text(orjson.dumps({"error": status_dict(err, ctx.request_id)}).decode())
        # The client is gone: stop the call (and with it the command).
        output.cancel()

    async def write_output() -> None:
        try:
            async for msg in app.pipeline.bidi(ctx, feed):
                await ws.send_text(codec.dumps(msg).decode())
        except errors.RuneError as err:
            await ws.send_text(orjson.dumps({"error": status_dict(err, ctx.request_id)}).decode())
        with contextlib.suppress(Exception):
            await ws.close(1000)

    output = asyncio.ensure_future(write_output())
    reader = asyncio.ensure_future(read_input())
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await output
    finally:
        reader.cancel()
        output.cancel()
        for t in (reader, output):
            with contextlib.suppress(BaseException):
                await t


def routes() -> list[BaseRoute]:
    """Mounted by the gateway app ahead of its generated ``/v1`` routes."""
    base = "/v1/namespaces/{ns}"
    return [
        Route(base + "/logs/{target:path}", logs, methods=["GET"]),
        Route(base + "/exec/sessions/{id}/output", exec_output, methods=["GET"]),
        Route(base + "/exec/sessions/{id}/input", exec_input, methods=["POST"]),
        WebSocketRoute(base + "/exec/{target:path}/ws", exec_ws),
        Route(base + "/exec/{target:path}", exec_create, methods=["POST"]),
    ]
