"""Which scaling and deletion operations a reconcile pass reads: the open ones and those written since,
not the finished ones (every one at first, after a missed change, and once a minute), on a real
SQLite store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runed.controller.passinput import OPERATIONS_RESYNC_SECONDS, OpenOperations, read_input
from runed.model import objects
from runed.store.sqlite import SQLiteStore, open_store

NS = "default"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = open_store(tmp_path)
    yield s
    s.close()


def _deletion(store: SQLiteStore, name: str, status: str) -> tuple[str, str, str]:
    data: dict[str, Any] = {"id": name, "namespace": NS, "service_name": name, "status": status}
    store.create(objects.DELETION_OPERATION, NS, name, data)
    return (objects.DELETION_OPERATION, NS, name)


def _scaling(store: SQLiteStore, name: str, status: str | None) -> tuple[str, str, str]:
    data: dict[str, Any] = {"id": name, "service": "web", "target_scale": 2}
    if status is not None:
        data["status"] = status
    store.create(objects.SCALING_OPERATION, NS, name, data)
    return (objects.SCALING_OPERATION, NS, name)


def _names(got: Any) -> set[str]:
    return {r.name for r in (*got.deletions, *got.scalings)}


def test_a_changed_pass_reads_the_open_operations_and_those_written_not_the_finished(store: SQLiteStore) -> None:
    for i in range(50):
        _deletion(store, f"done-{i}", "completed" if i % 2 else "failed")
        _scaling(store, f"scaled-{i}", ("completed", "failed", "cancelled")[i % 3])
    _deletion(store, "deleting", "deleting-instances")
    _scaling(store, "pending", None)
    ops = OpenOperations()

    # The first pass reads every operation, and keeps those still open.
    full = read_input(store, None, [], [], operations=ops.take(full=True))
    ops.read(full)
    assert len(full.deletions) == 51 and len(full.scalings) == 51
    assert ops.open == {(objects.DELETION_OPERATION, NS, "deleting"), (objects.SCALING_OPERATION, NS, "pending")}

    # Written since (the controller's watch adds them): read with the open ones, no finished one.
    ops.changed.add(_deletion(store, "new", objects.DELETION_INITIALIZING))
    changed = read_input(store, {(NS, "web")}, [], [], operations=ops.take(full=False))
    ops.read(changed)
    assert _names(changed) == {"deleting", "new", "pending"}
    assert {r.name for r in changed.deletions} == {"deleting", "new"}

    # One that finished is read once more (its change), then no more.
    store.update(objects.DELETION_OPERATION, NS, "deleting", lambda cur: {**(cur or {}), "status": "completed"})
    ops.changed.add((objects.DELETION_OPERATION, NS, "deleting"))
    ops.read(read_input(store, {(NS, "web")}, [], [], operations=ops.take(full=False)))
    assert _names(read_input(store, {(NS, "web")}, [], [], operations=ops.take(full=False))) == {"new", "pending"}


def test_every_operation_is_read_at_first_after_a_missed_change_and_once_a_minute(store: SQLiteStore) -> None:
    """The safety net: the pass after the watch may have missed a change reads the finished
    operations too, and a full pass (an idle controller's, every few seconds) once
    OPERATIONS_RESYNC_SECONDS passed, not each time."""
    _deletion(store, "done", "completed")
    ops = OpenOperations()
    assert ops.take(full=False) == "all"  # the first pass, whichever it is
    assert ops.take(full=True) == set()  # a full pass soon after: the open ones (none)
    ops.changed.add((objects.DELETION_OPERATION, NS, "new"))
    assert ops.take(full=False) == {(objects.DELETION_OPERATION, NS, "new")}
    ops.missed()  # the watch missed changes, or that pass could not read what it took
    assert ops.take(full=False) == "all"  # the next pass, whichever it is
    assert ops.take(full=True) == set()
    # As if the last read of every operation was that long ago.
    ops.all_read = time.monotonic() - OPERATIONS_RESYNC_SECONDS
    assert ops.take(full=True) == "all"
    got = read_input(store, None, [], [], operations="all")
    assert {r.name for r in got.deletions} == {"done"}


def test_an_operation_whose_record_is_gone_is_not_open_any_more(store: SQLiteStore) -> None:
    ops = OpenOperations()
    key = _deletion(store, "deleting", "deleting-instances")
    ops.read(read_input(store, None, [], [], operations=ops.take(full=True)))
    assert ops.open == {key}
    # Its namespace was deleted with it, say.
    store.delete(*key)
    ops.read(read_input(store, {(NS, "web")}, [], [], operations=ops.take(full=False)))
    assert ops.open == set()


def test_a_controller_that_does_not_lead_reads_no_operation(store: SQLiteStore) -> None:
    _deletion(store, "deleting", "deleting-instances")
    _scaling(store, "pending", None)
    for only in (None, {(NS, "web")}):
        got = read_input(store, only, [], [], operations=None)
        assert got.deletions == [] and got.scalings == []
