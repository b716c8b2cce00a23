"""The scheduler's view of node readiness, on a real store (SQLite) and the scheduler's own clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runed.controller.scheduler import Scheduler
from runed.core.config.schema import NodeConfig
from runed.model import objects
from runed.model.nodes import NODE, SCOPE
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
