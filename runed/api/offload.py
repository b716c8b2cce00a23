"""Handlers whose body is store work, run as one unit off the event loop (``Store.run``).

A handler that only reads and writes the store (no awaits of its own) is written as a plain
function and wrapped here: its whole body, transactions included, runs in one store worker, so a
slow store (a PostgreSQL round trip, a write waiting for the lock) never stalls the other calls on
the loop. Where the store runs inline (SQLite, see :mod:`runed.store.offload`) this adds nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

from runed.pipeline.context import CallContext

Req = TypeVar("Req")
Resp = TypeVar("Resp")


def offloaded(fn: Callable[[Req, CallContext], Resp]) -> Callable[[Req, CallContext], Awaitable[Resp]]:
    """The async handler that runs ``fn(req, ctx)`` as one unit of store work."""

    @functools.wraps(fn)
    async def handler(req: Req, ctx: CallContext) -> Resp:
        return await ctx.deps.store.run(fn, req, ctx)

    return handler
