"""What a log stream sends: each line as a LogResponse, and several lines per message for a client that opts in.

One gRPC message per line is what made followers of a chatty service fall seconds behind: grpc.aio
delivers 4-10k messages/s on a small machine, whatever their size. With ``max_batch`` > 1 a
response carries up to that many lines in ``lines`` (each a complete single-line LogResponse), the
outer ``cursor`` being that of its last line. A batch holds only what was already read when the
stream looked at the files and is sent at once, never held back to fill up: a slow writer's line
still leaves alone and immediately, a fast writer's lines fill batches up to ``max_batch`` lines or
:data:`BATCH_BYTES` of content, whichever comes first.

The REST gateway, which encodes JSON in this same process, takes the lines as :class:`JsonBatch`
instead (:func:`pack_json`): each line's protojson object built straight from the line. Building a
LogResponse only for the gateway to read every field back cost it twice what encoding does, and
made an SSE follower fall behind a writer that a gRPC follower keeps up with.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from google.rpc import code_pb2

from rune.api import common_pb2, logs_pb2
from runed.logs.events import EVENT_STREAM
from runed.logs.files import GAP_STREAM, LOG_NAME
from runed.logs.stream import Emitted, Run, Source
from runed.logs.timeparse import format_ns

# Largest max_batch a request may ask for.
MAX_BATCH = 1000
# Content bytes after which a batch is sent even if it has room for more lines (messages stay well
# under gRPC's 4 MiB default limit).
BATCH_BYTES = 256 * 1024
# The detail that marks the last event of a follow whose service or instance is gone.
END_OF_STREAM = "end_of_stream"

# Builds one line: the LogResponse constructor, or ``lines.add`` of the batch being filled.
Make = Callable[..., logs_pb2.LogResponse]


def level(content: str) -> str:
    """The log level a line's content suggests."""
    low = content.lower()
    if "error" in low or "exception" in low or "failed" in low:
        return "error"
    if "warn" in low:
        return "warning"
    return "info"


def _gap_text(e: Emitted) -> tuple[str, list[str]]:
    """What a gap line says, and its status details."""
    ln, src = e.line, e.source
    first = ln.seq - ln.missing + 1
    what = "lines" if src.file == LOG_NAME else "events"
    text = (
        f"{ln.missing} {what} of {src.instance_name} (seq {first}-{ln.seq})"
        " were removed by log rotation before they were read"
    )
    return text, [f"missing_lines={ln.missing}", f"first_seq={first}", f"last_seq={ln.seq}"]


def _gap_response(e: Emitted, timestamps: bool, make: Make) -> logs_pb2.LogResponse:
    ln, src = e.line, e.source
    text, details = _gap_text(e)
    return make(
        service_name=src.service,
        instance_id=src.instance_id,
        instance_name=src.instance_name,
        timestamp=ln.ts,
        content=f"{ln.ts} {text}" if timestamps else text,
        stream=EVENT_STREAM,
        status=common_pb2.Status(code=code_pb2.DATA_LOSS, message=text, details=details),
        log_level="warning",
        cursor=e.cursor,
        seq=ln.seq,
    )


def end_response(
    reason: str, src: Source | None, service: str, position: str, timestamps: bool
) -> logs_pb2.LogResponse:
    """The last event of a follow whose target is gone (always the single-line form; see :func:`wrap`)."""
    ts = format_ns(time.time_ns())
    text = f"{reason}: end of the log stream"
    return logs_pb2.LogResponse(
        service_name=service,
        instance_id=src.instance_id if src is not None else "",
        instance_name=src.instance_name if src is not None else "",
        timestamp=ts,
        content=f"{ts} {text}" if timestamps else text,
        stream=EVENT_STREAM,
        status=common_pb2.Status(code=code_pb2.OK, message=reason, details=[END_OF_STREAM]),
        log_level="info",
        cursor=position,
    )


def response(e: Emitted, timestamps: bool, make: Make = logs_pb2.LogResponse) -> logs_pb2.LogResponse:
    """One line in the single-line form."""
    ln = e.line
    if ln.stream == GAP_STREAM:
        return _gap_response(e, timestamps, make)
    return make(
        service_name=e.source.service,
        instance_id=e.source.instance_id,
        instance_name=e.source.instance_name,
        timestamp=ln.ts,
        content=f"{ln.ts} {ln.line}" if timestamps else ln.line,
        stream=ln.stream,
        log_level=level(ln.line),
        cursor=e.cursor,
        seq=ln.seq,
    )


def wrap(line: logs_pb2.LogResponse, max_batch: int) -> logs_pb2.LogResponse:
    """A single-line response in the form the client asked for."""
    if max_batch <= 1:
        return line
    return logs_pb2.LogResponse(lines=[line], cursor=line.cursor)


def pack(emitted: Iterable[Emitted], timestamps: bool, max_batch: int) -> Iterator[logs_pb2.LogResponse]:
    """The responses for ``emitted``, in order: one per line, or (``max_batch`` > 1) batches of lines.

    Lazy: a batch is built only when the previous one was taken, so a stalled client holds at
    most one batch in memory (the rest stays in the files).
    """
    if max_batch <= 1:
        for e in emitted:
            yield response(e, timestamps)
        return
    if isinstance(emitted, Run):
        yield from _pack_run(emitted, timestamps, max_batch)
        return
    out: logs_pb2.LogResponse | None = None
    count = size = 0
    add: Make = logs_pb2.LogResponse
    last = ""
    for e in emitted:
        if out is None:
            out = logs_pb2.LogResponse()
            add = out.lines.add
            count = size = 0
        ln = e.line
        if ln.stream == GAP_STREAM:
            _gap_response(e, timestamps, add)
        else:
            # response() inlined: this runs once per line of a fast writer.
            src = e.source
            add(
                service_name=src.service,
                instance_id=src.instance_id,
                instance_name=src.instance_name,
                timestamp=ln.ts,
                content=f"{ln.ts} {ln.line}" if timestamps else ln.line,
                stream=ln.stream,
                log_level=level(ln.line),
                cursor=e.cursor,
                seq=ln.seq,
            )
        count += 1
        size += len(ln.line)
        last = e.cursor
        if count >= max_batch or size >= BATCH_BYTES:
            out.cursor = last
            yield out
            out = None
    if out is not None:
        out.cursor = last
        yield out


def _pack_run(run: Run, timestamps: bool, max_batch: int) -> Iterator[logs_pb2.LogResponse]:
    """:func:`pack` of one series' run (the hot path of a follow): the same batches, built from its
    lines without an :class:`Emitted` or a lookup of the source per line.

    The fields every line of the run shares but for its stream and level (source, stream, level) are
    merged in from serialised templates: a third cheaper than passing all nine to the constructor.
    """
    src, prefix = run.source, run.prefix
    shared: dict[tuple[str, str], bytes] = {}
    out = logs_pb2.LogResponse()
    add = out.lines.add
    count = size = 0
    cur = ""
    for ln in run.lines:
        line = ln.line
        cur = f"{prefix}{ln.seq}"
        if ln.stream == GAP_STREAM:
            _gap_response(Emitted(src, ln, cur), timestamps, add)
        else:
            key = (ln.stream, level(line))
            template = shared.get(key)
            if template is None:
                template = shared[key] = logs_pb2.LogResponse(
                    service_name=src.service,
                    instance_id=src.instance_id,
                    instance_name=src.instance_name,
                    stream=key[0],
                    log_level=key[1],
                ).SerializeToString()
            one = add()
            one.MergeFromString(template)
            one.timestamp = ln.ts
            one.content = f"{ln.ts} {line}" if timestamps else line
            one.cursor = cur
            one.seq = ln.seq
        count += 1
        size += len(line)
        if count >= max_batch or size >= BATCH_BYTES:
            out.cursor = cur
            yield out
            out = logs_pb2.LogResponse()
            add = out.lines.add
            count = size = 0
    if count:
        out.cursor = cur
        yield out


@dataclass(slots=True)
class JsonBatch:
    """Lines as protojson objects (each what :func:`response` renders to), for an adapter that encodes
    JSON in this process; ``cursor`` is that of the last line."""

    lines: list[dict[str, Any]]
    cursor: str


def json_line(e: Emitted, timestamps: bool) -> dict[str, Any]:
    """One line as the protojson object of its :func:`response` (int64 ``seq`` as a string)."""
    ln, src = e.line, e.source
    if ln.stream == GAP_STREAM:
        text, details = _gap_text(e)
        return {
            "serviceName": src.service,
            "instanceId": src.instance_id,
            "instanceName": src.instance_name,
            "timestamp": ln.ts,
            "content": f"{ln.ts} {text}" if timestamps else text,
            "stream": EVENT_STREAM,
            "status": {"code": code_pb2.DATA_LOSS, "message": text, "details": details},
            "logLevel": "warning",
            "cursor": e.cursor,
            "seq": str(ln.seq),
        }
    return {
        "serviceName": src.service,
        "instanceId": src.instance_id,
        "instanceName": src.instance_name,
        "timestamp": ln.ts,
        "content": f"{ln.ts} {ln.line}" if timestamps else ln.line,
        "stream": ln.stream,
        "logLevel": level(ln.line),
        "cursor": e.cursor,
        "seq": str(ln.seq),
    }


def pack_json(emitted: Iterable[Emitted], timestamps: bool, max_batch: int) -> Iterator[JsonBatch]:
    """:func:`pack` for :class:`JsonBatch`: the same batches (``max_batch`` <= 1: one line each), same bounds."""
    limit = max(1, max_batch)
    if isinstance(emitted, Run):
        yield from _pack_json_run(emitted, timestamps, limit)
        return
    out: list[dict[str, Any]] = []
    size = 0
    for e in emitted:
        out.append(json_line(e, timestamps))
        size += len(e.line.line)
        if len(out) >= limit or size >= BATCH_BYTES:
            yield JsonBatch(out, e.cursor)
            out = []
            size = 0
    if out:
        yield JsonBatch(out, out[-1]["cursor"])


def _pack_json_run(run: Run, timestamps: bool, limit: int) -> Iterator[JsonBatch]:
    """:func:`pack_json` of one series' run: :func:`json_line` inlined, the source's fields looked up once."""
    src, prefix = run.source, run.prefix
    service, instance_id, instance_name = src.service, src.instance_id, src.instance_name
    out: list[dict[str, Any]] = []
    size = 0
    cur = ""
    for ln in run.lines:
        line = ln.line
        cur = f"{prefix}{ln.seq}"
        if ln.stream == GAP_STREAM:
            out.append(json_line(Emitted(src, ln, cur), timestamps))
        else:
            out.append(
                {
                    "serviceName": service,
                    "instanceId": instance_id,
                    "instanceName": instance_name,
                    "timestamp": ln.ts,
                    "content": f"{ln.ts} {line}" if timestamps else line,
                    "stream": ln.stream,
                    "logLevel": level(line),
                    "cursor": cur,
                    "seq": str(ln.seq),
                }
            )
        size += len(line)
        if len(out) >= limit or size >= BATCH_BYTES:
            yield JsonBatch(out, cur)
            out = []
            size = 0
    if out:
        yield JsonBatch(out, cur)
