"""A store call that waits (a write behind another session's lock on PostgreSQL) stalls no other call.

The gRPC and REST roles run alone (no controller: nothing else writes), on one PostgreSQL database.
A psql-like session takes the revision row lock every write transaction needs and keeps it; one
CreateNamespace over REST and one over gRPC then wait in the database. While both still wait, the
same two processes answer /healthz, WhoAmI and GetNamespace over REST and GetNamespace over gRPC:
with store calls on the event loop, each role's loop would sit inside the waiting write and
answer nothing until the lock goes.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg

from rune.api import namespace_pb2, namespace_pb2_grpc
from runed.auth.identity import KEY_FILE
from tests.harness import RunedFactory
from tests.pgsupport import lock_waiters, pg_database, pg_url  # noqa: F401  (fixtures)
from tests.support import bootstrap_metadata, eventually

# Generous: only a stalled loop comes near it (it fails the test instead of hanging it).
CALL_TIMEOUT = 60.0


def test_calls_complete_while_a_write_waits_on_a_lock(
    runed_factory: RunedFactory,
    tmp_path: Path,
    pg_url: str,  # noqa: F811
) -> None:
    store = ["--store-url", pg_url]
    grpc_role = runed_factory(tmp_path / "grpc", args=store, role="grpc")
    # Two hosts of one control plane: the same keys, each its own data dir.
    (tmp_path / "rest").mkdir(mode=0o700)
    for key in (KEY_FILE, "kek.b64"):
        shutil.copy2(tmp_path / "grpc" / key, tmp_path / "rest" / key)
    rest_role = runed_factory(tmp_path / "rest", args=store, role="rest")
    auth = bootstrap_metadata(grpc_role.channel())
    headers = {"authorization": auth[0][1]}
    base = rest_role.http_base
    namespaces = namespace_pb2_grpc.NamespaceServiceStub(grpc_role.channel())
    # Warm both roles up: the token's use is recorded now, not by the reads under the lock.
    assert httpx.get(f"{base}/v1/auth/whoami", headers=headers, timeout=CALL_TIMEOUT).status_code == 200
    namespaces.GetNamespace(namespace_pb2.GetNamespaceRequest(name="default"), metadata=auth, timeout=CALL_TIMEOUT)

    with (
        psycopg.connect(pg_url) as locker,
        psycopg.connect(pg_url, autocommit=True) as observer,
        ThreadPoolExecutor(2) as pool,
    ):
        # Every write transaction takes this row lock first; this session keeps it until rollback.
        locker.execute("SELECT value FROM revision WHERE id = 1 FOR UPDATE")
        rest_write = pool.submit(
            httpx.post,
            f"{base}/v1/namespaces",
            json={"name": "over-rest"},
            headers=headers,
            timeout=CALL_TIMEOUT,
        )
        grpc_write = pool.submit(
            namespaces.CreateNamespace,
            namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="over-grpc")),
            metadata=auth,
            timeout=CALL_TIMEOUT,
        )
        eventually(lambda: lock_waiters(observer) == 2, timeout=30, what="both writes wait")

        assert httpx.get(f"{base}/healthz", timeout=CALL_TIMEOUT).status_code == 200
        who = httpx.get(f"{base}/v1/auth/whoami", headers=headers, timeout=CALL_TIMEOUT)
        assert who.status_code == 200, who.text
        got = httpx.get(f"{base}/v1/namespaces/default", headers=headers, timeout=CALL_TIMEOUT)
        assert got.status_code == 200, got.text
        resp = namespaces.GetNamespace(
            namespace_pb2.GetNamespaceRequest(name="default"), metadata=auth, timeout=CALL_TIMEOUT
        )
        assert resp.namespace.name == "default"

        # All of that happened while both writes were still waiting for the lock.
        assert lock_waiters(observer) == 2
        assert not rest_write.done() and not grpc_write.done()
        locker.rollback()

        created = rest_write.result(timeout=CALL_TIMEOUT)
        assert created.status_code == 200, created.text
        assert grpc_write.result(timeout=CALL_TIMEOUT).namespace.name == "over-grpc"
