"""Leader election through the store: one holder of a named lease at a time, a standby takes over.

Why a lease record and compare-and-set, not an advisory lock or expiry timestamps: it works the same
on both stores (SQLite and PostgreSQL share ``put(expect_revision=...)``) and needs no agreement
between the hosts' clocks. Each side only measures durations on its own monotonic clock:

- the holder rewrites the record every ``ttl/3`` with ``put(expect_revision=<its last revision>)``;
  a refused write (someone else's revision) means it lost the lease;
- a holder whose last successful renewal *began* ``ttl * 3/4`` ago steps down (``ended`` is set)
  without waiting for the store to answer, a quarter ttl before any standby may take over;
- a standby takes the lease over (compare-and-set on the revision it saw) only after it has seen
  that same revision, unchanged, for a full ttl counted from *after* it read it. The holder's
  renewal began before that revision was committed, so the holder's own deadline always passes first.

Renewals run in a thread of their own, so a long synchronous pass on the event loop delays neither
a renewal nor the holder's notice of its own deadline. A clean exit releases the lease (deletes the
record), so a standby or a restart takes it at once instead of waiting a ttl.

Usage (the controller; a scheduler would do the same with its own lease name)::

    lease = Lease(store, "controller", holder_id(data_dir), ttl=10.0)
    async with lease.held(stop) as ended:   # waits until leader, or until ``stop``
        await work(until=ended)              # ``ended``: stop, or leadership lost
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from runed.core import errors
from runed.model import lease
from runed.model.lease import KIND, NAMESPACE, Holder
from runed.store.base import Store

log = logging.getLogger("runed.leader")

# The holder steps down this fraction of a ttl after its last successful renewal began.
RENEW_DEADLINE = 0.75


def holder_id(data_dir: Path) -> str:
    """This process as a lease holder: host, data dir (what it can adopt) and pid (this incarnation)."""
    return f"{socket.gethostname()}:{data_dir}:{os.getpid()}"


def runs_here(holder: str) -> bool:
    """Whether ``holder`` (a :func:`holder_id`) names a runed process running on this host now,
    other than this one: a predecessor that is alive, not a dead one a restart takes over from."""
    host, _, rest = holder.partition(":")
    pid = rest.rpartition(":")[2]
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"runed" in f.read()
    except OSError:
        return False


class Lease:
    """One named lease in the store, contended for by this process as ``holder``.

    Args:
        store: the shared store (renewals call it from a thread of their own).
        name: the lease's name ("controller"); each name elects its own leader.
        holder: this process's id (:func:`holder_id`); unique per incarnation.
        ttl: seconds; this process renews within a third of it and standbys wait a full one.
        claim_at_start: take the lease at the first attempt from a holder that no longer runs.
            Only right where no other host can share the store (SQLite): the earlier holder is
            then a dead process of this host, and waiting a ttl would only delay the restart. One
            that still runs (a second runed started on the same data dir) is waited for as on any
            store: taken from it, it stepped down and re-adopted everything when the newcomer
            stopped (on ports already in use, at once).
        clock: monotonic seconds (for tests of the timing).
    """

    def __init__(
        self,
        store: Store,
        name: str,
        holder: str,
        ttl: float,
        *,
        claim_at_start: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.claim_at_start = claim_at_start
        self.clock = clock
        self._lock = threading.Lock()
        # The revision of our own last write while we hold the lease (0: not held).
        self._revision = 0
        # When the last successful write (acquire or renewal) began, on our clock.
        self._renewed_at = 0.0
        # The other holder's revision we are waiting out, and when we first saw it.
        self._seen: tuple[int, float] | None = None
        self._attempts = 0

    # -- state ----------------------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """Whether this process holds the lease now (false once its renewal deadline has passed)."""
        with self._lock:
            return self._revision != 0 and self.clock() < self._renewed_at + self.ttl * RENEW_DEADLINE

    def current(self) -> Holder | None:
        """The lease's holder as stored (any host), or None when nobody holds it."""
        rec = self.store.get(KIND, NAMESPACE, self.name)
        return None if rec is None else Holder.from_record(rec)

    # -- one attempt (blocking: run in a thread) ------------------------------------------------
    def _write(self, expect: int) -> bool:
        began = self.clock()
        try:
            rec = self.store.put(KIND, NAMESPACE, self.name, lease.data(self.holder, self.ttl), expect_revision=expect)
        except errors.Conflict:
            return False
        with self._lock:
            self._revision, self._renewed_at, self._seen = rec.revision, began, None
        return True

    def claim(self) -> bool:
        """One attempt to become (or stay) the holder; True when this process holds the lease.

        Takes a free lease at once, and another holder's only when its revision has stood still for
        its full ttl since this process first saw it (or at the first attempt with ``claim_at_start``).
        """
        rec = self.store.get(KIND, NAMESPACE, self.name)
        seen_at = self.clock()
        self._attempts += 1
        if rec is None:
            return self._write(0)
        cur = Holder.from_record(rec)
        with self._lock:
            mine = self._revision != 0 and cur.revision == self._revision and cur.holder == self.holder
            if not mine:
                # Whatever this process held before, the record now says someone else holds it.
                self._revision = 0
        if mine:
            return self._write(cur.revision)
        if self.claim_at_start and self._attempts == 1 and not runs_here(cur.holder):
            return self._write(cur.revision)
        if self._seen is None or self._seen[0] != cur.revision:
            self._seen = (cur.revision, seen_at)
            return False
        if seen_at - self._seen[1] < max(cur.ttl, 0.0):
            return False
        log.warning("lease %s: %s did not renew within %gs; taking over", self.name, cur.holder, cur.ttl)
        return self._write(cur.revision)

    def release(self) -> None:
        """Give the lease up (delete the record if it is still ours), so a standby takes it at once."""
        with self._lock:
            rev, self._revision = self._revision, 0
        if rev:
            with contextlib.suppress(errors.Conflict):
                self.store.delete(KIND, NAMESPACE, self.name, expect_revision=rev)

    # -- holding --------------------------------------------------------------------------------
    def _keep(self, halt: threading.Event, lost: Callable[[], None]) -> None:
        """The renewal thread: renew every ttl/3 (sooner after a failure) until halted or lost.

        Each write runs in a worker of its own and is waited for only until the deadline: a store
        call that hangs (an unreachable database) must not hold the step-down back.
        """
        pool = ThreadPoolExecutor(1, thread_name_prefix=f"lease-{self.name}")
        wait = self.ttl / 3
        try:
            while True:
                with self._lock:
                    deadline = self._renewed_at + self.ttl * RENEW_DEADLINE
                    rev = self._revision
                if rev == 0 or self.clock() >= deadline:
                    break
                if halt.wait(max(0.0, min(wait, deadline - self.clock()))):
                    return
                if self.clock() >= deadline:
                    break
                future = pool.submit(self._write, rev)
                try:
                    ok = future.result(timeout=max(0.0, deadline - self.clock()))
                except Exception as e:
                    if not future.done():
                        break
                    log.warning("lease %s: renewal failed (%s); retrying", self.name, e)
                    wait = self.ttl / 10
                    continue
                if not ok:
                    log.warning("lease %s: another holder took the lease", self.name)
                    with self._lock:
                        self._revision = 0
                    break
                wait = self.ttl / 3
        finally:
            # A write still hanging is left to finish on its own; nobody waits for it.
            pool.shutdown(wait=False)
        if not halt.is_set():
            log.warning("lease %s: lost (no renewal within %gs); stepping down", self.name, self.ttl * RENEW_DEADLINE)
            lost()

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the lease (True) or ``stop`` is set (False)."""
        poll = min(max(self.ttl / 5, 0.05), 1.0)
        while not stop.is_set():
            try:
                if await self.store.run(self.claim):
                    log.info("lease %s: held by %s", self.name, self.holder)
                    return True
            except Exception as e:
                log.warning("lease %s: cannot read or write it (%s); retrying", self.name, e)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll):
                    await stop.wait()
        return False

    @contextlib.asynccontextmanager
    async def held(self, stop: asyncio.Event) -> AsyncIterator[asyncio.Event]:
        """Wait to hold the lease, then yield an event set when the body must end: on ``stop``, or
        when leadership is lost (the deadline passed without a renewal, or another holder took it).

        If ``stop`` comes first the event is already set on entry. On exit the lease is released.
        """
        ended = asyncio.Event()
        if not await self.acquire(stop):
            ended.set()
            yield ended
            return
        loop = asyncio.get_running_loop()
        halt = threading.Event()
        keeper = threading.Thread(
            target=self._keep,
            args=(halt, lambda: loop.call_soon_threadsafe(ended.set)),
            name=f"lease-{self.name}",
            daemon=True,
        )
        keeper.start()
        stopped = asyncio.create_task(stop.wait())
        stopped.add_done_callback(lambda _: ended.set())
        try:
            yield ended
        finally:
            stopped.cancel()
            halt.set()
            await asyncio.to_thread(keeper.join)
            try:
                # Bounded: an unreachable store must not hold up a stop (a standby then waits a ttl).
                async with asyncio.timeout(self.ttl):
                    await self.store.run(self.release)
            except Exception as e:
                log.warning("lease %s: cannot release it (%s); a standby takes it after its ttl", self.name, e)
