"""The controller's queued record writes (``runed.controller.writes``) on a real SQLite store: a
long commit runs beside the event loop, and its records count as not stored until it is done."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from runed.controller.writes import LONG_COMMIT, Writes
from runed.store.sqlite import open_store


def test_a_long_commit_runs_beside_the_loop_and_its_records_stay_unstored_until_it_is_done(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    writes = Writes(store)
    entered, release = threading.Event(), threading.Event()
    threads: list[int] = []

    def slow(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        threads.append(threading.get_ident())
        entered.set()
        assert release.wait(10)
        return {"n": 1}

    async def scenario() -> None:
        for i in range(LONG_COMMIT):
            writes.put("instance", "default", f"i{i}", {"i": i})
        writes.update("service", "default", "web", slow)
        flushing = asyncio.create_task(writes.flush())
        # The loop goes on while the commit waits in its worker.
        while not entered.is_set():
            await asyncio.sleep(0.01)
        assert ("instance", "default", "i0") in writes
        assert ("service", "default", "web") in writes
        assert len(writes) == LONG_COMMIT + 1
        release.set()
        await flushing
        assert len(writes) == 0 and ("instance", "default", "i0") not in writes

    try:
        asyncio.run(scenario())
        assert threads and threads[0] != threading.get_ident()
        rec = store.get("service", "default", "web")
        assert rec is not None and rec.data == {"n": 1}
        assert store.get("instance", "default", f"i{LONG_COMMIT - 1}") is not None
    finally:
        release.set()
        store.close()


def test_a_short_commit_stays_on_the_loop_on_sqlite(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    writes = Writes(store)
    threads: list[int] = []

    def mark(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        threads.append(threading.get_ident())
        return {"n": 2}

    async def scenario() -> None:
        writes.update("service", "default", "web", mark)
        await writes.flush()

    asyncio.run(scenario())
    assert threads == [threading.get_ident()]
    rec = store.get("service", "default", "web")
    assert rec is not None and rec.data == {"n": 2}
    store.close()


def test_its_own_writes_of_an_echo_kind_are_told_apart_when_they_come_back(tmp_path: Path) -> None:
    """The controller's watch brings its own operation updates back: each is told once, by its
    record and revision; another writer's change, a mutation that changed nothing and a commit that
    failed are not."""
    store = open_store(tmp_path)
    op = ("deletion_operation", "default", "d1")
    store.put(*op, {"status": "initializing"})
    since = store.current_revision()
    writes = Writes(store, echo_kinds=["deletion_operation"])

    async def scenario() -> None:
        writes.update(*op, lambda cur: {**(cur or {}), "status": "deleting-instances"})
        writes.put("instance", "default", "i1", {"n": 1})  # not an echo kind
        await writes.flush()
        store.update(*op, lambda cur: {**(cur or {}), "by": "the API"})  # another writer
        writes.update(*op, lambda cur: None)  # changes nothing: no revision of its own
        await writes.flush()

    try:
        asyncio.run(scenario())
        changes = store.changes_since(since, ["deletion_operation", "instance"])
        assert [(c.kind, c.name) for c in changes] == [(op[0], "d1"), ("instance", "i1"), (op[0], "d1")]
        own, theirs = changes[0], changes[2]
        assert not writes.echo(op, theirs.revision - 1000)  # an older change: not its own
        assert writes.echo(op, own.revision)
        assert not writes.echo(op, own.revision)  # told once
        assert not writes.echo(op, theirs.revision)
        assert not writes.echo(("instance", "default", "i1"), changes[1].revision)

        # A commit that fails leaves no revision behind: the next writer may take it.
        def boom(cur: dict[str, Any] | None) -> dict[str, Any] | None:
            raise OSError("disk full")

        async def failing() -> None:
            writes.update(*op, lambda cur: {**(cur or {}), "status": "completed"})
            writes.update("service", "default", "web", boom)
            await writes.flush()

        asyncio.run(failing())
        assert op in writes  # still queued, retried by the next flush
        assert not writes.echo(op, store.current_revision() + 1)

        # A watch resumed from a revision never brings back what was written up to it.
        fresh = Writes(store, echo_kinds=["deletion_operation"])
        fresh.update(*op, lambda cur: {**(cur or {}), "n": 1})
        asyncio.run(fresh.flush())
        first = store.current_revision()
        fresh.drop_echoes(first - 1)
        assert fresh.echo(op, first)  # after the resume: still told
        fresh.update(*op, lambda cur: {**(cur or {}), "n": 2})
        asyncio.run(fresh.flush())
        second = store.current_revision()
        fresh.drop_echoes(second)
        assert not fresh.echo(op, second)
    finally:
        store.close()


def test_lingering_deletions_wait_for_each_other_unless_another_write_wants_a_commit(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    writes = Writes(store)
    names = [f"i{i}" for i in range(6)]
    for n in names:
        store.put("instance", "default", n, {"n": n})
    since = store.current_revision()

    def stored() -> set[str]:
        return {n for n in names if store.get("instance", "default", n) is not None}

    async def scenario() -> None:
        # Two batches a few loop turns apart: neither is committed on its own.
        writes.delete_all([("instance", "default", n) for n in names[:2]], linger=1.0)
        await asyncio.sleep(0.02)
        assert stored() == set(names)
        writes.delete_all([("instance", "default", n) for n in names[2:4]], linger=1.0)
        await asyncio.sleep(0.02)
        assert stored() == set(names)
        # Committed together once the first one's linger is over.
        for _ in range(500):
            if stored() == set(names[4:]):
                break
            await asyncio.sleep(0.01)
        assert stored() == set(names[4:])
        # A write that lingers for nothing takes a lingering deletion with it at once.
        writes.delete_all([("instance", "default", names[4])], linger=60)
        writes.put("service", "default", "web", {"n": 1})
        for _ in range(50):
            if not writes:
                break
            await asyncio.sleep(0.01)
        assert stored() == {names[5]}
        assert store.get("service", "default", "web") is not None

    try:
        asyncio.run(scenario())
        deleted = [c for c in store.changes_since(since, ["instance"]) if c.op == "DELETED"]
        assert [c.name for c in deleted] == names[:5]
        # The first four in one transaction (one time stamp), the fifth in another.
        assert len({c.ts for c in deleted[:4]}) == 1
        assert deleted[4].ts > deleted[0].ts
    finally:
        store.close()


def test_a_flush_that_took_everything_leaves_no_scheduled_flush_to_end_a_linger_early(tmp_path: Path) -> None:
    """A write schedules a flush for the loop's next turn; a flush awaited before it (the end of a
    pass) takes the write. The scheduled one must not then take the lingering deletions queued
    next (a deletion's last ends held back for the pass they rush)."""
    store = open_store(tmp_path)
    writes = Writes(store)
    names = [f"i{i}" for i in range(3)]
    for n in names:
        store.put("instance", "default", n, {"n": n})

    def stored() -> set[str]:
        return {n for n in names if store.get("instance", "default", n) is not None}

    async def scenario() -> None:
        writes.put("service", "default", "web", {"n": 1})
        await writes.flush()
        assert store.get("service", "default", "web") is not None
        writes.delete_all([("instance", "default", n) for n in names], linger=60)
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert stored() == set(names), "the lingering deletions were committed by a flush nobody needed"
        # The next write that wants a commit takes them with it.
        writes.put("service", "default", "web", {"n": 2})
        await writes.flush()
        assert stored() == set()

    try:
        asyncio.run(scenario())
    finally:
        store.close()
