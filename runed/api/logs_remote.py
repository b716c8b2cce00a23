"""A service's log stream over several nodes: each node streams its own instances, merged here.

Every part gets the client's request (and, as they come, its parameter updates); each answers with
its instances' lines and cursors. Cursors name instances, so the merged cursor is the union of the
parts' positions (the highest seq per instance: a part resumed from a merged cursor repeats the
others' positions unchanged). Without ``follow`` (:func:`history`), every node's lines come in one
time order and ``tail`` counts over all of them, as it does over a node's own instances; a follow
(:func:`merged`) interleaves the nodes' lines as they arrive, and one with a ``tail``
(:func:`tail_then_follow`) starts with that history, so its tail counts over all nodes too. A
follow that ends (the service deleted) sends one end line, once every part has ended.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
from collections.abc import AsyncGenerator, AsyncIterator, Callable

from rune.api import logs_pb2
from runed.api.logs_wire import END_OF_STREAM
from runed.logs import cursor

Part = Callable[[AsyncIterator[logs_pb2.LogRequest]], AsyncIterator[logs_pb2.LogResponse]]
_DONE = object()


class _Fanout:
    """The client's further requests, copied to every part."""

    def __init__(self, n: int) -> None:
        self.queues: list[asyncio.Queue[logs_pb2.LogRequest | None]] = [asyncio.Queue() for _ in range(n)]

    async def pump(self, requests: AsyncIterator[logs_pb2.LogRequest]) -> None:
        try:
            async for req in requests:
                for q in self.queues:
                    q.put_nowait(req)
        finally:
            for q in self.queues:
                q.put_nowait(None)

    @staticmethod
    async def iterate(q: asyncio.Queue[logs_pb2.LogRequest | None]) -> AsyncIterator[logs_pb2.LogRequest]:
        while (req := await q.get()) is not None:
            yield req


def _is_end(line: logs_pb2.LogResponse) -> bool:
    return END_OF_STREAM in line.status.details


class _Cursor:
    def __init__(self, start: str) -> None:
        self.pos = cursor.decode(start) if start else {}

    def merge(self, text: str) -> str:
        if text:
            for key, seq in cursor.decode(text).items():
                if seq > self.pos.get(key, -1):
                    self.pos[key] = seq
        return cursor.encode(self.pos)


async def history(
    parts: list[Part], requests: AsyncIterator[logs_pb2.LogRequest], first: logs_pb2.LogRequest
) -> AsyncIterator[logs_pb2.LogResponse]:
    """The lines already written on every part, in time order (each part's own order kept), the last
    ``first.tail`` of them; each line's cursor merges the parts' positions in that order.

    The parts are merged as they stream (one line of each held), so a history without a tail never
    sits in memory whole; a tail holds its last ``tail`` lines.
    """
    fan = _Fanout(len(parts))
    pump = asyncio.create_task(fan.pump(requests))
    streams = [_lines(p, fan.iterate(q)) for p, q in zip(parts, fan.queues, strict=True)]
    try:
        ordered = _in_time_order(streams, _Cursor(first.after_cursor))
        if first.tail > 0:
            last: collections.deque[logs_pb2.LogResponse] = collections.deque(maxlen=first.tail)
            async for line in ordered:
                last.append(line)
            ordered = _each(last)
        batch: list[logs_pb2.LogResponse] = []
        async for line in ordered:
            if first.max_batch <= 1:
                yield line
                continue
            batch.append(line)
            if len(batch) == first.max_batch:
                yield logs_pb2.LogResponse(lines=batch, cursor=batch[-1].cursor)
                batch = []
        if batch:
            yield logs_pb2.LogResponse(lines=batch, cursor=batch[-1].cursor)
    finally:
        for st in streams:
            await st.aclose()
        await _cancel((pump,))


async def tail_then_follow(
    parts: Callable[[logs_pb2.LogRequest], list[Part]],
    requests: AsyncIterator[logs_pb2.LogRequest],
    first: logs_pb2.LogRequest,
) -> AsyncIterator[logs_pb2.LogResponse]:
    """A follow whose first ``first.tail`` lines are the last ones over every part (not that many of
    each): the tail as a :func:`history`, then every part followed from the cursor after it (with
    no tail: every line written since, none twice). ``parts`` makes the parts of a request."""
    head = logs_pb2.LogRequest()
    head.CopyFrom(first)
    head.follow = False
    at = first.after_cursor
    async for resp in history(parts(head), _no_requests(), head):
        at = resp.cursor or at
        yield resp
    rest = logs_pb2.LogRequest()
    rest.CopyFrom(first)
    rest.tail = 0
    rest.after_cursor = at
    async for resp in merged(parts(rest), requests, at):
        yield resp


async def _no_requests() -> AsyncIterator[logs_pb2.LogRequest]:
    """No further requests (a history's parts read none; the client's go to the follow after it)."""
    return
    yield  # an async generator that ends at once


async def _lines(part: Part, requests: AsyncIterator[logs_pb2.LogRequest]) -> AsyncGenerator[logs_pb2.LogResponse]:
    """Every line a part sends (batches taken apart), with the part's own cursor."""
    responses = part(requests)
    try:
        async for resp in responses:
            for line in resp.lines if resp.lines else [resp]:
                if not _is_end(line):
                    yield line
    finally:
        # Closed now, not when collected: a part's call or file followers end with the merge.
        close = getattr(responses, "aclose", None)
        if close is not None:
            await close()


async def _in_time_order(
    streams: list[AsyncGenerator[logs_pb2.LogResponse]], pos: _Cursor
) -> AsyncIterator[logs_pb2.LogResponse]:
    """The streams' lines merged by timestamp (ties and lines without one, such as gap markers, keep
    their stream's order); each line's cursor is rewritten to cover every line before it."""
    heads: list[tuple[str, int, logs_pb2.LogResponse]] = []
    for i, st in enumerate(streams):
        line = await anext(st, None)
        if line is not None:
            heapq.heappush(heads, (line.timestamp, i, line))
    while heads:
        when, i, line = heapq.heappop(heads)
        line.cursor = pos.merge(line.cursor)
        yield line
        following = await anext(streams[i], None)
        if following is not None:
            heapq.heappush(heads, (following.timestamp or when, i, following))


async def _each(lines: collections.deque[logs_pb2.LogResponse]) -> AsyncIterator[logs_pb2.LogResponse]:
    for line in lines:
        yield line


async def _cancel(tasks: tuple[asyncio.Task[object], ...]) -> None:
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(BaseException):
            await t


async def merged(
    parts: list[Part], requests: AsyncIterator[logs_pb2.LogRequest], after_cursor: str
) -> AsyncIterator[logs_pb2.LogResponse]:
    """The parts' responses as they come, cursors merged; their end lines held back to one at the end."""
    fan = _Fanout(len(parts))
    out: asyncio.Queue[tuple[logs_pb2.LogResponse | object, BaseException | None]] = asyncio.Queue()

    async def run(part: Part, q: asyncio.Queue[logs_pb2.LogRequest | None]) -> None:
        try:
            async for resp in part(fan.iterate(q)):
                await out.put((resp, None))
        except BaseException as e:  # handed to the consumer, which raises it
            await out.put((_DONE, e))
            return
        await out.put((_DONE, None))

    tasks = [asyncio.create_task(run(p, q)) for p, q in zip(parts, fan.queues, strict=True)]
    pump = asyncio.create_task(fan.pump(requests))
    pos = _Cursor(after_cursor)
    end: logs_pb2.LogResponse | None = None
    # An end line taken out of a batch goes back in one: the stream keeps the form it started with.
    batched = False
    try:
        active = len(tasks)
        while active:
            item, err = await out.get()
            if err is not None:
                raise err
            if item is _DONE:
                active -= 1
                continue
            assert isinstance(item, logs_pb2.LogResponse)
            resp = item
            if resp.lines:
                kept = [ln for ln in resp.lines if not _is_end(ln)]
                if len(kept) != len(resp.lines):
                    end = logs_pb2.LogResponse()
                    end.CopyFrom(next(ln for ln in resp.lines if _is_end(ln)))
                    batched = True
                    del resp.lines[:]
                    resp.lines.extend(kept)
                for ln in resp.lines:
                    ln.cursor = pos.merge(ln.cursor)
                if not resp.lines:
                    continue
                resp.cursor = resp.lines[-1].cursor
            elif _is_end(resp):
                end = resp
                continue
            else:
                resp.cursor = pos.merge(resp.cursor)
            yield resp
        if end is not None:
            end.cursor = pos.merge(end.cursor)
            yield logs_pb2.LogResponse(lines=[end], cursor=end.cursor) if batched else end
    finally:
        await _cancel((*tasks, pump))
