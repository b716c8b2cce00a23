"""When what a stream follows is gone: an instance or service deleted or stopped, read from the change log.

Exec sessions and log follows run in the API roles, which learn of deletions and stops only
through the store: :class:`Followed` reads the changes of one instance or service and says why the
stream must end; :func:`wait_end` waits for that. An exec session ends as soon as its instance is
being stopped (its command must not outlive the instance); a log follow of an instance ends once
the instance has stopped for good (stopped on request, exited without restart, failed), so the last
lines are read first, and a follow of a service once the service record is gone (after its
instances).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from runed.core import errors
from runed.model import objects
from runed.store.base import DELETED, Change, Record, Store

# Instance states as the controller stores them (the API does not import the controller).
STOPPING = "STOPPING"
STOPPED = "STOPPED"
EXITED = "EXITED"
FATAL = "FATAL"
# ``after_stop`` of a STOPPING record whose stop is for good (not a restart or a liveness back-off).
STOP_FOR_GOOD = "stopped"
# ``after_stop`` of a STOPPED record whose restart is due (the controller's next pass starts it).
RESTART_DUE = "restart"


@dataclass
class Followed:
    """One instance (by id) or service a stream follows, and the change that ends it.

    ``until_stopping``: end as soon as the instance is being stopped (exec), rather than once it
    has stopped for good (log follows).
    """

    kind: str
    namespace: str
    name: str
    label: str
    until_stopping: bool = False
    _stop_for_good: bool = field(default=False, init=False)

    @classmethod
    def instance(cls, rec: Record, *, until_stopping: bool = False) -> Followed:
        data = rec.data
        label = str(data.get("name") or (data.get("instance") or {}).get("name") or rec.name)
        return cls(objects.INSTANCE, rec.namespace, rec.name, label, until_stopping)

    @classmethod
    def service(cls, namespace: str, name: str) -> Followed:
        return cls(objects.SERVICE, namespace, name, name)

    def see(self, change: Change) -> str | None:
        """Why the stream ends with this change, or None (changes of other objects included)."""
        if change.kind != self.kind or change.namespace != self.namespace or change.name != self.name:
            return None
        if change.op == DELETED:
            return f"{self.kind} {self.label} was deleted"
        return self._state(change.data or {}, settled=False)

    def current(self, store: Store) -> str | None:
        """Why the stream ends given the stored object as it is now (at the start, or after a gap in the log)."""
        rec = store.get(self.kind, self.namespace, self.name)
        if rec is None:
            return f"{self.kind} {self.label} was deleted"
        return self._state(rec.data, settled=True)

    def _state(self, data: dict[str, Any], *, settled: bool) -> str | None:
        if self.kind != objects.INSTANCE:
            return None
        state = str(data.get("state") or "")
        why = str(data.get("reason") or "")
        detail = f" ({why})" if why else ""
        if self.until_stopping:
            return f"instance {self.label} is stopping{detail}" if state in (STOPPING, STOPPED) else None
        if state == STOPPING:
            # STOPPED follows; only a stop for good (not a restart) ends a follow there.
            self._stop_for_good = data.get("after_stop") == STOP_FOR_GOOD
            return None
        if state == STOPPED and data.get("after_stop") == RESTART_DUE:
            return None
        if state == STOPPED and (settled or self._stop_for_good):
            return f"instance {self.label} was stopped{detail}"
        self._stop_for_good = False
        if state == EXITED:
            return f"instance {self.label} exited{detail}"
        if state == FATAL:
            return f"instance {self.label} failed{detail}"
        return None


async def changes(store: Store, kinds: Sequence[str], since: int) -> AsyncIterator[Change | None]:
    """Every change to ``kinds`` after ``since``, forever; None when the change log was pruned past
    the reader (then it continues from the current revision, and the caller re-reads what it follows)."""
    while True:
        try:
            async for ch in store.watch(kinds, since):
                since = ch.revision
                yield ch
        except errors.FailedPrecondition:
            since = await store.run(store.current_revision)
            yield None


async def wait_end(store: Store, followed: Followed, since: int) -> str:
    """Wait, from revision ``since``, until ``followed`` ends; the reason."""
    async for ch in changes(store, [followed.kind], since):
        reason = await store.run(followed.current, store) if ch is None else followed.see(ch)
        if reason is not None:
            return reason
    raise AssertionError("unreachable: the change log never ends")  # pragma: no cover
