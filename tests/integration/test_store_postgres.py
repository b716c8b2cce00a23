"""runed on the PostgreSQL store: a cast service runs, and reads back over REST and gRPC from PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import httpx
import psycopg

from rune.api import instance_pb2, instance_pb2_grpc, service_pb2
from tests.harness import RunedFactory
from tests.integration.orch import SERVER, Orch, runefile_args
from tests.pgsupport import pg_database, pg_url  # noqa: F401  (fixtures)
from tests.support import eventually


def test_runed_serves_from_postgresql(runed_factory: RunedFactory, tmp_path: Path, pg_url: str) -> None:  # noqa: F811
    runed = runed_factory(tmp_path / "data", args=[*runefile_args(tmp_path), "--store-url", pg_url])
    orch = Orch.on(runed, tmp_path)
    script = orch.program("server", SERVER)
    orch.cast("web", script)
    instances = instance_pb2_grpc.InstanceServiceStub(runed.channel())

    def running() -> list[instance_pb2.Instance]:
        resp = instances.ListInstances(instance_pb2.ListInstancesRequest(service_name="web"), metadata=orch.auth)
        states = [i.status for i in resp.instances]
        assert states == [instance_pb2.INSTANCE_STATUS_RUNNING], states
        return list(resp.instances)

    eventually(running, timeout=20)
    svc = orch.services.GetService(service_pb2.GetServiceRequest(name="web"), metadata=orch.auth).service
    assert svc.name == "web"
    token = orch.auth[0][1]
    r = httpx.get(f"{runed.http_base}/v1/namespaces/default/services/web", headers={"authorization": token})
    assert r.status_code == 200, r.text
    assert r.json()["service"]["name"] == "web"
    # The objects live in PostgreSQL, not in a SQLite file in the data dir.
    assert not (tmp_path / "data" / "runed.db").exists()
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT count(*) FROM objects WHERE kind = 'service' AND name = 'web'").fetchone()
    assert row == (1,)
