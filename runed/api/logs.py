"""LogService: StreamLogs served straight from the instances' log files (no hop to the controller).

Filters: ``filter`` is a substring, or a regular expression when written ``/re/``. ``since`` and
``until`` take RFC 3339 or a duration meaning "that long ago" (``90s``, ``5m``, ``1h30m``).
``timestamps`` prefixes each content with its RFC 3339 timestamp (``timestamp`` is always set).
``stream`` limits to ``stdout`` or ``stderr``. ``show_events`` interleaves the instances' lifecycle
events (started, exited, restarting, probe failures, liveness kills), written by the controller to
``events.jsonl``, as lines whose ``stream`` is ``event`` (their ``seq`` counts events only).
``show_logs`` and ``show_status`` are accepted and ignored: output is always shown.
Every response carries a ``cursor``; a request with
``after_cursor`` continues right after it. A non-follow stream ends once its lines are sent; a
follow stream ends when the client cancels, when a ``parameter_update`` turns ``follow`` off, or
once ``until`` has passed. ``parameter_update`` messages may change follow, filter, stream,
timestamps and (when the stream started with them) show_events of the open stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from rune.api import logs_pb2
from runed.core import errors
from runed.core.errors import FieldViolation
from runed.logs import cursor
from runed.logs.events import EVENTS_NAME
from runed.logs.stream import STREAMS, Emitted, LogStream, Selection, Source, compile_filter
from runed.logs.timeparse import parse_bound
from runed.pipeline.context import CallContext
from runed.store.base import DELETED, Record, Store, iter_all

INSTANCE_KIND = "instance"
SERVICE_KIND = "service"
# Lines may reach the file a little after their timestamp: keep following that long past ``until``.
UNTIL_GRACE_NS = 500_000_000


def _validate(req: logs_pb2.LogRequest) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if not req.resource_target.strip():
        out.append(FieldViolation("resource_target", "required: a service name, service/<name> or instance/<id>"))
    out.extend(_param_violations(req))
    if req.tail < 0:
        out.append(FieldViolation("tail", "must be >= 0 (0 means all lines)"))
    for name in ("since", "until"):
        try:
            parse_bound(getattr(req, name))
        except ValueError as e:
            out.append(FieldViolation(name, str(e)))
    if req.after_cursor:
        try:
            cursor.decode(req.after_cursor)
        except ValueError as e:
            out.append(FieldViolation("after_cursor", str(e)))
    return out


def _param_violations(req: logs_pb2.LogRequest) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if req.stream and req.stream not in STREAMS:
        out.append(FieldViolation("stream", 'must be "stdout", "stderr" or empty for both'))
    try:
        compile_filter(req.filter)
    except ValueError as e:
        out.append(FieldViolation("filter", str(e)))
    return out


VALIDATORS: dict[str, Any] = {"StreamLogs": _validate}


def _source(app_data_dir: Path, rec: Record) -> Source:
    data = rec.data
    inst = data.get("instance") or {}
    service = str(data.get("service") or inst.get("service_name") or "")
    name = str(inst.get("name") or (f"{service}-{data['index']}" if "index" in data else rec.name))
    log_dir = Path(data["log_dir"]) if data.get("log_dir") else app_data_dir / "instances" / rec.name
    return Source(rec.name, name, service, log_dir)


def _with_events(sources: list[Source], events: bool) -> list[Source]:
    if not events:
        return sources
    return [x for src in sources for x in (src, dataclasses.replace(src, file=EVENTS_NAME))]


def _instances_of(store: Store, data_dir: Path, ns: str, service: str) -> list[Source]:
    return [_source(data_dir, r) for r in iter_all(store, INSTANCE_KIND, ns) if r.data.get("service") == service]


def _find_instance(store: Store, ns: str, ident: str) -> Record | None:
    rec = store.get(INSTANCE_KIND, ns, ident)
    if rec is not None:
        return rec
    # Also accept the instance name (<service>-<index>), which is what people see.
    for r in iter_all(store, INSTANCE_KIND, ns):
        if (r.data.get("instance") or {}).get("name") == ident:
            return r
    return None


def resolve_target(store: Store, data_dir: Path, ns: str, target: str) -> tuple[str | None, list[Source]]:
    """(service name or None for a single instance, its sources); INVALID_ARGUMENT when unresolvable."""
    kind, sep, name = target.strip().partition("/")
    if not sep:
        kind, name = "", kind
    kind = {"svc": "service", "inst": "instance"}.get(kind, kind)
    if kind not in ("", "service", "instance") or not name:
        raise errors.invalid(("resource_target", f"invalid resource target: {target!r}"))
    if kind in ("", "service"):
        sources = _instances_of(store, data_dir, ns, name)
        if sources or store.get(SERVICE_KIND, ns, name) is not None:
            return name, sorted(sources, key=lambda s: s.instance_name)
    if kind in ("", "instance"):
        rec = _find_instance(store, ns, name)
        if rec is not None:
            return None, [_source(data_dir, rec)]
    raise errors.invalid(
        ("resource_target", f"invalid resource target: {target!r}: no such service or instance in namespace {ns!r}")
    )


def _level(content: str) -> str:
    low = content.lower()
    if "error" in low or "exception" in low or "failed" in low:
        return "error"
    if "warn" in low:
        return "warning"
    return "info"


def _response(e: Emitted, timestamps: bool) -> logs_pb2.LogResponse:
    ln = e.line
    return logs_pb2.LogResponse(
        service_name=e.source.service,
        instance_id=e.source.instance_id,
        instance_name=e.source.instance_name,
        timestamp=ln.ts,
        content=f"{ln.ts} {ln.line}" if timestamps else ln.line,
        stream=ln.stream,
        log_level=_level(ln.line),
        cursor=e.cursor,
        seq=ln.seq,
    )


class _Params:
    """The open stream's adjustable parameters."""

    def __init__(self, req: logs_pb2.LogRequest) -> None:
        self.follow = req.follow
        self.timestamps = req.timestamps
        self.selection = Selection(
            stream=req.stream,
            since_ns=parse_bound(req.since),
            until_ns=parse_bound(req.until),
            match=compile_filter(req.filter),
            events=req.show_events,
        )

    def update(self, req: logs_pb2.LogRequest) -> None:
        if _param_violations(req):
            # A bad update must not tear down a healthy stream: keep the current parameters.
            return
        self.follow = req.follow
        self.timestamps = req.timestamps
        self.selection.stream = req.stream
        self.selection.match = compile_filter(req.filter)
        self.selection.events = req.show_events


async def StreamLogs(requests: AsyncIterator[logs_pb2.LogRequest], ctx: CallContext) -> AsyncIterator[Any]:
    first = await anext(requests)
    store = ctx.deps.store
    data_dir = ctx.deps.config.data_path
    ns = first.namespace
    # Take the revision before listing so an instance created in between is seen by the watch.
    start_rev = store.current_revision()
    service, sources = resolve_target(store, data_dir, ns, first.resource_target)
    sources = _with_events(sources, first.show_events)
    params = _Params(first)
    positions = cursor.decode(first.after_cursor) if first.after_cursor else None
    stream = LogStream(params.selection, {s.key: s for s in sources}, positions)

    lines = _serve(stream, params, requests, store, ns, service, start_rev, data_dir, first.tail, first.show_events)
    try:
        async for item in lines:
            yield item
    finally:
        # Close explicitly: a cancelled client must stop the watch and file followers now, not at GC.
        await lines.aclose()
        stream.close()


async def _serve(
    stream: LogStream,
    params: _Params,
    requests: AsyncIterator[logs_pb2.LogRequest],
    store: Store,
    ns: str,
    service: str | None,
    start_rev: int,
    data_dir: Path,
    tail: int,
    events: bool,
) -> AsyncGenerator[logs_pb2.LogResponse, None]:
    for e in stream.history(tail):
        yield _response(e, params.timestamps)
    if not params.follow:
        return

    wake = asyncio.Event()

    async def read_updates() -> None:
        async for req in requests:
            if req.parameter_update:
                params.update(req)
                wake.set()

    retired: list[str] = []

    async def watch_instances() -> None:
        async for change in store.watch([INSTANCE_KIND], start_rev):
            if change.namespace != ns:
                continue
            if change.op == DELETED:
                if any(src.instance_id == change.name for src in stream.sources.values()):
                    retired.append(change.name)
                    wake.set()
                continue
            if change.data is None or change.data.get("service") != service:
                continue
            rec = Record(change.kind, change.namespace, change.name, change.data, change.revision, change.revision)
            for src in _with_events([_source(data_dir, rec)], events):
                stream.add_source(src)
            wake.set()

    def done() -> bool:
        until = params.selection.until_ns
        return not params.follow or (until is not None and time.time_ns() > until + UNTIL_GRACE_NS)

    tasks = [asyncio.create_task(read_updates())]
    if service is not None:
        tasks.append(asyncio.create_task(watch_instances()))
    try:
        async for batch in stream.follow(wake, done):
            for e in batch:
                yield _response(e, params.timestamps)
            # Replaced or deleted instances leave once drained, so long follows do not accumulate them.
            while retired:
                for e in stream.retire(retired.pop()):
                    yield _response(e, params.timestamps)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
