"""The stops of one deletion, finished together once the last of them ended (or a moment has passed).

Why: a deletion's instances end within a few milliseconds of each other, but their stops were
finished as they ended, over two or three passes, each followed by the pause after a costly pass
(``reconciler.PASS_PAUSE_RATIO``): a deletion of a thousand deleted its service 150-290 ms after
its last process ended, 90-160 ms now (bench/README.md, "a deletion's stops finished together").
Finished together, they are one pass, which comes as soon as the last one ended. Not for long:
once the group is older than its wait (an instance that ignores SIGTERM holds it until its grace
period ends), each member is finished as it ends, as a stop on its own is, so what ended does not
show as Stopping meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from runed.controller.alarm import Alarm


class StopGroup:
    """Counts the stop tasks of a group still under way; rushes the loop when none is."""

    def __init__(self, alarm: Alarm, wait: float) -> None:
        self.alarm = alarm
        self.left = 0
        self._until = time.monotonic() + wait
        # The pass that finishes what ended by then.
        alarm.due(time.time() + wait)

    def add(self, task: asyncio.Task[Any]) -> None:
        self.left += 1
        task.add_done_callback(self._ended)

    def _ended(self, _: asyncio.Task[Any]) -> None:
        self.left -= 1
        if not self.left:
            self.alarm.rush()
        elif self.overdue:
            self.alarm.wake()  # finished on its own (see the module's docstring)

    @property
    def overdue(self) -> bool:
        return time.monotonic() >= self._until

    @property
    def done(self) -> bool:
        """Whether its members are finished now: each ended, or the group waited long enough."""
        return not self.left or self.overdue
