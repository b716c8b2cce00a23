"""Store work off the event loop: ``await store.run(fn, *args)`` runs one unit of store work in a worker.

Why: the store is synchronous, and API handlers run on an event loop. With PostgreSQL every store
call is a network round trip (and a write may wait for another host's write lock), so a call made on
the loop stalls every other request of that process meanwhile. A unit is a whole piece of work (a
read, or a transaction with everything inside it): PostgreSQL transactions belong to the thread
that opened them, so a unit never spans two threads.

Workers: as many as the connection pool has connections, so a unit never queues for a connection
while holding a thread (more threads would only wait on the pool).

A long unit (:meth:`Offload.long`: a commit of hundreds of records) goes to a worker on SQLite too:
the hop costs microseconds next to its milliseconds, and SQLite leaves the interpreter while it
works, so the loop goes on meanwhile (the controller finishes the next stops of a deletion while
the last ones' records are deleted; bench/README.md, "commits beside the loop").

SQLite (a local file) otherwise stays inline. Measured by ``python -m bench store_offload`` (2-core machine
under load from parallel test runs; the ratios are what matters): ``store.get`` of one small object
costs 75 µs inline and 506 µs handed to a worker one at a time (x6.8: the hop, a future and a
loop wake-up cost far more than the read), 272 µs per call with 16 in flight (x3.6). Every REST and
gRPC call makes one to a few store calls, so hopping would cost SQLite users throughput for
nothing: a local read never waits on the network, and what an inline SQLite call can wait for is
another process's write lock, held for one short transaction. PostgreSQL goes through the workers:
each call is a round trip, and a write may wait unboundedly behind another host's lock (the same
bench: REST throughput while one write waits on a lock stays at 0.72 of the calm figure, where on
the loop it would be 0).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Offload:
    """Runs units of store work in a small thread pool (or inline, for a store that never waits on the network)."""

    def __init__(self, workers: int, *, inline: bool, name: str = "runed-store") -> None:
        self.inline = inline
        self._workers = workers
        self._name = name
        self._pool: ThreadPoolExecutor | None = None
        # Long units of an inline store: one worker (its connection is one, behind its lock).
        self._long: ThreadPoolExecutor | None = None

    async def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self.inline:
            return fn(*args, **kwargs)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=self._name)
        return await _in(self._pool, fn, *args, **kwargs)

    async def long(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """A long unit of work: in a worker, also for an inline store."""
        if not self.inline:
            return await self(fn, *args, **kwargs)
        if self._long is None:
            self._long = ThreadPoolExecutor(1, thread_name_prefix=f"{self._name}-long")
        return await _in(self._long, fn, *args, **kwargs)

    def close(self, *, wait: bool = False) -> None:
        """Let the workers go; ``wait``: until the unit in flight is done (before its connection closes)."""
        for pool in (self._pool, self._long):
            if pool is not None:
                pool.shutdown(wait=wait, cancel_futures=True)
        self._pool = self._long = None


async def _in(pool: ThreadPoolExecutor, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    # The caller's context variables (the current call, for log records) travel with the work.
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool, call)
