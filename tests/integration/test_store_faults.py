"""PostgreSQL going away under a running runed: calls fail fast with UNAVAILABLE and retry information
(never INTERNAL), no acknowledged write is lost, watches and the controller carry on once it is back.

The database is a private server of this module's own (``tests.pgsupport.pg_cluster``), so stopping
it disturbs no other test.
"""

from __future__ import annotations

import collections
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from rune.api import (
    common_pb2,
    configmap_pb2,
    configmap_pb2_grpc,
    instance_pb2,
    instance_pb2_grpc,
    namespace_pb2,
    namespace_pb2_grpc,
)
from tests.harness import Runed, run_runed
from tests.integration.orch import SERVER, Orch, runefile_args
from tests.pgsupport import PgCluster, pg_cluster  # noqa: F401  (fixture)
from tests.support import Metadata, alive, eventually

pytestmark = pytest.mark.slow

WRITERS = 3


@pytest.fixture(scope="module")
def on_private_pg(
    pg_cluster: PgCluster,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Runed, Path, str]]:
    """A whole runed (every role, the controller too) on the private server, without a rate limit."""
    url = pg_cluster.create_database("runed")
    tmp = tmp_path_factory.mktemp("faults")
    env = {"RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "0"}
    with run_runed(tmp / "data", args=[*runefile_args(tmp), "--store-url", url], env=env, timeout=90) as r:
        yield r, tmp, url


@dataclass
class Load:
    """Writers creating configmaps until told to stop: what was acknowledged, and every status seen."""

    stub: configmap_pb2_grpc.ConfigmapServiceStub
    auth: Metadata
    stop: threading.Event = field(default_factory=threading.Event)
    acked: list[str] = field(default_factory=list)
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    unavailable: list[grpc.RpcError] = field(default_factory=list)

    def write(self, writer: int) -> None:
        i = 0
        while not self.stop.is_set():
            name = f"load-{writer}-{i}"
            i += 1
            cm = configmap_pb2.Configmap(name=name, namespace="default", data={"n": str(i)})
            try:
                self.stub.CreateConfigmap(configmap_pb2.CreateConfigmapRequest(configmap=cm), metadata=self.auth)
            except grpc.RpcError as e:
                self.codes[e.code().name] += 1
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    self.unavailable.append(e)
                # Not acknowledged: it may or may not have been committed, either is correct.
                self.stop.wait(0.05)
                continue
            self.codes["OK"] += 1
            self.acked.append(name)


def _details(err: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, err
    info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
    assert any(d.Unpack(info) for d in status.details), status
    assert any(d.Unpack(retry) for d in status.details), status
    return info, retry


def test_postgres_restart_under_load(on_private_pg: tuple[Runed, Path, str], pg_cluster: PgCluster) -> None:  # noqa: F811
    runed, tmp, _ = on_private_pg
    orch = Orch.on(runed, tmp)
    channel = runed.channel()
    namespaces = namespace_pb2_grpc.NamespaceServiceStub(channel)
    controller_pid = json.loads((runed.data_dir / "run" / "controller.json").read_text())["pid"]

    # A watch started before the restart.
    events: list[tuple[str, str]] = []
    watch = namespaces.WatchNamespaces(namespace_pb2.WatchNamespacesRequest(), metadata=orch.auth)

    def follow() -> None:
        try:
            for ev in watch:
                events.append((common_pb2.EventType.Name(ev.event_type), ev.namespace.name))
        except grpc.RpcError as e:
            events.append(("ended", e.code().name))

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    eventually(lambda: [n for _, n in events if n == "default"] or None, what="the watch's snapshot")

    load = Load(configmap_pb2_grpc.ConfigmapServiceStub(channel), orch.auth)
    writers = [threading.Thread(target=load.write, args=(w,), daemon=True) for w in range(WRITERS)]
    for t in writers:
        t.start()
    try:
        eventually(lambda: len(load.acked) >= 20 or None, timeout=30, what="writes before the restart")
        pg_cluster.stop("fast")
        try:
            eventually(lambda: load.unavailable or None, timeout=30, what="an UNAVAILABLE while it is down")
            # REST: 503 with Retry-After and the same reason; /readyz names the store.
            r = httpx.get(f"{runed.http_base}/v1/namespaces/default", headers={"authorization": orch.auth[0][1]})
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1, r.headers
            assert "STORE_UNAVAILABLE" in r.text, r.text
            ready = httpx.get(f"{runed.http_base}/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["failing"] == ["store"], ready.text
            assert "not reachable" in ready.json()["checks"]["store"]["detail"], ready.text
        finally:
            pg_cluster.start()
        before = len(load.acked)
        eventually(lambda: len(load.acked) >= before + 20 or None, timeout=60, what="writes after the restart")
    finally:
        load.stop.set()
        for t in writers:
            t.join(timeout=30)

    info, retry = _details(load.unavailable[0])
    assert info.reason == "STORE_UNAVAILABLE", info
    assert retry.retry_delay.ToMilliseconds() >= 1000, retry
    assert load.codes["INTERNAL"] == 0 and load.codes["UNKNOWN"] == 0, load.codes
    assert set(load.codes) <= {"OK", "UNAVAILABLE", "ALREADY_EXISTS"}, load.codes
    configmaps = configmap_pb2_grpc.ConfigmapServiceStub(channel)
    lost = []
    for name in load.acked:
        try:
            configmaps.GetConfigmap(
                configmap_pb2.GetConfigmapRequest(name=name, namespace="default"), metadata=orch.auth
            )
        except grpc.RpcError as e:
            lost.append((name, e.code().name))
    assert not lost, f"{len(lost)} of {len(load.acked)} acknowledged writes lost: {lost[:5]}"

    # The watch started before the restart sees a change made after it, without ending.
    namespaces.CreateNamespace(
        namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="after-restart")),
        metadata=orch.auth,
    )
    eventually(
        lambda: ("EVENT_TYPE_ADDED", "after-restart") in events or None, timeout=30, what=f"the watch resumed: {events}"
    )
    assert not [e for e in events if e[0] == "ended"], events
    watch.cancel()

    # The controller lived through it, and still runs what is cast now.
    assert alive(controller_pid)
    assert json.loads((runed.data_dir / "run" / "controller.json").read_text())["pid"] == controller_pid
    orch.cast("web", orch.program("server", SERVER))
    instances = instance_pb2_grpc.InstanceServiceStub(channel)

    def running() -> bool:
        resp = instances.ListInstances(instance_pb2.ListInstancesRequest(service_name="web"), metadata=orch.auth)
        assert [i.status for i in resp.instances] == [instance_pb2.INSTANCE_STATUS_RUNNING], resp
        return True

    eventually(running, timeout=30, what="a service cast after the restart runs")
    assert "internal error in" not in runed.output()

    # Listening for changes broke once per process and came back once: one warning each, not one a
    # wait. A process listens again when it next waits for a change, which may come a little later.
    def listening_again() -> bool:
        out = runed.output()
        warned = out.count("lost the store's change notifications") + out.count("cannot listen for store changes")
        assert warned >= 1 and warned == out.count("listening for store changes again"), out[-3000:]
        return True

    eventually(listening_again, timeout=30, what="every process that lost the notifications listening again")


def test_readyz_wants_the_schema_this_runed_knows(on_private_pg: tuple[Runed, Path, str]) -> None:
    runed, _, url = on_private_pg
    ready = httpx.get(f"{runed.http_base}/readyz")
    assert ready.status_code == 200, ready.text
    assert "(current)" in ready.json()["checks"]["store"]["detail"], ready.text
    # A newer runed on another host migrated the database past what this one knows.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 0)")
    try:
        ready = httpx.get(f"{runed.http_base}/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["failing"] == ["store"], ready.text
        assert "schema version 999, this runed needs" in ready.json()["checks"]["store"]["detail"], ready.text
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM schema_migrations WHERE version = 999")


def test_readyz_wants_this_hosts_keys_to_match_the_store(on_private_pg: tuple[Runed, Path, str]) -> None:
    runed, _, url = on_private_pg
    ready = httpx.get(f"{runed.http_base}/readyz")
    assert ready.status_code == 200 and "keys match" in ready.json()["checks"]["store"]["detail"], ready.text
    where = "kind = 'keycheck' AND namespace = 'system' AND name = 'keys'"
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(f"SELECT data FROM objects WHERE {where}").fetchone()
        assert row is not None
        # As if another host rotated the KEK and this one does not have the new key.
        changed = json.dumps({**json.loads(row[0]), "kek": "0123456789abcdef"})
        conn.execute(f"UPDATE objects SET data = %s WHERE {where}", (changed,))
        try:
            ready = httpx.get(f"{runed.http_base}/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["failing"] == ["store"], ready.text
            assert "keys do not match the store's" in ready.json()["checks"]["store"]["detail"], ready.text
        finally:
            conn.execute(f"UPDATE objects SET data = %s WHERE {where}", (row[0],))
