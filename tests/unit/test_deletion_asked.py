"""A deletion's instances are stopped first in the pass after the controller's watch brings its
operation (``Controller._stop_deleted``), with the grace period the deletion's advance uses; on a
real SQLite store and book."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rune.api import service_pb2
from runed.controller.alarm import Alarm
from runed.controller.book import Book
from runed.controller.instance import Instance
from runed.controller.operations import Operations
from runed.controller.status import StatusWriter
from runed.model import objects
from runed.store.sqlite import SQLiteStore, open_store

NS = "default"

Retired = list[tuple[list[str], str, float | None]]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = open_store(tmp_path / "store")
    yield s
    s.close()


def _operations(store: SQLiteStore, tmp_path: Path) -> tuple[Operations, Retired]:
    """Operations over a book holding web-0..2 and api-0, whose stops are recorded in the list returned."""
    book = Book(store, tmp_path / "instances", echo_kinds=(objects.DELETION_OPERATION,))
    for name, index in (("web", 0), ("web", 1), ("web", 2), ("api", 0)):
        svc = service_pb2.Service(name=name, namespace=NS)
        book.save(Instance.new(svc, NS, 1, index, f"{name}-{index}-id", tmp_path / "instances" / f"{name}-{index}-id"))
    retired: Retired = []

    def retire(insts: Iterable[Instance], reason: str, *, grace: float | None = None) -> None:
        retired.append((sorted(i.name for i in insts), reason, grace))

    return Operations(store, book, retire, StatusWriter(store, book.writes), Alarm()), retired


def _op(**data: Any) -> dict[str, Any]:
    return {"id": "delete-web", "namespace": NS, "service_name": "web", "status": "initializing", **data}


@pytest.mark.parametrize(("grace", "expected"), [(7, 7.0), (0, 0.0), (None, None)], ids=["7s", "now", "default"])
def test_the_instances_of_a_deletion_just_asked_for_are_stopped_with_its_grace_period(
    store: SQLiteStore, tmp_path: Path, grace: int | None, expected: float | None
) -> None:
    ops, retired = _operations(store, tmp_path)
    data = _op() if grace is None else _op(grace_period=grace)
    ops.deletion_asked(NS, data)
    assert retired == [(["web-0", "web-1", "web-2"], "service deleted", expected)]

    # The pass that advances it stops them with the same grace period (a stop under way is not
    # signalled again: Supervisor.retire_all).
    rec = store.create(objects.DELETION_OPERATION, NS, "delete-web", data)
    ops.run_deletions([rec])
    assert retired[1] == retired[0]


def test_a_finished_deletion_or_another_namespace_s_stops_nothing_here(store: SQLiteStore, tmp_path: Path) -> None:
    ops, retired = _operations(store, tmp_path)
    for status in objects.DELETION_DONE:
        ops.deletion_asked(NS, _op(status=status))
    ops.deletion_asked("other", _op(namespace="other"))
    assert retired == [([], "service deleted", None)]
