"""The store on both backends (a real SQLite file, a real PostgreSQL database): revisions, change log,
watch, concurrency across processes and threads. SQLite-only behaviour (WAL, a corrupt file) is
tested on SQLite alone; the PostgreSQL cases skip with the reason when no server is reachable.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from runed.core import errors
from runed.store.base import ADDED, DELETED, MODIFIED, Change, Record, Store, iter_all
from runed.store.open import open_url
from runed.store.postgres import PostgresStore
from runed.store.sqlite import SQLiteStore, open_store
from runed.store.sqlite.connection import CHECKPOINT_BYTES, PAGE_SIZE
from tests.pgsupport import pg_database, pg_url  # noqa: F401  (fixtures)
from tests.support import eventually


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store of each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'runed.db'}"
    from tests.pgsupport import reset_schema

    url: str = request.getfixturevalue("pg_database")
    reset_schema(url)
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_url(store_url)
    yield s
    s.close()


def _prunable(s: Store) -> SQLiteStore | PostgresStore:
    assert isinstance(s, SQLiteStore | PostgresStore)
    return s


def test_wal_and_migrations(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    mode = store.conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert store.schema_version() >= 1
    store.close()


def test_a_new_database_has_8k_pages_and_an_older_one_keeps_its_own(tmp_path: Path) -> None:
    """Larger pages make a deletion's commit cheaper (bench/README.md); a database made before
    with SQLite's 4 KiB pages opens as it is, its records intact (changing it would be a VACUUM)."""
    new = open_store(tmp_path / "new")
    assert new.conn.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 8192
    new.close()
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    conn = sqlite3.connect(old_dir / "runed.db")
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    old = open_store(old_dir)
    old.put("service", "default", "web", {"spec": {"scale": 1}})
    old.close()
    old = open_store(old_dir)
    assert old.conn.execute("PRAGMA page_size").fetchone()[0] == 4096
    rec = old.get("service", "default", "web")
    assert rec is not None and rec.data == {"spec": {"scale": 1}}
    old.close()


def test_freed_pages_are_not_written_again_only_to_be_zeroed(tmp_path: Path) -> None:
    """secure_delete FAST, whatever the SQLite build's default (Debian's is on: a deletion of a
    thousand instances' records spent half its statements and most of its commit zeroing pages)."""
    store = open_store(tmp_path)
    try:
        assert store.conn.execute("PRAGMA secure_delete").fetchone()[0] == 2  # FAST
    finally:
        store.close()


def test_a_read_does_not_wait_for_another_threads_transaction(tmp_path: Path) -> None:
    """A read while another thread holds the connection in a transaction (the controller's long
    commit beside its event loop) sees what was committed last, at once; the transaction's own
    reads see its writes; once it commits, every read does."""
    store = open_store(tmp_path)
    store.put("service", "default", "web", {"scale": 1})
    inside, release = threading.Event(), threading.Event()
    seen_inside: list[object] = []

    def long_commit() -> None:
        with store.transaction():
            store.put("service", "default", "web", {"scale": 2})
            store.put("service", "default", "api", {"scale": 1})
            rec = store.get("service", "default", "web")
            seen_inside.append(rec.data if rec else None)
            inside.set()
            assert release.wait(30)

    writer = threading.Thread(target=long_commit)
    writer.start()
    try:
        assert inside.wait(10)
        got: list[tuple[Record | None, int]] = []
        reader = threading.Thread(
            target=lambda: got.append((store.get("service", "default", "web"), store.count("service")))
        )
        reader.start()
        reader.join(5)
        assert not reader.is_alive(), "the read waited for the other thread's transaction"
        rec, count = got[0]
        assert rec is not None and rec.data == {"scale": 1} and count == 1
        assert seen_inside == [{"scale": 2}]
    finally:
        release.set()
        writer.join(10)
    rec = store.get("service", "default", "web")
    assert rec is not None and rec.data == {"scale": 2} and store.count("service") == 2
    store.close()


def test_checkpoints_run_beside_commits_not_in_them(tmp_path: Path) -> None:
    """A commit that takes the WAL past the threshold returns without copying it into the database
    (SQLite's automatic checkpoint did, with an fsync, on the committing thread: the controller's
    loop); a thread checkpoints it, and the WAL is cut back when it is reused."""
    store = open_store(tmp_path)
    db, wal = tmp_path / "runed.db", tmp_path / "runed.db-wal"
    before = db.stat().st_size
    pad = "x" * 4000
    with store.transaction():
        for i in range(1500):
            store.put("instance", "default", f"i{i}", {"pad": pad})
    # Committed: all of it is in the WAL, none of it in the database file yet.
    assert wal.stat().st_size > CHECKPOINT_BYTES
    assert db.stat().st_size == before
    eventually(lambda: db.stat().st_size > 1500 * 4000, timeout=10, what="the checkpoint, in a thread")

    def reused() -> bool:
        # Once the checkpoint is complete, the next write starts the WAL over, cut back.
        store.put("instance", "default", "after", {"pad": "small"})
        assert wal.stat().st_size < CHECKPOINT_BYTES, wal.stat().st_size
        return True

    eventually(reused, timeout=10, what="the WAL cut back")
    assert store.count("instance") == 1501
    store.close()


def test_schema_is_created_on_first_open(store: Store) -> None:
    assert _prunable(store).schema_version() >= 1
    assert store.current_revision() == 0 and store.oldest_revision() == 0


def test_revisions_are_global_and_monotonic(store: Store) -> None:
    a = store.create("service", "default", "a", {"v": 1})
    b = store.create("secret", "default", "b", {"v": 1})
    a2 = store.put("service", "default", "a", {"v": 2})
    assert a.revision < b.revision < a2.revision
    assert a2.created_revision == a.revision
    assert store.current_revision() == a2.revision
    ops = [(c.kind, c.name, c.op) for c in store.changes_since(0)]
    assert ops == [("service", "a", ADDED), ("secret", "b", ADDED), ("service", "a", MODIFIED)]


def test_delete_many_deletes_what_exists_in_order_as_deletes_do(store: Store) -> None:
    for i in range(5):
        store.put("instance", "default", f"i{i}", {"v": i})
    store.put("instance", "other", "i0", {"v": "other"})
    store.put("instance_action", "default", "i3", {"restart_seq": 1})
    since = store.current_revision()
    # Over more than one chunk of keys, with keys that name nothing in between.
    keys = [("instance", "default", f"i{i}") for i in (4, 0, 2)] + [
        ("instance_action", "default", f"i{i}") for i in range(5)
    ]
    keys += [("instance", "default", f"nothing{i}") for i in range(700)] + [("instance", "default", "i1")]
    keys += [("instance", "default", "i0")]  # named twice: deleted, and logged, once
    with store.transaction():
        store.delete_many(keys)
    changes = store.changes_since(since)
    assert [(c.kind, c.name, c.op, c.data) for c in changes] == [
        ("instance", "i4", DELETED, {"v": 4}),
        ("instance", "i0", DELETED, {"v": 0}),
        ("instance", "i2", DELETED, {"v": 2}),
        ("instance_action", "i3", DELETED, {"restart_seq": 1}),
        ("instance", "i1", DELETED, {"v": 1}),
    ]
    # Only what was named went: the same name in another namespace, and i3, stay.
    assert sorted((r.namespace, r.name) for r in store.list("instance").items) == [("default", "i3"), ("other", "i0")]
    assert store.list("instance_action").items == []


def test_changes_can_leave_out_what_a_deletion_deleted(store: Store) -> None:
    """A reader that needs only a deletion's key (the controller, whose own deletions come back
    through its watch) gets it without the record's data; every other change keeps its data."""
    since = store.current_revision()
    store.put("instance", "default", "a", {"v": 1})
    store.put("instance", "default", "a", {"v": 2})
    store.put("service", "default", "s", {"v": 3})
    with store.transaction():
        store.delete_many([("instance", "default", "a"), ("service", "default", "s")])
    keyed = [(c.kind, c.name, c.op, c.data) for c in store.changes_since(since, deletion_data=False)]
    assert keyed == [
        ("instance", "a", ADDED, {"v": 1}),
        ("instance", "a", MODIFIED, {"v": 2}),
        ("service", "s", ADDED, {"v": 3}),
        ("instance", "a", DELETED, None),
        ("service", "s", DELETED, None),
    ]
    # By default, and in the stored log, the deletions keep the object as it was.
    assert [c.data for c in store.changes_since(since)][3:] == [{"v": 2}, {"v": 3}]

    async def first_deletion() -> Change:
        async for c in store.watch(["service"], since, deletion_data=False):
            if c.op == DELETED:
                return c
        raise AssertionError("unreachable")

    got = asyncio.run(asyncio.wait_for(first_deletion(), 10))
    assert (got.name, got.data) == ("s", None)


def test_create_twice_is_already_exists(store: Store) -> None:
    store.create("service", "default", "a", {})
    with pytest.raises(errors.AlreadyExists):
        store.create("service", "default", "a", {})


def test_expect_revision_guards_lost_updates(store: Store) -> None:
    r = store.create("service", "default", "a", {"v": 1})
    store.put("service", "default", "a", {"v": 2}, expect_revision=r.revision)
    with pytest.raises(errors.Conflict):
        store.put("service", "default", "a", {"v": 3}, expect_revision=r.revision)
    got = store.get("service", "default", "a")
    assert got is not None and got.data == {"v": 2}


def test_failed_transaction_leaves_nothing(store: Store) -> None:
    rev = store.current_revision()
    with pytest.raises(RuntimeError), store.transaction():
        store.put("service", "default", "a", {"v": 1})
        raise RuntimeError("boom")
    assert store.get("service", "default", "a") is None
    assert store.current_revision() == rev


def test_namespaces_do_not_collide_by_prefix(store: Store) -> None:
    store.put("service", "default", "a", {})
    store.put("service", "default2", "b", {})
    assert [r.name for r in store.list("service", "default").items] == ["a"]


def test_pagination_visits_everything_once(store: Store) -> None:
    for i in range(25):
        store.put("service", f"ns{i % 3}", f"s{i:02d}", {"i": i})
    page = store.list("service", limit=10)
    assert len(page.items) == 10 and page.next_cursor
    names = [r.name for r in iter_all(store, "service", page=7)]
    assert sorted(names) == [f"s{i:02d}" for i in range(25)]
    assert len(names) == len(set(names))


def test_index_key_lookup(store: Store) -> None:
    store.put("token", "", "t1", {"user": "root"}, index_key="hash-1")
    rec = store.get_by_index("token", "hash-1")
    assert rec is not None and rec.name == "t1"
    with pytest.raises(errors.AlreadyExists):
        store.put("token", "", "t2", {}, index_key="hash-1")


def test_update_is_atomic_read_modify_write(store: Store) -> None:
    store.put("counter", "", "c", {"n": 0})
    for _ in range(10):
        store.update("counter", "", "c", lambda d: {"n": (d or {"n": 0})["n"] + 1})
    rec = store.get("counter", "", "c")
    assert rec is not None and rec.data == {"n": 10}
    # Returning None leaves the object untouched (no change logged).
    rev = store.current_revision()
    store.update("counter", "", "c", lambda d: None)
    assert store.current_revision() == rev


def _increment_many(url: str, n: int) -> None:
    s = open_url(url)
    for _ in range(n):
        s.update("counter", "", "c", lambda d: {"n": (d or {"n": 0})["n"] + 1})
    s.close()


def test_concurrent_processes_do_not_lose_updates(store: Store, store_url: str) -> None:
    store.put("counter", "", "c", {"n": 0})
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_increment_many, args=(store_url, 50)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rec = store.get("counter", "", "c")
    assert rec is not None and rec.data == {"n": 150}


def test_concurrent_writers_never_let_a_reader_skip_a_revision(store: Store, store_url: str) -> None:
    """Writers in several threads (each its own store and connections) race while a reader follows
    the change log with changes_since(last): every revision the log ends up holding was seen, in
    order. A revision committed after a higher one (a sequence's behaviour) would be skipped."""
    writers, per_writer = 4, 60
    failures: list[BaseException] = []

    def write(i: int) -> None:
        s = open_url(store_url)
        try:
            for j in range(per_writer):
                with s.transaction():
                    s.put("service", "default", f"w{i}-{j % 5}", {"j": j})
                    # Work between taking the revision and committing widens the window a
                    # commit-order bug needs.
                    s.get("service", "default", f"w{(i + 1) % writers}-0")
                    s.put("secret", "default", f"w{i}", {"j": j})
        except BaseException as e:
            failures.append(e)
        finally:
            s.close()

    seen: list[int] = []
    reader = open_url(store_url)
    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    last = 0
    while True:
        done = all(not t.is_alive() for t in threads)
        for c in reader.changes_since(last):
            assert c.revision > last, f"revision {c.revision} after {last}"
            seen.append(c.revision)
            last = c.revision
        if done:
            break
    for t in threads:
        t.join()
    assert not failures, failures
    logged = [c.revision for c in reader.changes_since(0, limit=1_000_000)]
    reader.close()
    assert len(logged) == writers * per_writer * 2
    assert seen == logged, f"the reader skipped {sorted(set(logged) - set(seen))[:10]}"


def test_watch_delivers_in_order_and_resumes(store: Store, store_url: str) -> None:
    other = open_url(store_url)  # a second connection, as another process has

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


def test_watch_from_compacted_revision_fails_loudly(store_url: str) -> None:
    s = open_url(store_url, changelog_keep=5)
    for i in range(20):
        s.put("service", "default", f"s{i}", {})
    _prunable(s).prune_changelog()
    assert s.oldest_revision() == 16

    async def first() -> None:
        async for _ in s.watch(["service"], 1):
            return

    with pytest.raises(errors.FailedPrecondition, match="re-list"):
        asyncio.run(first())
    s.close()


def test_changed_since_sees_its_kinds_and_a_pruned_log(store_url: str) -> None:
    """``changed_since`` (what decides that a kept list page still holds): only changes of the given
    kinds after the revision count, and a change log pruned past the revision counts as changed."""
    s = open_url(store_url, changelog_keep=5)
    try:
        assert not s.changed_since(0, ["instance"]), "an empty store has not changed"
        s.put("instance", "default", "i0", {})
        seen = s.current_revision()
        assert s.changed_since(seen - 1, ["instance"]) and not s.changed_since(seen, ["instance"])
        s.put("service", "default", "s0", {})
        assert not s.changed_since(seen, ["instance"]), "another kind's write"
        assert s.changed_since(seen, ["instance", "service"])
        s.delete("instance", "default", "i0")
        assert s.changed_since(seen, ["instance"]), "a deletion"
        # Past a prune: the log no longer says what changed after `seen`, so everything may have.
        seen = s.current_revision()
        for i in range(20):
            s.put("service", "default", f"s{i}", {})
        _prunable(s).prune_changelog()
        assert s.oldest_revision() > seen + 1
        assert s.changed_since(seen, ["instance"])
        assert not s.changed_since(s.current_revision(), ["instance"])
    finally:
        s.close()


def test_a_kept_list_page_holds_until_one_of_its_kinds_changes(store: Store) -> None:
    """``listing.Pages``: the same page again is the kept one, with the store's current revision, until
    a write of one of its kinds (or a pruned log) makes it read again; other kinds' writes do not."""
    from runed.api import listing
    from runed.store import paging

    pages = listing.Pages(("instance",))
    reads: list[int] = []

    def read(revision: int) -> paging.Page[bytes]:
        reads.append(revision)
        res = store.list("instance", "default")
        return paging.Page([r.name.encode() for r in res.items], "", revision)

    store.put("instance", "default", "a", {})
    first = pages.page(store, "q", read)
    assert first.items == [b"a"] and reads == [store.current_revision()]
    again = pages.page(store, "q", read)
    assert again.items == [b"a"] and again.revision == first.revision and len(reads) == 1
    # A write of another kind: the kept page, at the new revision.
    store.put("service", "default", "s", {})
    moved = pages.page(store, "q", read)
    assert moved.items == [b"a"] and moved.revision == store.current_revision() and len(reads) == 1
    # Another query is a page of its own.
    pages.page(store, "other", read)
    assert len(reads) == 2
    # A write of the page's kind: read again.
    store.put("instance", "default", "b", {})
    assert pages.page(store, "q", read).items == [b"a", b"b"] and len(reads) == 3
    store.delete("instance", "default", "a")
    assert pages.page(store, "q", read).items == [b"b"] and len(reads) == 4
    assert pages.page(store, "q", read).items == [b"b"] and len(reads) == 4


def test_kept_list_pages_hold_a_bounded_number_of_items(store: Store) -> None:
    """The kept pages of a store hold at most ``items`` items together: the oldest page leaves first, and a
    page larger than that is never kept."""
    from runed.api import listing
    from runed.store import paging

    reads: list[str] = []

    def reader(key: str, size: int) -> Callable[[int], paging.Page[bytes]]:
        def read(revision: int) -> paging.Page[bytes]:
            reads.append(key)
            return paging.Page([b"x"] * size, "", revision)

        return read

    pages = listing.Pages(("instance",), items=3)
    pages.page(store, "a", reader("a", 2))
    pages.page(store, "a", reader("a", 2))
    assert reads == ["a"]
    pages.page(store, "b", reader("b", 1))
    pages.page(store, "a", reader("a", 2))
    assert reads == ["a", "b"], "3 items fit"
    pages.page(store, "c", reader("c", 1))
    pages.page(store, "b", reader("b", 1))
    pages.page(store, "c", reader("c", 1))
    assert reads == ["a", "b", "c"], "the oldest page (a) left, b and c stayed"
    pages.page(store, "a", reader("a", 2))
    assert reads == ["a", "b", "c", "a"]
    pages.page(store, "big", reader("big", 4))
    pages.page(store, "big", reader("big", 4))
    assert reads[-2:] == ["big", "big"], "a page over the budget is read every time"


def test_unopenable_database_is_a_clear_error(tmp_path: Path) -> None:
    from runed.store.sqlite import StoreError

    bad = tmp_path / "runed.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot"):
        SQLiteStore(bad)
    assert sqlite3.sqlite_version


def test_unreachable_postgresql_is_a_clear_error() -> None:
    from runed.store.sqlite import StoreError

    # Port 1 on loopback: nothing listens there.
    with pytest.raises(StoreError, match=r"cannot open database postgresql://nobody@127\.0\.0\.1:1/x"):
        open_url("postgresql://nobody@127.0.0.1:1/x")


def test_audit_and_meta(store: Store) -> None:
    from runed.store.base import AuditEntry

    for who in ("alice", "bob", "alice"):
        store.audit(AuditEntry(who, "M", "service", "get", "default", "a", "OK", "OK", "rid", "peer"))
    got = store.list_audit(subject="alice")
    assert [e.subject for e in got] == ["alice", "alice"] and got[0].id < got[1].id
    assert [e.subject for e in store.list_audit(since_id=got[0].id)] == ["bob", "alice"]
    assert store.meta_get("k") is None
    store.meta_set("k", "1")
    store.meta_set("k", "2")
    assert store.meta_get("k") == "2"


def test_list_pages_in_byte_order(store: Store) -> None:
    for name in ("b", "B", "a", "_x", "a-b", "ab"):
        store.put("service", "default", name, {})
    names = [r.name for r in iter_all(store, "service", page=2)]
    assert names == sorted(names) == ["B", "_x", "a", "a-b", "ab", "b"]


def test_get_at_is_the_object_as_it_was_at_a_revision(store: Store) -> None:
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


def test_postgresql_commit_wakes_another_stores_watchers(pg_url: str) -> None:  # noqa: F811
    """A commit NOTIFYs: a listener on another connection is woken, not left to its safety poll."""
    from runed.store.postgres.notify import PgNotifier

    writer = PostgresStore(pg_url, notify=False)
    listener = PgNotifier(pg_url)

    async def scenario() -> tuple[bool, bool]:
        quiet = await listener.wait(0.2)  # nothing committed yet
        waiting = asyncio.create_task(listener.wait(30))
        writer.put("service", "default", "a", {})
        return quiet, await waiting

    try:
        assert asyncio.run(scenario()) == (False, True)
    finally:
        listener.close()
        writer.close()


def test_a_commit_while_the_watcher_reads_the_log_wakes_it(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watcher arms its wake-up before it reads the change log: another connection's commit
    landing during that read (its NOTIFY or datagram arriving before the watcher waits) ends the
    wait at once. Without a safety poll to fall back on, a lost wake-up would never end it."""
    from runed.store import core

    monkeypatch.setattr(core, "SAFETY_POLL_SECONDS", 3600.0)
    watcher, writer = open_url(store_url), open_url(store_url)
    real = watcher.changes_since
    reads = 0

    def racing(
        revision: int, kinds: Sequence[str] | None = None, limit: int = core.WATCH_BATCH, *, deletion_data: bool = True
    ) -> list[Change]:
        nonlocal reads
        reads += 1
        got = real(revision, kinds, limit, deletion_data=deletion_data)
        # Reads 1 and 3 find nothing (the watcher has waited once before the third: it listens);
        # the commit comes before the watcher gets to wait.
        if reads in (1, 3):
            assert got == []
            writer.put("service", "default", f"commit-{reads}", {})
        return got

    monkeypatch.setattr(watcher, "changes_since", racing)

    async def two() -> list[str]:
        names: list[str] = []
        async with asyncio.timeout(30):
            async for c in watcher.watch(["service"], 0):
                names.append(c.name)
                if len(names) == 2:
                    return names
        raise AssertionError("the watch ended")

    try:
        assert asyncio.run(two()) == ["commit-1", "commit-3"]
    finally:
        watcher.close()
        writer.close()


def test_postgresql_connections_keep_alive(pg_url: str) -> None:  # noqa: F811
    """Pooled and listening connections alike send TCP keepalives and bound unacknowledged sends, so a
    server gone silent (a host powered off, a cut link) is noticed within seconds, not hours."""
    import os
    import socket

    store = PostgresStore(pg_url)
    try:
        assert store.notifier is not None
        listening = store.notifier._conn
        assert listening is not None
        with store._pool.connection() as pooled:
            for conn in (pooled, listening):
                s = socket.socket(fileno=os.dup(conn.fileno()))
                try:
                    assert s.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
                    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
                    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
                    assert s.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 10_000
                finally:
                    s.close()  # a duplicate of the connection's descriptor
    finally:
        store.close()


def test_a_writer_cut_off_in_a_transaction_does_not_hold_every_write(pg_url: str) -> None:  # noqa: F811
    """A host that goes silent holding the revision row lock (a cut link mid-transaction) stalls every
    other host's writes only until the server drops its session, not until TCP notices (hours)."""
    import psycopg

    from runed.store.postgres.pool import CONNECT_KWARGS, IDLE_IN_TRANSACTION_MS

    store = PostgresStore(pg_url, notify=False)
    silent = psycopg.connect(pg_url, options=str(CONNECT_KWARGS["options"]))  # runed's session settings
    try:
        silent.execute("SELECT value FROM revision WHERE id = 1 FOR UPDATE")  # then says nothing more
        started = time.monotonic()
        store.put("configmap", "default", "after-the-cut", {"data": {"k": "v"}})
        waited = time.monotonic() - started
        assert waited >= IDLE_IN_TRANSACTION_MS / 1000 * 0.8, waited  # it did wait on the lock...
        assert store.get("configmap", "default", "after-the-cut") is not None  # ...and then wrote
        with pytest.raises(psycopg.Error, match="idle-in-transaction timeout"):
            silent.execute("SELECT 1")  # the server ended the silent session
    finally:
        silent.close()
        store.close()


def test_a_list_with_known_rows_reads_only_what_it_does_not_hold(store: Store) -> None:
    """``known`` (the list pages' kept records): rows held at their revision come back as held, rows
    written since (or never held) are read and decoded; the page and its cursor are the same either way."""
    for i in range(5):
        store.put("instance", "default", f"i{i}", {"v": i})
    plain = store.list("instance", "default", limit=3)
    held = {(r.namespace, r.name, r.revision): r for r in plain.items}

    def known(ns: str, name: str, revision: int) -> Record | None:
        return held.get((ns, name, revision))

    got = store.list("instance", "default", limit=3, known=known)
    assert [r.name for r in got.items] == ["i0", "i1", "i2"] and got.next_cursor == plain.next_cursor
    assert all(a is b for a, b in zip(got.items, plain.items, strict=True)), "held rows are the held records"
    # A row rewritten since: its new revision is read and decoded, the others still come as held.
    store.put("instance", "default", "i1", {"v": "new"})
    got = store.list("instance", "default", limit=3, known=known)
    assert [r.data["v"] for r in got.items] == [0, "new", 2]
    assert got.items[0] is plain.items[0] and got.items[1] is not plain.items[1]
    assert got.next_cursor == plain.next_cursor
    # The last page (no row beyond it) and a page of everything.
    rest = store.list("instance", "default", after=("default", "i2"), limit=3, known=known)
    assert [r.name for r in rest.items] == ["i3", "i4"] and rest.next_cursor == ""
    everything = store.list("instance", "default", known=known)
    assert [(r.name, r.data["v"]) for r in everything.items] == [(f"i{i}", "new" if i == 1 else i) for i in range(5)]


def test_audit_records_are_pruned_to_the_newest(store_url: str) -> None:
    """The audit table keeps the newest ``audit_keep`` records: pruned every PRUNE_EVERY audit writes,
    by whichever process writes them, and never growing for as long as runed runs."""
    from runed.store.base import AuditEntry
    from runed.store.core import PRUNE_EVERY

    s = open_url(store_url, audit_keep=5)
    try:

        def entry(i: int) -> AuditEntry:
            return AuditEntry(
                subject="root",
                method="/m",
                resource="r",
                verb="get",
                namespace="default",
                name=f"n{i}",
                outcome="ok",
                code="OK",
                request_id=f"r{i}",
                peer="127.0.0.1",
            )

        for i in range(PRUNE_EVERY - 1):
            s.audit(entry(i))
        assert len(s.list_audit(limit=PRUNE_EVERY)) == PRUNE_EVERY - 1  # not yet
        s.audit(entry(PRUNE_EVERY - 1))
        kept = s.list_audit(limit=PRUNE_EVERY)
        assert [e.name for e in kept] == [f"n{i}" for i in range(PRUNE_EVERY - 5, PRUNE_EVERY)]
        # Pruning again keeps them; paging from an id below the oldest kept starts at the oldest kept.
        _prunable(s).prune_audit()
        assert [e.name for e in s.list_audit(since_id=1)] == [e.name for e in kept]
    finally:
        s.close()


def test_a_change_read_from_the_log_decodes_its_data_when_first_read() -> None:
    raw = '{"state": "RUNNING", "n": [1, 2]}'
    lazy = Change.encoded(7, "instance", "default", "i1", MODIFIED, raw, 1.5)
    plain = Change(7, "instance", "default", "i1", MODIFIED, {"state": "RUNNING", "n": [1, 2]}, 1.5)
    assert lazy._raw == raw and lazy._data is None, "nothing decoded before data is read"
    assert lazy == plain and repr(lazy) == repr(plain)
    assert lazy.data is lazy.data, "decoded once"
    assert Change.encoded(8, "instance", "default", "i1", DELETED, None, 2.0).data is None


def test_a_write_behind_another_process_lock_gives_up_after_the_busy_timeout(tmp_path: Path) -> None:
    """``store.sqlite_busy_timeout_seconds``: how long a write waits for another's lock (10 s by default)."""
    s = SQLiteStore(tmp_path / "runed.db", notify=False, busy_timeout=0.3)
    other = sqlite3.connect(str(tmp_path / "runed.db"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        t0 = time.monotonic()
        with pytest.raises(errors.StoreUnavailable):
            s.put("service", "default", "a", {"n": 1})
        assert time.monotonic() - t0 < 5.0, "gave up after the configured timeout, not the default 10 s"
        other.execute("ROLLBACK")
        s.put("service", "default", "a", {"n": 1})
        got = s.get("service", "default", "a")
        assert got is not None and got.data == {"n": 1}
    finally:
        other.close()
        s.close()
