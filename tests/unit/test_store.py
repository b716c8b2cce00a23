"""The SQLite store on a real file: revisions, change log, watch, concurrency across processes."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from runed.core import errors
from runed.store.base import ADDED, DELETED, MODIFIED, iter_all
from runed.store.sqlite import SQLiteStore, open_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = open_store(tmp_path)
    yield s
    s.close()


def test_wal_and_migrations(store: SQLiteStore) -> None:
    mode = store.conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert store.schema_version() >= 1


def test_revisions_are_global_and_monotonic(store: SQLiteStore) -> None:
    a = store.create("service", "default", "a", {"v": 1})
    b = store.create("secret", "default", "b", {"v": 1})
    a2 = store.put("service", "default", "a", {"v": 2})
    assert a.revision < b.revision < a2.revision
    assert a2.created_revision == a.revision
    assert store.current_revision() == a2.revision
    ops = [(c.kind, c.name, c.op) for c in store.changes_since(0)]
    assert ops == [("service", "a", ADDED), ("secret", "b", ADDED), ("service", "a", MODIFIED)]


def test_create_twice_is_already_exists(store: SQLiteStore) -> None:
    store.create("service", "default", "a", {})
    with pytest.raises(errors.AlreadyExists):
        store.create("service", "default", "a", {})


def test_expect_revision_guards_lost_updates(store: SQLiteStore) -> None:
    r = store.create("service", "default", "a", {"v": 1})
    store.put("service", "default", "a", {"v": 2}, expect_revision=r.revision)
    with pytest.raises(errors.Conflict):
        store.put("service", "default", "a", {"v": 3}, expect_revision=r.revision)
    got = store.get("service", "default", "a")
    assert got is not None and got.data == {"v": 2}


def test_failed_transaction_leaves_nothing(store: SQLiteStore) -> None:
    rev = store.current_revision()
    with pytest.raises(RuntimeError), store.transaction():
        store.put("service", "default", "a", {"v": 1})
        raise RuntimeError("boom")
    assert store.get("service", "default", "a") is None
    assert store.current_revision() == rev


def test_namespaces_do_not_collide_by_prefix(store: SQLiteStore) -> None:
    store.put("service", "default", "a", {})
    store.put("service", "default2", "b", {})
    assert [r.name for r in store.list("service", "default").items] == ["a"]


def test_pagination_visits_everything_once(store: SQLiteStore) -> None:
    for i in range(25):
        store.put("service", f"ns{i % 3}", f"s{i:02d}", {"i": i})
    page = store.list("service", limit=10)
    assert len(page.items) == 10 and page.next_cursor
    names = [r.name for r in iter_all(store, "service", page=7)]
    assert sorted(names) == [f"s{i:02d}" for i in range(25)]
    assert len(names) == len(set(names))


def test_index_key_lookup(store: SQLiteStore) -> None:
    store.put("token", "", "t1", {"user": "root"}, index_key="hash-1")
    rec = store.get_by_index("token", "hash-1")
    assert rec is not None and rec.name == "t1"
    with pytest.raises(errors.AlreadyExists):
        store.put("token", "", "t2", {}, index_key="hash-1")


def test_update_is_atomic_read_modify_write(store: SQLiteStore) -> None:
    store.put("counter", "", "c", {"n": 0})
    for _ in range(10):
        store.update("counter", "", "c", lambda d: {"n": (d or {"n": 0})["n"] + 1})
    rec = store.get("counter", "", "c")
    assert rec is not None and rec.data == {"n": 10}
    # Returning None leaves the object untouched (no change logged).
    rev = store.current_revision()
    store.update("counter", "", "c", lambda d: None)
    assert store.current_revision() == rev


def _increment_many(path: str, n: int) -> None:
    s = SQLiteStore(Path(path))
    for _ in range(n):
        s.update("counter", "", "c", lambda d: {"n": (d or {"n": 0})["n"] + 1})
    s.close()


def test_concurrent_processes_do_not_lose_updates(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.put("counter", "", "c", {"n": 0})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_increment_many, args=(str(tmp_path / "runed.db"), 50)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rec = s.get("counter", "", "c")
    assert rec is not None and rec.data == {"n": 150}
    s.close()


def test_watch_delivers_in_order_and_resumes(store: SQLiteStore, tmp_path: Path) -> None:
    other = SQLiteStore(tmp_path / "runed.db")  # a second connection, as another process has

    async def scenario() -> list[tuple[int, str]]:
        got: list[tuple[int, str]] = []

        async def consume() -> None:
            async for c in other.watch(["service"], 0):
                got.append((c.revision, c.op))
                if len(got) == 3:
                    return

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.05)
        store.put("service", "default", "w", {"v": 1})
        store.put("secret", "default", "ignored", {})
        store.put("service", "default", "w", {"v": 2})
        store.delete("service", "default", "w")
        await asyncio.wait_for(task, 5)
        return got

    got = asyncio.run(scenario())
    assert [op for _, op in got] == [ADDED, MODIFIED, DELETED]
    # Resume after the first event: exactly the rest, no gaps or duplicates.
    rest = [c.op for c in other.changes_since(got[0][0], ["service"])]
    assert rest == [MODIFIED, DELETED]
    other.close()


def test_watch_from_compacted_revision_fails_loudly(tmp_path: Path) -> None:
    s = SQLiteStore(tmp_path / "runed.db", changelog_keep=5)
    for i in range(20):
        s.put("service", "default", f"s{i}", {})
    s.prune_changelog()

    async def first() -> None:
        async for _ in s.watch(["service"], 1):
            return

    with pytest.raises(errors.FailedPrecondition, match="re-list"):
        asyncio.run(first())
    s.close()


def test_unopenable_database_is_a_clear_error(tmp_path: Path) -> None:
    from runed.store.sqlite import StoreError

    bad = tmp_path / "runed.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot"):
        SQLiteStore(bad)
    assert sqlite3.sqlite_version


def test_get_at_is_the_object_as_it_was_at_a_revision(store: SQLiteStore) -> None:
    before = store.create("secret", "default", "other", {"v": 0}).revision
    a1 = store.create("service", "default", "a", {"scale": 1})
    store.create("service", "default", "b", {"scale": 9})
    a3 = store.put("service", "default", "a", {"scale": 3})
    gone = store.delete("service", "default", "a")
    assert gone is not None
    a2 = store.create("service", "default", "a", {"scale": 2})
    at = [store.get_at("service", "default", "a", rev) for rev in (before, a1.revision, a3.revision - 1)]
    assert [None if r is None else r.data["scale"] for r in at] == [None, 1, 1]
    assert store.get_at("service", "default", "a", a3.revision).data == {"scale": 3}  # type: ignore[union-attr]
    assert store.get_at("service", "default", "a", gone.revision) is None
    assert store.get_at("service", "default", "a", a2.revision + 5) == a2
