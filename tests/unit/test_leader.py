"""The controller lease on a real store, with each contender's monotonic clock in the test's hands."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runed.controller.leader import RENEW_DEADLINE, Lease, holder_id, runs_here
from runed.model.lease import KIND, NAMESPACE
from runed.store.sqlite import SQLiteStore
from tests.support import Clock

TTL = 10.0


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "runed.db", notify=False)
    yield s
    s.close()


def contender(store: SQLiteStore, holder: str, clock: Clock, **kw: bool) -> Lease:
    return Lease(store, "controller", holder, TTL, clock=clock, **kw)


def test_a_free_lease_is_taken_and_a_held_one_only_after_a_full_ttl_without_renewal(store: SQLiteStore) -> None:
    ca, cb = Clock(), Clock()
    a, b = contender(store, "a", ca), contender(store, "b", cb)
    assert a.claim() and a.is_leader
    assert not b.claim()
    cb.now += TTL - 0.1
    assert not b.claim() and not b.is_leader
    # The leader renews: the standby starts counting again from the new revision.
    assert a.claim()
    cb.now += 0.2
    assert not b.claim()
    cb.now += TTL - 0.1
    assert not b.claim()
    cb.now += 0.1
    assert b.claim() and b.is_leader
    current = b.current()
    assert current is not None and current.holder == "b" and current.ttl == TTL
    # The old leader's next renewal is refused: someone else's revision.
    assert not a.claim()


def test_the_leader_counts_itself_out_before_a_standby_may_take_over(store: SQLiteStore) -> None:
    ca = Clock()
    a = contender(store, "a", ca)
    assert a.claim()
    ca.now += TTL * RENEW_DEADLINE - 0.01
    assert a.is_leader
    ca.now += 0.02
    assert not a.is_leader, "past its renewal deadline a leader steps down, a quarter ttl before any takeover"


def test_a_released_lease_is_taken_at_once(store: SQLiteStore) -> None:
    ca, cb = Clock(), Clock()
    a, b = contender(store, "a", ca), contender(store, "b", cb)
    assert a.claim() and not b.claim()
    a.release()
    assert not a.is_leader and store.get(KIND, NAMESPACE, "controller") is None
    assert b.claim()


def test_claim_at_start_takes_a_dead_predecessors_lease_at_the_first_attempt_only(store: SQLiteStore) -> None:
    ca, cb = Clock(), Clock()
    assert contender(store, "before-the-crash", ca).claim()
    restarted = contender(store, "restarted", cb, claim_at_start=True)
    assert restarted.claim()
    # Later attempts (after losing the lease) wait like any standby.
    other = contender(store, "other", ca)
    assert not other.claim()
    ca.now += TTL
    assert other.claim()
    assert not restarted.claim() and not restarted.is_leader


def test_claim_at_start_waits_for_a_predecessor_that_still_runs(store: SQLiteStore, tmp_path: Path) -> None:
    """A second runed started on the data dir of one that runs: its controller stands by, it does
    not take the lease from the live one (a dead one's it takes at once, above)."""
    host = socket.gethostname()
    # A live runed's stand-in (its command line names runed), and a live process that is not runed.
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "runed"])
    other = subprocess.Popen(["sleep", "60"])
    try:
        assert runs_here(f"{host}:{tmp_path}:{live.pid}")
        assert not runs_here(f"{host}:{tmp_path}:{other.pid}")  # a pid reused since by another program
        assert not runs_here(f"elsewhere:{tmp_path}:{live.pid}")
        assert not runs_here(holder_id(tmp_path))  # this process itself
        assert contender(store, f"{host}:{tmp_path}:{live.pid}", Clock()).claim()
        second = contender(store, holder_id(tmp_path), Clock(), claim_at_start=True)
        assert not second.claim() and not second.is_leader
        live.kill()
        live.wait()
        # Once it is gone, a start takes its lease at once.
        third = contender(store, f"{host}:{tmp_path}:1{os.getpid()}", Clock(), claim_at_start=True)
        assert third.claim()
    finally:
        for p in (live, other):
            p.kill()
            p.wait()


def test_held_yields_while_leading_and_ends_on_stop_releasing_the_lease(store: SQLiteStore) -> None:
    async def main() -> None:
        lease = Lease(store, "controller", "a", 1.0)
        stop = asyncio.Event()
        async with lease.held(stop) as ended:
            assert lease.is_leader and not ended.is_set()
            stop.set()
            await asyncio.wait_for(ended.wait(), 5)
        assert store.get(KIND, NAMESPACE, "controller") is None

    asyncio.run(main())


def test_held_ends_when_another_holder_takes_the_lease(store: SQLiteStore) -> None:
    async def main() -> None:
        lease = Lease(store, "controller", "a", 1.0)
        async with lease.held(asyncio.Event()) as ended:
            rec = store.get(KIND, NAMESPACE, "controller")
            assert rec is not None
            store.put(KIND, NAMESPACE, "controller", {"holder": "b", "ttl_seconds": 1.0}, expect_revision=rec.revision)
            # The next renewal (within a third of the ttl) is refused.
            await asyncio.wait_for(ended.wait(), 10)
            assert not lease.is_leader
        rec = store.get(KIND, NAMESPACE, "controller")
        assert rec is not None and rec.data["holder"] == "b", "the lease someone else holds is not released"

    asyncio.run(main())


def test_held_ends_when_the_leader_cannot_renew(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(tmp_path / "gone.db", notify=False)
        lease = Lease(store, "controller", "a", 1.0)
        async with lease.held(asyncio.Event()) as ended:
            # The store goes away under the leader: renewals fail until the deadline passes.
            store.close()
            await asyncio.wait_for(ended.wait(), 10)
            assert not lease.is_leader

    asyncio.run(main())
