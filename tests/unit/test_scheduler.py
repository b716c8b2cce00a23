"""The scheduler's view of node readiness, on a real store (SQLite) and the scheduler's own clock."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rune.api import service_pb2
from runed.controller.scheduler import Scheduler
from runed.core.config.schema import NodeConfig
from runed.model import objects
from runed.model.nodes import NODE, PLACEMENT, SCOPE, Placement
from runed.store.base import Store
from runed.store.open import open_url
from tests.support import Clock

CFG = NodeConfig(not_ready_seconds=20.0, lost_after_seconds=30.0)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_url(f"sqlite://{tmp_path / 'runed.db'}")
    s.put(NODE, SCOPE, "n2", {"address": "10.0.0.2", "beat": 7})
    # An instance placed on it: its record says when the node is lost.
    s.put(objects.INSTANCE, "default", "i-1", {"reason": "", "instance": {"node_id": "n2"}})
    yield s
    s.close()


def ready(store: Store) -> bool:
    rec = store.get(NODE, SCOPE, "n2")
    assert rec is not None
    return bool(rec.data.get("ready", True))


def reason(store: Store) -> str:
    rec = store.get(objects.INSTANCE, "default", "i-1")
    assert rec is not None
    return str(rec.data.get("reason", ""))


def beat(store: Store) -> None:
    store.update(NODE, SCOPE, "n2", lambda cur: None if cur is None else {**cur, "beat": int(cur["beat"]) + 1})


def test_a_quiet_node_goes_not_ready_and_ready_again_when_it_beats(store: Store) -> None:
    clock = Clock()
    sched = Scheduler(store, CFG, clock=clock)
    sched.schedule()
    assert ready(store)
    clock.now += CFG.not_ready_seconds + 1
    sched.schedule()
    assert not ready(store)
    beat(store)
    sched.schedule()
    assert ready(store)


def test_a_scheduler_that_takes_over_keeps_a_not_ready_node_not_ready_until_it_beats(store: Store) -> None:
    """A new leader's scheduler has not seen the node beat: first sight is no heartbeat. It used to
    call the node Ready at once (a node cut off came back as Ready, and DeleteNode refused it)."""
    clock = Clock()
    first = Scheduler(store, CFG, clock=clock)
    first.schedule()
    clock.now += CFG.not_ready_seconds + 1
    first.schedule()
    assert not ready(store)
    # Leadership moves (or is lost and taken again): a scheduler of its own, with nothing seen.
    second = Scheduler(store, CFG, clock=clock)
    second.schedule()
    assert not ready(store)
    clock.now += 1
    second.schedule()
    assert not ready(store)
    # Quiet on: lost once NotReady for lost_after_seconds on this scheduler's clock.
    clock.now += CFG.lost_after_seconds - 2
    second.schedule()
    assert reason(store) == ""
    clock.now += 2
    second.schedule()
    assert reason(store).startswith("Lost: node n2")
    beat(store)
    second.schedule()
    assert ready(store)


class CountingScheduler(Scheduler):
    """The scheduler, its passes counted."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, CFG)
        self.passes = 0
        self.passed = asyncio.Event()

    def schedule(self) -> None:
        super().schedule()
        self.passes += 1
        self.passed.set()


def put_service(store: Store, scale: int, **extra: Any) -> None:
    svc = service_pb2.Service(name="web", namespace="default", scale=scale, runtime="process")
    svc.process.command = "sleep"
    store.put(objects.SERVICE, "default", "web", objects.service_record_data(svc, generation=scale, **extra))


def slots(store: Store) -> int | None:
    rec = store.get(PLACEMENT, "default", "web")
    return None if rec is None else len(Placement.from_record(rec.data).slots)


def test_the_scheduler_passes_on_what_moves_a_placement_not_on_a_deletion_mark(store: Store) -> None:
    """A service's change wakes the scheduler only when it can move the placement (it came or went,
    its scale, node selector or requests changed). DeleteService's mark on the record used to wake
    it: a pass over every placed slot, in the middle of the deletion's stops."""
    asyncio.run(_passes(store))


async def _passes(store: Store) -> None:
    sched = CountingScheduler(store)
    stop = asyncio.Event()
    task = asyncio.create_task(sched.run(stop))

    async def a_pass() -> None:
        sched.passed.clear()
        await asyncio.wait_for(sched.passed.wait(), 10)

    async def no_pass() -> None:
        sched.passed.clear()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(sched.passed.wait(), 1.0)

    try:
        await asyncio.wait_for(sched.passed.wait(), 10)  # the first pass
        put_service(store, 2)
        await a_pass()
        assert slots(store) == 2
        # What DeleteService marks, and an edit that places nothing differently: no pass.
        put_service(store, 2, deletion={"id": "delete-web", "requested_at": 1.0, "grace_period": 5})
        await no_pass()
        put_service(store, 2, change_cause="relabelled")
        await no_pass()
        put_service(store, 3)
        await a_pass()
        assert slots(store) == 3
        store.delete(objects.SERVICE, "default", "web")
        await a_pass()
        assert slots(store) is None
    finally:
        stop.set()
        sched.wake.set()
        await asyncio.wait_for(task, 10)
