"""A SQLite store another process holds locked: a write fails with UNAVAILABLE and the store's reason
(never INTERNAL) once ``store.sqlite_busy_timeout_seconds`` has passed, the log says why, reads go on,
and writes succeed again once the lock is let go."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import httpx

from rune.api import namespace_pb2, namespace_pb2_grpc
from tests.harness import run_runed
from tests.support import bootstrap_metadata, error_info


def test_a_write_behind_a_held_lock_is_unavailable_and_reads_go_on(tmp_path: Path) -> None:
    with run_runed(tmp_path / "data", env={"RUNE_STORE_SQLITE_BUSY_TIMEOUT_SECONDS": "0.5"}) as r:
        channel = r.channel()
        md = bootstrap_metadata(channel)
        namespaces = namespace_pb2_grpc.NamespaceServiceStub(channel)
        create = namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="busy"))
        other = sqlite3.connect(str(r.data_dir / "runed.db"), isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            try:
                namespaces.CreateNamespace(create, metadata=md)
            except grpc.RpcError as e:
                err = e
            else:
                raise AssertionError("a write went through while another process held the lock")
            assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())
            assert error_info(err).reason == "STORE_UNAVAILABLE"
            # REST says the same: 503, told when to retry.
            rest = httpx.post(
                f"{r.http_base}/v1/namespaces",
                json={"name": "busy"},
                headers={"authorization": md[0][1]},
                timeout=10,
            )
            assert rest.status_code == 503 and "STORE_UNAVAILABLE" in rest.text, (rest.status_code, rest.text)
            assert int(rest.headers["retry-after"]) >= 1
            # Reads do not wait for the lock.
            got = namespaces.GetNamespace(namespace_pb2.GetNamespaceRequest(name="default"), metadata=md)
            assert got.namespace.name == "default"
        finally:
            other.close()
        namespaces.CreateNamespace(create, metadata=md)
        got = namespaces.GetNamespace(namespace_pb2.GetNamespaceRequest(name="busy"), metadata=md)
        assert got.namespace.name == "busy"
        # The operator learns why, and which setting to look at, from the log.
        assert "store.sqlite_busy_timeout_seconds" in r.output()
