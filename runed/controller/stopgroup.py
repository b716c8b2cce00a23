"""The stops of one deletion, run together: their ends come in batches, each finished at once.

Why: a deletion's instances end within a few milliseconds of each other. Stopped one by one, each
stop was a task, a reader and a timer in the event loop, and each end was finished in a pass, over
two or three passes, each followed by the pause after a costly pass
(``reconciler.PASS_PAUSE_RATIO``): a deletion of a thousand deleted its service 150-290 ms after
its last process ended. Now the runner stops them together (:meth:`Runner.stop_many`), each batch
of ends it reports is finished (its records' deletions queued, committed as they come) while the
rest are still ending, and the last end rushes the pass that deletes the service, with little left
to commit (bench/README.md, "ends in batches").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from runed.controller.alarm import Alarm
from runed.controller.instance import Key
from runed.runner.base import Observation

log = logging.getLogger("runed.controller")

# While members are still ending, the record deletions of those that ended are committed at most
# this often: the first ends of a deletion trickle in one or two at a time, each its own commit and
# wake-up of every watcher, before the rest come at once (bench/README.md).
ENDS_LINGER_SECONDS = 0.01
# The last end rushes a pass, which commits the last deletions with its own writes (the deletion of
# the service: one commit, not two in a row, 3-5 ms apart at the end of a deletion of a thousand);
# this only bounds the wait should no pass come.
LAST_LINGER_SECONDS = 0.1


class StopGroup:
    """The members' stops, as futures the runner's reports resolve; ``finish`` is called with the
    members that ended since it was last called, once per batch, and how long their records'
    deletions may wait to be committed with the next batch's (0 once none is left)."""

    def __init__(self, alarm: Alarm, finish: Callable[[list[Key], float], None]) -> None:
        self.alarm = alarm
        self.finish = finish
        self.left = 0
        self._members: list[tuple[Key, asyncio.Future[Observation]]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        # Members that ended since the last call of ``finish`` (None: no call is due).
        self._ended: list[Key] | None = None

    def members(self, keys: list[Key]) -> tuple[list[asyncio.Future[Observation]], Callable[[int, Observation], None]]:
        """The stops of ``keys``, and what resolves the i-th of them (a runner's ``ended``)."""
        loop = asyncio.get_running_loop()
        stops: list[asyncio.Future[Observation]] = [loop.create_future() for _ in keys]
        self._members.extend(zip(keys, stops, strict=True))
        self.left += len(keys)

        def ended(i: int, how: Observation) -> None:
            if not stops[i].done():
                stops[i].set_result(how)
                self._left_one(keys[i])

        return stops, ended

    def run(self, stops: Coroutine[Any, Any, None]) -> None:
        """Run the coroutine that resolves members (:meth:`Runner.stop_many`)."""
        task = asyncio.get_running_loop().create_task(stops)
        self._tasks.add(task)
        task.add_done_callback(self._ran)

    def _ran(self, task: asyncio.Task[Any]) -> None:
        """A stop that failed (a runner's bug) leaves no member stopping for ever: each member it
        did not resolve is over with its error."""
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        err = task.exception()
        log.warning("stopping %d instances failed: %s", sum(1 for _, f in self._members if not f.done()), err)
        for key, fut in self._members:
            if not fut.done():
                fut.set_exception(RuntimeError(f"the stop failed: {err}"))
                self._left_one(key)

    def _left_one(self, key: Key) -> None:
        self.left -= 1
        if self._ended is None:
            self._ended = []
            # Once the runner's batch is in: called once for all of it.
            asyncio.get_running_loop().call_soon(self._finish)
        self._ended.append(key)
        if not self.left:
            self.alarm.rush()

    def _finish(self) -> None:
        keys, self._ended = self._ended or [], None
        self.finish(keys, ENDS_LINGER_SECONDS if self.left else LAST_LINGER_SECONDS)
