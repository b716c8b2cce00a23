"""GetHealth reports the server's release, over gRPC and REST."""

from __future__ import annotations

import httpx

import runed as runed_pkg
from rune.api import health_pb2, health_pb2_grpc
from tests.harness import Runed


def test_get_health_reports_the_server_version(runed: Runed, auth: list[tuple[str, str]]) -> None:
    stub = health_pb2_grpc.HealthServiceStub(runed.channel())
    resp = stub.GetHealth(health_pb2.GetHealthRequest(), metadata=auth)
    assert resp.server_version == runed_pkg.__version__
    assert resp.server_version  # a release, never empty
    token = auth[0][1]
    rest = httpx.get(f"{runed.http_base}/v1/namespaces/default/health", headers={"authorization": token}, timeout=10)
    assert rest.status_code == 200, rest.text
    assert rest.json()["serverVersion"] == runed_pkg.__version__
