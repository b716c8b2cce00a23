"""The SQLite store when the disk is full: a clear StorageFull naming the data dir, nothing half-written, recovery.

SQLite's own page limit (``PRAGMA max_page_count``) makes it answer exactly as on a full disk
(SQLITE_FULL, "database or disk is full"), on a real file and without filling a filesystem.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from runed.core import errors
from runed.store.sqlite import SQLiteStore, open_store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = open_store(tmp_path)
    yield s
    s.close()


def _cap(store: SQLiteStore, extra_pages: int = 0) -> None:
    pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
    store.conn.execute(f"PRAGMA max_page_count = {pages + extra_pages}")


def test_a_full_disk_is_resource_exhausted_naming_the_data_dir(store: SQLiteStore, tmp_path: Path) -> None:
    kept = store.create("secret", "default", "kept", {"v": "1"})
    _cap(store)
    with pytest.raises(errors.StorageFull) as exc:
        store.create("secret", "default", "big", {"v": "x" * 200_000})
    assert exc.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert exc.value.http_status == 429
    assert str(tmp_path) in exc.value.message
    # Nothing half-written, no transaction left open (it would hold the write lock), reads work.
    assert not store.conn.in_transaction
    assert store.get("secret", "default", "big") is None
    assert store.get("secret", "default", "kept") == kept
    assert store.current_revision() == kept.revision
    # Other processes can still write (the lock was released) and see the same data.
    other = SQLiteStore(tmp_path / "runed.db", notify=False)
    try:
        assert other.get("secret", "default", "big") is None
        other.create("secret", "default", "from-another-process", {"v": "2"})
    finally:
        other.close()
    # Space returns: the same connection writes again.
    store.conn.execute("PRAGMA max_page_count = 1073741823")
    rec = store.create("secret", "default", "big", {"v": "x" * 200_000})
    assert store.get("secret", "default", "big") == rec


def test_a_full_disk_inside_a_nested_transaction_rolls_back_the_whole(store: SQLiteStore) -> None:
    _cap(store, extra_pages=2)
    with pytest.raises(errors.StorageFull):
        with store.transaction():
            store.put("secret", "default", "small", {"v": "1"})
            store.put("secret", "default", "big", {"v": "x" * 200_000})
    assert not store.conn.in_transaction
    assert store.get("secret", "default", "small") is None
    assert store.list("secret").items == []
