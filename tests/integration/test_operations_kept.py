"""Finished deletion and scaling operations are kept for ``controller.finished_operations_seconds``
after they ended, then removed by the leading controller; recent and running ones stay."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import grpc
import pytest

from rune.api import service_pb2
from runed.model import objects
from runed.store.base import iter_all
from tests.harness import RunedFactory
from tests.integration.orch import Orch, runefile_args
from tests.support import eventually

KEEP_SECONDS = 10


def _deleted(o: Orch, name: str) -> str:
    """Delete ``name`` and wait for the deletion to finish; its operation's id."""
    req = service_pb2.DeleteServiceRequest(name=name, namespace="default", grace_period=0, timeout_seconds=60)
    resp = o.services.DeleteService(req, metadata=o.auth)
    status = o.services.GetDeletionStatus(
        service_pb2.GetDeletionStatusRequest(namespace="default", name=resp.deletion_id), metadata=o.auth
    ).operation.status
    assert status == "completed", status
    return str(resp.deletion_id)


def _kept(o: Orch, kind: str) -> set[str]:
    """The operations of ``kind`` in the store."""
    store = o.store()
    try:
        return {r.name for r in iter_all(store, kind, "default")}
    finally:
        store.close()


def _done(o: Orch, kind: str) -> bool:
    """Whether every operation of ``kind`` has finished."""
    store = o.store()
    try:
        return all(objects.operation_done(kind, r.data) for r in iter_all(store, kind, "default"))
    finally:
        store.close()


def test_finished_operations_go_once_kept_long_enough(runed_factory: RunedFactory, tmp_path: Path) -> None:
    env = {"RUNE_CONTROLLER_FINISHED_OPERATIONS_SECONDS": str(KEEP_SECONDS)}
    o = Orch.on(runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env=env), tmp_path)
    sleep = [sys.executable, "-c", "import time; time.sleep(3600)"]
    o.cast_command("old", sleep)
    o.cast_command("recent", sleep)
    eventually(lambda: o.running("old", 1) and o.running("recent", 1), timeout=60)
    o.services.ScaleService(service_pb2.ScaleServiceRequest(name="old", namespace="default", scale=2), metadata=o.auth)
    eventually(lambda: o.running("old", 2), timeout=60)
    scalings = _kept(o, objects.SCALING_OPERATION)
    assert len(scalings) == 1
    eventually(lambda: _done(o, objects.SCALING_OPERATION), timeout=30, what="the scaling finished")
    old = _deleted(o, "old")
    time.sleep(KEEP_SECONDS + 1)
    recent = _deleted(o, "recent")
    assert _kept(o, objects.DELETION_OPERATION) == {old, recent}

    # A new leader reads every operation at its first pass (then once a minute): what ended more
    # than KEEP_SECONDS ago goes, what ended since stays.
    first = o.runed
    first.stop()
    o.runed = runed_factory(first.data_dir, args=first.args, env=first.env)
    eventually(lambda: _kept(o, objects.DELETION_OPERATION) == {recent}, timeout=30, what="the old deletion removed")
    assert _kept(o, objects.SCALING_OPERATION) == set()
    with pytest.raises(grpc.RpcError) as err:
        o.services.GetDeletionStatus(
            service_pb2.GetDeletionStatusRequest(namespace="default", name=old), metadata=o.auth
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = o.services.ListDeletionOperations(
        service_pb2.ListDeletionOperationsRequest(namespace="default"), metadata=o.auth
    ).operations
    assert [op.id for op in listed] == [recent]
