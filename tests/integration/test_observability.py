"""Observability over a real runed: open streams per transport, fresh probe results, /info, /config,
RateLimit headers and CORS."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import runed
from rune.api import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    health_pb2,
    health_pb2_grpc,
    namespace_pb2,
    namespace_pb2_grpc,
)
from tests.harness import Runed
from tests.integration.orch import SERVER, Orch
from tests.support import bearer, eventually, make_token, rest_bootstrapped_runed

DASHBOARD = "https://dash.example:8443"
REGISTRY_PASSWORD = "hunter2-registry-password"
# A slow, small bucket so a loop of requests reaches the limit whatever the machine's speed.
RUNEFILE = textwrap.dedent(
    f"""
    server:
      cors:
        allowed_origins: ["{DASHBOARD}"]
    auth:
      rate_limit:
        requests_per_second: 5
        burst: 20
    docker:
      registries:
        - name: corp
          registry: registry.corp.example:5000
          auth: {{type: basic, username: robot, password: {REGISTRY_PASSWORD}}}
    """
)


@pytest.fixture(scope="module")
def obs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, str]]:
    """One runed for the module (CORS for DASHBOARD, a 5/s rate limit), bootstrapped over REST."""
    with rest_bootstrapped_runed(tmp_path_factory.mktemp("observability"), RUNEFILE) as pair:
        yield pair


@pytest.fixture
def http(obs: tuple[Runed, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=obs[0].http_base, timeout=10) as c:
        yield c


def _open_streams(http: httpx.Client, transport: str) -> float:
    m = re.search(rf'^rune_open_streams\{{transport="{transport}"\}} ([0-9.e+-]+)$', http.get("/metrics").text, re.M)
    return float(m.group(1)) if m else -1.0


def test_open_streams_count_grpc_streams_by_transport(obs: tuple[Runed, str], http: httpx.Client) -> None:
    runed, root = obs
    assert eventually(lambda: _open_streams(http, "grpc") == 0, what="the grpc series, at 0 before any stream")
    stub = namespace_pb2_grpc.NamespaceServiceStub(runed.channel())
    watches = [stub.WatchNamespaces(namespace_pb2.WatchNamespacesRequest(), metadata=bearer(root)) for _ in range(2)]
    try:
        eventually(lambda: _open_streams(http, "grpc") == 2, what="two open gRPC streams")
        assert _open_streams(http, "rest") == 0
    finally:
        for w in watches:
            w.cancel()
    eventually(lambda: _open_streams(http, "grpc") == 0, what="the gRPC streams closed")


def test_a_failing_readiness_probe_keeps_its_result_fresh(orch: Orch) -> None:
    never = common_pb2.Probe(type=common_pb2.PROBE_TYPE_HTTP, path="/ready", port=8080, period_seconds=1)
    orch.cast(
        "stuck",
        orch.program("server", SERVER),
        ports=[common_pb2.ServicePort(name="http", port=8080)],
        env={"READY_FILE": str(orch.tmp / "never-there")},
        health=common_pb2.HealthCheck(readiness=never),
    )
    health = health_pb2_grpc.HealthServiceStub(orch.runed.channel())

    def readiness() -> health_pb2.HealthCheckResult:
        inst = orch.one("stuck")
        resp: health_pb2.GetHealthResponse = health.GetHealth(
            health_pb2.GetHealthRequest(component_type="instance", name=str(inst["id"]), include_checks=True),
            metadata=orch.auth,
        )
        (c,) = resp.components
        found = [r for r in c.check_results if r.type == health_pb2.HEALTH_CHECK_TYPE_READINESS]
        assert found and found[0].consecutive_failures >= 1, c
        return found[0]

    first = eventually(readiness, timeout=20, what="a failed readiness check")
    assert first.status == health_pb2.HEALTH_STATUS_UNHEALTHY and first.observed_at

    def moved_on() -> health_pb2.HealthCheckResult:
        now = readiness()
        assert now.consecutive_failures > first.consecutive_failures, (first, now)
        assert now.observed_at > first.observed_at and now.timestamp > first.timestamp, (first, now)
        return now

    eventually(moved_on, timeout=30, what="the failure count and observed time to move on")
    # Over REST the same result carries observedAt (RFC 3339).
    inst_id = str(orch.one("stuck")["id"])
    token = orch.auth[0][1]
    r = httpx.get(
        orch.runed.http_base + "/v1/namespaces/default/health",
        params={"componentType": "instance", "name": inst_id, "includeChecks": "true"},
        headers={"authorization": token},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    (check,) = [c for c in r.json()["components"][0]["checkResults"] if c["type"] == "HEALTH_CHECK_TYPE_READINESS"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$", check["observedAt"]), check


def test_info_names_version_commit_build_date_and_features(http: httpx.Client) -> None:
    r = http.get("/info")
    assert r.status_code == 200, r.text
    info: dict[str, Any] = r.json()
    assert info["name"] == "runed" and info["version"]
    if (Path(runed.__file__).resolve().parent.parent / ".git").exists():
        # Run from a source checkout (no build stamp): its commit and commit date.
        assert re.fullmatch(r"[0-9a-f]{12}", info["commit"]), info
        assert re.match(r"^\d{4}-\d\d-\d\dT", info["buildDate"]) and info["source"] == "git", info
    else:
        assert info["source"] in ("stamp", ""), info
    features = info["features"]
    assert features["cors"] is True and features["rateLimit"] is True and features["tls"] is False
    assert {"grpc", "rest", "connectUnary", "serverSentEvents", "websocket", "oidc", "mtls"} <= features.keys()


def test_config_is_redacted_and_admin_only(obs: tuple[Runed, str], http: httpx.Client) -> None:
    runed, root = obs
    assert http.get("/config").status_code == 401
    admin = admin_pb2_grpc.AdminServiceStub(runed.channel())
    admin.UserCreate(admin_pb2.UserCreateRequest(name="viewer", policies=["readonly"]), metadata=bearer(root))
    viewer = make_token(runed, bearer(root), "viewer", ["readonly"])
    denied = http.get("/config", headers={"authorization": f"Bearer {viewer}"})
    assert denied.status_code == 403, denied.text
    assert "admin:get" in denied.json()["message"]
    r = http.get("/config", headers={"authorization": f"Bearer {root}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"].endswith("runefile.yaml")
    cfg = body["config"]
    assert cfg["server"]["cors"]["allowed_origins"] == [DASHBOARD]
    assert cfg["auth"]["rate_limit"] == {"requests_per_second": 5.0, "burst": 20}
    auth = cfg["docker"]["registries"][0]["auth"]
    assert auth["username"] == "robot" and auth["password"] == "<redacted>"
    assert REGISTRY_PASSWORD not in r.text and root not in r.text


def test_ratelimit_headers_on_every_rest_response(obs: tuple[Runed, str], http: httpx.Client) -> None:
    runed, root = obs
    policy = '"credential";q=20;w=4'
    # Operations, unmatched routes and refused credentials carry the policy.
    for path in ("/healthz", "/v1/nowhere", "/v1/namespaces"):
        assert http.get(path).headers["ratelimit-policy"] == policy, path
    # A fresh credential: its own bucket, full at first.
    secret = make_token(runed, bearer(root), "root", [])
    auth = {"authorization": f"Bearer {secret}"}
    first = http.get("/v1/namespaces", headers=auth)
    assert first.status_code == 200 and first.headers["ratelimit-policy"] == policy
    m = re.fullmatch(r'"credential";r=(\d+);t=(\d+)', first.headers["ratelimit"])
    assert m is not None, first.headers
    assert int(m.group(1)) == 19 and 1 <= int(m.group(2)) <= 4, first.headers["ratelimit"]
    # Spend it: the 429 says r=0, with Retry-After.
    for _ in range(500):
        last = http.get("/v1/namespaces", headers=auth)
        if last.status_code == 429:
            break
        assert re.fullmatch(r'"credential";r=\d+;t=\d+', last.headers["ratelimit"])
    assert last.status_code == 429, last.text
    assert last.headers["ratelimit"].startswith('"credential";r=0;') and int(last.headers["retry-after"]) >= 1


def _preflight(http: httpx.Client, origin: str) -> httpx.Response:
    return http.options(
        "/v1/namespaces",
        headers={
            "origin": origin,
            "access-control-request-method": "GET",
            "access-control-request-headers": "authorization",
        },
    )


def test_cors_preflight_and_simple_requests(obs: tuple[Runed, str], http: httpx.Client) -> None:
    _, root = obs
    ok = _preflight(http, DASHBOARD)
    assert ok.status_code == 200, ok.text
    assert ok.headers["access-control-allow-origin"] == DASHBOARD
    assert "GET" in ok.headers["access-control-allow-methods"]
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    refused = _preflight(http, "https://evil.example")
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers

    auth = {"authorization": f"Bearer {root}"}
    simple = http.get("/v1/namespaces", headers={**auth, "origin": DASHBOARD})
    assert simple.status_code == 200
    assert simple.headers["access-control-allow-origin"] == DASHBOARD
    exposed = simple.headers["access-control-expose-headers"].lower()
    assert "ratelimit" in exposed and "x-request-id" in exposed
    other = http.get("/v1/namespaces", headers={**auth, "origin": "https://evil.example"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_cors_is_off_by_default(orch: Orch) -> None:
    with httpx.Client(base_url=orch.runed.http_base, timeout=10) as c:
        r = _preflight(c, DASHBOARD)
    assert "access-control-allow-origin" not in r.headers
    assert r.status_code in (404, 405), r.status_code
