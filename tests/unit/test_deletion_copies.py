"""A deletion waits for every node's copies, as the leading node's view of the other nodes shows them;
that view comes from its store watch, which may lag behind the store. On a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runed.controller.alarm import Alarm
from runed.controller.book import Book
from runed.controller.instance import Instance
from runed.controller.nodeview import NodeView
from runed.controller.operations import Operations
from runed.controller.status import StatusWriter
from runed.core.config.schema import NodeConfig
from runed.model import objects
from runed.store.base import Record
from runed.store.sqlite import SQLiteStore, open_store

NS = "default"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = open_store(tmp_path / "store")
    yield s
    s.close()


def _other_nodes_instance(store: SQLiteStore) -> None:
    data: dict[str, Any] = {
        "instance": {"id": "i1", "namespace": NS, "name": "web-0", "service_name": "web", "node_id": "n1"},
        "service": "web",
        "index": 0,
        "name": "web-0",
        "state": "RUNNING",
    }
    store.create(objects.INSTANCE, NS, "i1", data)


def _retire(insts: Iterable[Instance], reason: str, *, grace: float | None = None) -> None:
    # The leading node runs no copy of its own here: nothing of its own to stop.
    assert list(insts) == []


def test_a_deletion_is_not_completed_before_the_view_of_the_other_nodes_has_caught_up(
    store: SQLiteStore, tmp_path: Path
) -> None:
    view = NodeView(store, NodeConfig(id="n0"), tmp_path / "n0")
    view.load(store.current_revision())
    watched = store.current_revision()
    # Another node's copy is written, then the service's deletion: this node's watch has delivered neither.
    _other_nodes_instance(store)
    store.create(
        objects.DELETION_OPERATION, NS, "del-1", {"id": "del-1", "namespace": NS, "service_name": "web", "status": ""}
    )
    book = Book(store, tmp_path / "n0", owns=view.owns, echo_kinds=(objects.DELETION_OPERATION,))
    ops = Operations(
        store, book, _retire, StatusWriter(store, book.writes), Alarm(), copies=view.remote_of, known=view.knows
    )

    def advance() -> dict[str, Any]:
        op = store.get(objects.DELETION_OPERATION, NS, "del-1")
        assert op is not None
        ops.run_deletions([op])
        rec: Record | None = store.get(objects.DELETION_OPERATION, NS, "del-1")
        assert rec is not None
        return rec.data

    # No copy seen, but the view has not come as far as the deletion: not completed with none deleted.
    assert advance().get("status") != "completed"

    # The watch delivers the changes in order; the deletion's own change is the one awaited.
    woken = [view.taken(c.revision) for c in store.changes_since(watched, [objects.INSTANCE]) if view.on_change(c)]
    assert woken == [False]
    assert any(view.taken(c.revision) for c in store.changes_since(watched, [objects.DELETION_OPERATION]))
    data = advance()
    assert data["status"] == "deleting-instances"
    assert (data["total_instances"], data["deleted_instances"]) == (1, 0)

    # The other node stops its copy: now the deletion completes, counting it.
    after = store.current_revision()
    store.delete(objects.INSTANCE, NS, "i1")
    for c in store.changes_since(after, [objects.INSTANCE]):
        view.on_change(c)
        view.taken(c.revision)
    data = advance()
    assert data["status"] == "completed"
    assert (data["total_instances"], data["deleted_instances"]) == (1, 1)
