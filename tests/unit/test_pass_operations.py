"""Which scaling and deletion operations a reconcile pass reads: the open ones and those written since,
never the finished ones (every one in a full pass), on a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runed.controller.passinput import OpenOperations, read_input
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

    # A full pass reads every operation, and keeps those still open.
    full = read_input(store, None, [], [], operations=ops.take())
    ops.read(full)
    assert len(full.deletions) == 51 and len(full.scalings) == 51
    assert ops.open == {(objects.DELETION_OPERATION, NS, "deleting"), (objects.SCALING_OPERATION, NS, "pending")}

    # Written since (the controller's watch adds them): read with the open ones, no finished one.
    ops.changed.add(_deletion(store, "new", objects.DELETION_INITIALIZING))
    changed = read_input(store, {(NS, "web")}, [], [], operations=ops.take())
    ops.read(changed)
    assert _names(changed) == {"deleting", "new", "pending"}
    assert {r.name for r in changed.deletions} == {"deleting", "new"}

    # One that finished is read once more (its change), then no more.
    store.update(objects.DELETION_OPERATION, NS, "deleting", lambda cur: {**(cur or {}), "status": "completed"})
    ops.changed.add((objects.DELETION_OPERATION, NS, "deleting"))
    ops.read(read_input(store, {(NS, "web")}, [], [], operations=ops.take()))
    assert _names(read_input(store, {(NS, "web")}, [], [], operations=ops.take())) == {"new", "pending"}


def test_an_operation_whose_record_is_gone_is_not_open_any_more(store: SQLiteStore) -> None:
    ops = OpenOperations()
    key = _deletion(store, "deleting", "deleting-instances")
    ops.read(read_input(store, None, [], [], operations=ops.take()))
    assert ops.open == {key}
    # Its namespace was deleted with it, say.
    store.delete(*key)
    ops.read(read_input(store, {(NS, "web")}, [], [], operations=ops.take()))
    assert ops.open == set()


def test_a_controller_that_does_not_lead_reads_no_operation(store: SQLiteStore) -> None:
    _deletion(store, "deleting", "deleting-instances")
    _scaling(store, "pending", None)
    for only in (None, {(NS, "web")}):
        got = read_input(store, only, [], [], operations=None)
        assert got.deletions == [] and got.scalings == []
