"""StreamLogs over HTTP: ``GET /v1/namespaces/{ns}/logs/{target}`` as SSE (follow) or JSON lines.

The LogRequest fields travel as query parameters (``follow``, ``tail``, ``since``, ``until``,
``timestamps``, ``filter``, ``stream``, ``after_cursor``, ``max_batch``). Following streams
Server-Sent Events whose ``id:`` is the line's cursor, so a reconnecting EventSource resumes with
``Last-Event-ID``; otherwise the response is JSON lines (``application/x-ndjson``, one LogResponse
per line) and ends with the last line.

``max_batch`` > 1 opts in to batches: each event (or JSON line) is then one LogResponse whose
``lines`` hold up to that many lines, its ``id:`` the cursor of the last one. Without it the shape
is one line per event; the gateway still asks the handler for batches (:data:`INTERNAL_BATCH`) and
splits them, which spares the per-message cost of the pipeline between them. The handler gives
this endpoint its lines as protojson objects (``CallContext.json_ready``,
:class:`runed.api.logs_wire.JsonBatch`): no LogResponse is built only to be read back here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from rune.api import logs_pb2
from rune.gateway import codec, sse
from rune.gateway.bidi import Feed, context, drain, start
from rune.gateway.http import error_response, sse_event, sse_response, status_dict
from runed.api.logs_wire import JsonBatch
from runed.core import errors
from runed.core.suggest import did_you_mean, meant
from runed.pipeline.stages import Pipeline

LOGS_METHOD = "/rune.api.LogService/StreamLogs"
KEEPALIVE_SECONDS = 15.0
# Encoded bytes waiting for a slow client before the reader stops reading (the rest waits in the files).
BUFFER_BYTES = 4 * 1024 * 1024
# Lines per handler message when the client did not opt in to batches (split again here).
INTERNAL_BATCH = 256
NDJSON = "application/x-ndjson"

# The query parameters: the LogRequest fields the path does not hold, by lowerCamelCase and proto name.
PARAMETERS = (
    "follow", "tail", "since", "until", "timestamps", "showEvents", "filter", "stream", "afterCursor", "maxBatch",
    "showLogs", "showStatus", "parameterUpdate",
)  # fmt: skip
# Accepted and ignored, as over gRPC (output is always shown).
IGNORED_FLAGS = ("show_logs", "showLogs", "show_status", "showStatus", "parameter_update", "parameterUpdate")
_KNOWN = frozenset(PARAMETERS) | {"show_events", "after_cursor", "max_batch", *IGNORED_FLAGS}

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def _flag(q: Any, name: str, bad: list[errors.FieldViolation]) -> bool:
    raw = str(q.get(name, "")).lower()
    if raw in _TRUE:
        return True
    if raw not in _FALSE:
        bad.append(errors.FieldViolation(name, "expected true or false"))
    return False


def log_request(request: Request) -> logs_pb2.LogRequest:
    """The LogRequest of a logs URL: path target and namespace, the rest from the query (every bad field at once)."""
    q = request.query_params
    bad: list[errors.FieldViolation] = []
    # A misspelt parameter is named, not ignored (``tailLines=5`` would have sent every line).
    for key in dict.fromkeys(q.keys()):
        if key not in _KNOWN:
            near = meant(key, PARAMETERS)
            hint = did_you_mean(near) if near else f"this route reads {', '.join(PARAMETERS)}"
            bad.append(errors.FieldViolation(key, f"unknown query parameter ({hint})"))
    tail_raw = q.get("tail", "0")
    if not tail_raw.isdigit():
        bad.append(errors.FieldViolation("tail", "expected a non-negative integer"))
    batch_raw = q.get("max_batch", "") or q.get("maxBatch", "") or "0"
    if not batch_raw.isdigit() or len(batch_raw) > 9:
        bad.append(errors.FieldViolation("max_batch", "expected a non-negative integer"))
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
        max_batch=int(batch_raw) if batch_raw.isdigit() and len(batch_raw) <= 9 else 0,
    )
    for name in IGNORED_FLAGS:
        _flag(q, name, bad)
    if bad:
        raise errors.invalid(*bad)
    sse.apply_last_event_id(request, msg)
    return msg


def log_json(msg: logs_pb2.LogResponse) -> bytes:
    """LogResponse as protojson (as the codec writes it, less an empty ``lines``), built directly:
    this runs once per line."""
    out = _log_dict(msg)
    if msg.lines:
        out["lines"] = [_log_dict(line) for line in msg.lines]
    return orjson.dumps(out)


def _log_dict(msg: logs_pb2.LogResponse) -> dict[str, Any]:
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
    return out


def _ndjson_line(msg: logs_pb2.LogResponse) -> bytes:
    return log_json(msg) + b"\n"


def _sse_line(msg: logs_pb2.LogResponse) -> bytes:
    return sse_event(log_json(msg), event="message", id=msg.cursor)


# The outer object of a batch as protojson writes it: every field at its default but the cursor and lines.
_BATCH_OUTER: dict[str, Any] = _log_dict(logs_pb2.LogResponse())


def _sse_frame(cursor: str, data: bytes) -> bytes:
    """``sse_event(data, event="message", id=cursor)`` written out (orjson's output has no newline to
    split on): this runs once per line, or on a batch of hundreds."""
    return b"event: message\nid: " + cursor.encode() + b"\ndata: " + data + b"\n\n"


def _json_batch(batch: JsonBatch) -> bytes:
    return orjson.dumps({**_BATCH_OUTER, "cursor": batch.cursor, "lines": batch.lines})


def _encoder(sse_frames: bool, batches: bool) -> Callable[[object], bytes]:
    """Encodes a handler message: whole (the client opted in to batches), or split into one line each.

    Lines come as :class:`JsonBatch` (what the handler sends this endpoint) or as LogResponse (a
    stream's last event, and lines a handler sends in their proto form).
    """
    line = _sse_line if sse_frames else _ndjson_line

    def encode(msg: object) -> bytes:
        if isinstance(msg, JsonBatch):
            if batches:
                data = _json_batch(msg)
                return _sse_frame(msg.cursor, data) if sse_frames else data + b"\n"
            dumps = orjson.dumps
            if sse_frames:
                return b"".join([_sse_frame(d["cursor"], dumps(d)) for d in msg.lines])
            return b"".join([dumps(d) + b"\n" for d in msg.lines])
        assert isinstance(msg, logs_pb2.LogResponse)
        if batches or not msg.lines:
            return line(msg)
        return b"".join(line(one) for one in msg.lines)

    return encode


async def _batched(items: AsyncIterator[object], encode: Callable[[object], bytes]) -> AsyncIterator[bytes]:
    """Encoded items, joined into one chunk per write: a fast writer costs one send per batch, not per line.

    Bounded: past BUFFER_BYTES pending the reader waits for the client to take them.
    """
    buf: list[bytes] = []
    pending = 0
    ready = asyncio.Event()
    drained = asyncio.Event()
    failure: list[BaseException] = []
    finished = False

    async def pump() -> None:
        nonlocal finished, pending
        try:
            async for m in items:
                data = encode(m)
                buf.append(data)
                pending += len(data)
                ready.set()
                while pending >= BUFFER_BYTES:
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
                pending = 0
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


async def _ndjson(items: AsyncIterator[object], request_id: str, batches: bool) -> AsyncIterator[bytes]:
    try:
        async for chunk in _batched(items, _encoder(False, batches)):
            yield chunk
    except errors.RuneError as err:
        yield orjson.dumps({"error": status_dict(err, request_id)}) + b"\n"


class Logs:
    """The logs endpoint, calling StreamLogs through ``pipeline``."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def get(self, request: Request) -> Response:
        ctx = context(request, LOGS_METHOD)
        ctx.json_ready = True
        try:
            msg = log_request(request)
        except errors.RuneError as err:
            return error_response(err, ctx.request_id)
        batches = msg.max_batch > 1
        if not batches:
            msg.max_batch = INTERNAL_BATCH
        feed = Feed(msg)
        source = self.pipeline.bidi(ctx, feed)
        started = await start(ctx, source, sse.FIRST_FRAME_WINDOW)
        if isinstance(started, Response):
            return started
        items = drain(started, source)
        if msg.follow:
            return sse_response(_batched(items, _encoder(True, batches)), ctx.request_id, KEEPALIVE_SECONDS)
        feed.close()
        return StreamingResponse(
            _ndjson(items, ctx.request_id, batches), media_type=NDJSON, headers={"x-request-id": ctx.request_id}
        )


def routes(pipeline: Pipeline) -> list[BaseRoute]:
    """Mounted by the gateway app ahead of its generated ``/v1`` routes."""
    return [Route("/v1/namespaces/{ns}/logs/{target:path}", Logs(pipeline).get, methods=["GET"])]
