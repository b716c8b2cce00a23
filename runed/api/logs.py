"""LogService: StreamLogs served straight from the instances' log files (no hop to the controller).

Filters: ``filter`` is a substring, or a regular expression when written ``/re/``. ``since`` and
``until`` take RFC 3339 or a duration meaning "that long ago" (``90s``, ``5m``, ``1h30m``).
``timestamps`` prefixes each content with its RFC 3339 timestamp (``timestamp`` is always set).
``stream`` limits to ``stdout`` or ``stderr``. ``show_events`` interleaves the instances' lifecycle
events (started, exited, restarting, probe failures, liveness kills), written by the controller to
``events.jsonl``, as lines whose ``stream`` is ``event`` (their ``seq`` counts events only);
``stream`` ``event`` asks for those events alone (the output files are then not read).
``show_logs`` and ``show_status`` are accepted and ignored: output is always shown.
``max_batch`` > 1 (fixed for the stream's life) sends up to that many lines per response in
``lines``; 0 or 1 keeps one line per response (see :mod:`runed.api.logs_wire`).
Every response carries a ``cursor``; a request with
``after_cursor`` continues right after it. A non-follow stream ends once its lines are sent; a
follow stream ends when the client cancels, when a ``parameter_update`` turns ``follow`` off, or
once ``until`` has passed. ``parameter_update`` messages may change follow, filter, stream,
timestamps and (when the stream started with them) show_events of the open stream.

A follow stream also ends when what it follows is gone: a service once it is deleted, an instance
once it is deleted or has stopped for good (stopped, exited, failed; already so when the stream
starts counts too). Its last lines come first, then a last ``event`` line saying why, with
``status`` {code 0, message: the reason, details: ["end_of_stream"]}.

Lines that log rotation removed before the stream read them (a cursor older than the retained
files, or a follower that fell behind) are not skipped silently: one ``event`` line stands in their
place, with ``status`` {code DATA_LOSS, details: ["missing_lines=<n>", "first_seq=<a>",
"last_seq=<b>"]}; its ``seq`` is the last missing one and its cursor resumes after them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from rune.api import logs_pb2
from runed.api import forward, lifetime, logs_remote
from runed.api.logs_wire import MAX_BATCH, end_response, pack, pack_json, wrap
from runed.core import errors
from runed.core.errors import FieldViolation
from runed.logs import cursor
from runed.logs.events import EVENTS_NAME
from runed.logs.stream import EVENT_STREAM, STREAMS, LogStream, Selection, Source, compile_filter
from runed.logs.timeparse import parse_bound
from runed.pipeline.context import CallContext
from runed.store.base import DELETED, Change, Record, Store, iter_all

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
    if not 0 <= req.max_batch <= MAX_BATCH:
        out.append(FieldViolation("max_batch", f"must be between 0 and {MAX_BATCH} (0 or 1: one line per response)"))
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
    if req.stream and req.stream not in (*STREAMS, EVENT_STREAM):
        out.append(
            FieldViolation(
                "stream", 'must be "stdout", "stderr", "event" (the lifecycle events alone) or empty for both'
            )
        )
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


def _wants_events(req: logs_pb2.LogRequest) -> bool:
    """Whether the stream reads the instances' lifecycle events (fixed for its life)."""
    return req.show_events or req.stream == EVENT_STREAM


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
    """(service name or None for a single instance, its sources).

    INVALID_ARGUMENT for a target of the wrong form, NOT_FOUND (as exec says) when nothing has that name.
    """
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
    raise errors.not_found(kind or "service or instance", name, ns)


class _Params:
    """The open stream's adjustable parameters."""

    def __init__(self, req: logs_pb2.LogRequest, json_ready: bool = False) -> None:
        self.follow = req.follow
        self.timestamps = req.timestamps
        # Fixed for the stream's life: a parameter update cannot change the message form.
        self.max_batch = req.max_batch
        # Lines as LogResponse, or as JsonBatch for an adapter that encodes JSON itself (the REST gateway).
        self.pack: Callable[..., Iterator[Any]] = pack_json if json_ready else pack
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
    start_rev = await store.run(store.current_revision)
    service, sources = await store.run(resolve_target, store, data_dir, ns, first.resource_target)
    where = await store.run(_nodes_of, store, ns, sources)
    if ctx.transport != forward.NODE_TRANSPORT:
        # Instances on other nodes: their nodes stream them (a call through the node channel never goes on).
        away = {n for n in where.values() if not forward.is_local(ctx, n)}
        if service is None and away:
            async for r in forward.stream(ctx, away.pop(), first, requests, logs_pb2.LogResponse):
                yield r
            return
        if service is not None:
            here = forward.here(ctx.deps.config.node)
            # A follow also hears the nodes that have none of its instances yet: they may get some.
            nodes = away | (set(await store.run(forward.remote_nodes, store, here)) if first.follow else set())
            if nodes:
                mine = [s for s in sources if forward.is_local(ctx, where[s.instance_id])]

                def parts(req: logs_pb2.LogRequest) -> list[logs_remote.Part]:
                    out = [_remote(ctx, n, req) for n in sorted(nodes)]
                    if here is not None:
                        out.append(lambda reqs: _local(reqs, ctx, req, service, mine, start_rev))
                    return out

                if not first.follow:
                    merged = logs_remote.history(parts(first), requests, first)
                elif first.tail > 0:
                    merged = logs_remote.tail_then_follow(parts, requests, first)
                else:
                    merged = logs_remote.merged(parts(first), requests, first.after_cursor)
                async for r in merged:
                    yield r
                return
    elif service is None and not forward.is_local(ctx, where[sources[0].instance_id]):
        raise errors.on_other_node(sources[0].instance_name, "")
    local = [s for s in sources if forward.is_local(ctx, where[s.instance_id])]
    # Only here, straight to the client: merged parts stay LogResponse (their cursors are rewritten).
    async for r in _local(requests, ctx, first, service, local, start_rev, ctx.json_ready):
        yield r


def _nodes_of(store: Store, ns: str, sources: list[Source]) -> dict[str, str]:
    """instance id -> the node that runs it."""
    out = {}
    for src in sources:
        rec = store.get(INSTANCE_KIND, ns, src.instance_id)
        out[src.instance_id] = forward.node_of(rec) if rec is not None else ""
    return out


def _remote(ctx: CallContext, node: str, first: logs_pb2.LogRequest) -> logs_remote.Part:
    def part(reqs: AsyncIterator[logs_pb2.LogRequest]) -> AsyncIterator[logs_pb2.LogResponse]:
        return forward.stream(ctx, node, first, reqs, logs_pb2.LogResponse)

    return part


async def _local(
    requests: AsyncIterator[logs_pb2.LogRequest],
    ctx: CallContext,
    first: logs_pb2.LogRequest,
    service: str | None,
    sources: list[Source],
    start_rev: int,
    json_ready: bool = False,
) -> AsyncIterator[Any]:
    """This host's instances of the target, read from their files (a service's new ones joining)."""
    store = ctx.deps.store
    data_dir = ctx.deps.config.data_path
    target = await store.run(_Target.of, store, first.namespace, service, sources)
    sources = _with_events(sources, _wants_events(first))
    params = _Params(first, json_ready)
    positions = cursor.decode(first.after_cursor) if first.after_cursor else None
    stream = LogStream(params.selection, {s.key: s for s in sources}, positions)

    def mine(rec: Record) -> bool:
        return forward.is_local(ctx, forward.node_of(rec))

    lines = _serve(stream, params, requests, store, target, start_rev, data_dir, first, mine)
    try:
        async for item in lines:
            yield item
    finally:
        # Close explicitly: a cancelled client must stop the watch and file followers now, not at GC.
        await lines.aclose()
        stream.close()


@dataclasses.dataclass
class _Target:
    """What a stream follows: a service (``service``), or one instance (``instance``); what may end it."""

    namespace: str
    service: str | None
    instance: Source | None
    followed: lifetime.Followed | None = None

    @classmethod
    def of(cls, store: Store, ns: str, service: str | None, sources: list[Source]) -> _Target:
        if service is None:
            inst = sources[0]
            return cls(ns, None, inst, lifetime.Followed(INSTANCE_KIND, ns, inst.instance_id, inst.instance_name))
        if store.get(SERVICE_KIND, ns, service) is None:
            # Leftover instances of a service already gone: followed as they come and go, nothing to end.
            return cls(ns, service, None)
        return cls(ns, service, None, lifetime.Followed.service(ns, service))

    def end(self, reason: str, stream: LogStream, timestamps: bool) -> logs_pb2.LogResponse:
        service = self.service or (self.instance.service if self.instance is not None else "")
        return end_response(reason, self.instance, service, cursor.encode(stream.pos), timestamps)


async def _serve(
    stream: LogStream,
    params: _Params,
    requests: AsyncIterator[logs_pb2.LogRequest],
    store: Store,
    target: _Target,
    start_rev: int,
    data_dir: Path,
    first: logs_pb2.LogRequest,
    mine: Callable[[Record], bool],
) -> AsyncGenerator[Any, None]:
    events = _wants_events(first)
    for r in params.pack(stream.history(first.tail), params.timestamps, params.max_batch):
        yield r
    if not params.follow:
        return
    ns, service, followed = target.namespace, target.service, target.followed
    if service is None and followed is not None:
        # An instance that has already stopped for good: its history was all there is to follow.
        reason = await store.run(followed.current, store)
        if reason is not None:
            yield wrap(target.end(reason, stream, params.timestamps), params.max_batch)
            return

    wake = asyncio.Event()

    async def read_updates() -> None:
        async for req in requests:
            if req.parameter_update:
                params.update(req)
                wake.set()

    retired: list[str] = []
    ended: list[str] = []

    def join(rec: Record) -> None:
        if not mine(rec):
            # Another node's instance: that node streams it.
            return
        for src in _with_events([_source(data_dir, rec)], events):
            stream.add_source(src)

    def track(change: Change) -> None:
        """A service's instances come and go: new ones join the stream, deleted ones leave it once drained."""
        if change.kind != INSTANCE_KIND or change.namespace != ns:
            return
        if change.op == DELETED:
            if any(src.instance_id == change.name for src in stream.sources.values()):
                retired.append(change.name)
                wake.set()
            return
        if change.data is None or change.data.get("service") != service:
            return
        join(Record(change.kind, change.namespace, change.name, change.data, change.revision, change.revision))
        wake.set()

    def instances_now() -> dict[str, Record]:
        return {r.name: r for r in iter_all(store, INSTANCE_KIND, ns) if r.data.get("service") == service}

    def resync(current: dict[str, Record]) -> None:
        """After a gap in the change log: the service's instances as they are now."""
        for rec in current.values():
            join(rec)
        retired.extend({src.instance_id for src in stream.sources.values()} - set(current))
        wake.set()

    async def watch_changes() -> None:
        async for change in lifetime.changes(store, [INSTANCE_KIND, SERVICE_KIND], start_rev):
            if change is None:
                if service is not None:
                    resync(await store.run(instances_now))
                reason = await store.run(followed.current, store) if followed is not None else None
            else:
                if service is not None:
                    track(change)
                reason = followed.see(change) if followed is not None else None
            if reason is not None:
                ended.append(reason)
                wake.set()
                return

    def done() -> bool:
        until = params.selection.until_ns
        return bool(ended) or not params.follow or (until is not None and time.time_ns() > until + UNTIL_GRACE_NS)

    tasks = [asyncio.create_task(read_updates())]
    if service is not None or followed is not None:
        tasks.append(asyncio.create_task(watch_changes()))
    try:
        async for batch in stream.follow(wake, done):
            for r in params.pack(batch, params.timestamps, params.max_batch):
                yield r
            # Replaced or deleted instances leave once drained, so long follows do not accumulate them.
            while retired:
                for r in params.pack(stream.retire(retired.pop()), params.timestamps, params.max_batch):
                    yield r
        if ended:
            # What it follows is gone: its last lines, then the reason, and the stream ends.
            while retired:
                for r in params.pack(stream.retire(retired.pop()), params.timestamps, params.max_batch):
                    yield r
            for r in params.pack(stream.poll(), params.timestamps, params.max_batch):
                yield r
            stream.close()
            yield wrap(target.end(ended[0], stream, params.timestamps), params.max_batch)
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
