"""Gateway operations: probes, version, metrics from both transports, the descriptor set (OpenAPI: test_openapi.py)."""

from __future__ import annotations

import re
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from runed.pipeline import methods
from tests.harness import Runed, RunedFactory
from tests.support import eventually, rest_bootstrapped_runed


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, str]]:
    """One runed for the module, bootstrapped over REST."""
    with rest_bootstrapped_runed(tmp_path_factory.mktemp("gateway-ops")) as pair:
        yield pair


@pytest.fixture
def http(gw: tuple[Runed, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gw[0].http_base, timeout=10) as c:
        yield c


def test_healthz_readyz_livez_version(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["grpc"]["ok"] and ready.json()["checks"]["store"]["ok"]
    live = http.get("/livez").json()
    assert live["status"] == "ok"
    assert {"process", "event_loop", "store", "pipeline"} <= live["components"].keys()
    v = http.get("/version").json()
    assert v["version"] and v["python"].count(".") == 2
    assert v["grpc"] == grpc.__version__
    assert "protobuf" in v and "git_commit" in v


def test_readyz_names_the_failing_check_when_grpc_is_down(runed_factory: RunedFactory, tmp_path: Path) -> None:
    rest = runed_factory(tmp_path / "data", role="rest", timeout=20)
    r = httpx.get(rest.http_base + "/readyz", timeout=10)
    assert r.status_code == 503
    assert r.json()["failing"] == ["grpc"]
    assert httpx.get(rest.http_base + "/healthz", timeout=10).status_code == 200
    rest.signal(signal.SIGTERM)
    assert rest.wait(20) == 0


def test_port_in_use_is_one_clear_line(runed_factory: RunedFactory, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        rest = runed_factory(tmp_path / "data", role="rest", args=["--http-addr", f"127.0.0.1:{port}"], ready=False)
        assert rest.wait(30) == 78
    lines = [ln for ln in rest.output().splitlines() if "runed:" in ln]
    assert lines == [f"runed: cannot listen on 127.0.0.1:{port}: address already in use"]


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_both_transports(gw: tuple[Runed, str], http: httpx.Client) -> None:
    from rune.api import namespace_pb2, namespace_pb2_grpc

    runed, root_token = gw
    method = "/rune.api.NamespaceService/GetNamespace"

    def counts() -> tuple[float, float, float, float]:
        text = http.get("/metrics").text
        return (
            _sample(text, "rune_requests_total", transport="grpc", method=method, code="OK"),
            _sample(text, "rune_requests_total", transport="rest", method=method, code="OK"),
            _sample(text, "rune_requests_total", transport="rest", method=method, code="NOT_FOUND"),
            _sample(text, "rune_request_duration_seconds_count", transport="grpc", method=method),
        )

    before = counts()
    stub = namespace_pb2_grpc.NamespaceServiceStub(runed.channel())
    md = [("authorization", f"Bearer {root_token}")]
    for _ in range(3):
        stub.GetNamespace(namespace_pb2.GetNamespaceRequest(name="default"), metadata=md)
    for _ in range(2):
        r = http.get("/v1/namespaces/default", headers={"authorization": f"Bearer {root_token}"})
        assert r.status_code == 200
    http.get("/v1/namespaces/nope", headers={"authorization": f"Bearer {root_token}"})

    want = (before[0] + 3, before[1] + 2, before[2] + 1, before[3] + 3)
    eventually(lambda: counts() == want, what="per-transport request counters")
    text = http.get("/metrics").text
    assert "# TYPE rune_instances gauge" in text
    assert "# TYPE rune_open_streams gauge" in text


def test_instances_by_state_come_from_the_store(gw: tuple[Runed, str], http: httpx.Client) -> None:
    _, token = gw
    auth = {"authorization": f"Bearer {token}"}
    svc = {
        "name": "sleeper",
        "runtime": "process",
        "scale": 2,
        "process": {"command": sys.executable, "args": ["-c", "import time; time.sleep(60)"]},
    }
    r = http.post("/v1/namespaces/default/services", json=svc, headers=auth)
    assert r.status_code == 200, r.text
    try:
        eventually(
            lambda: _sample(http.get("/metrics").text, "rune_instances", state="RUNNING") >= 2,
            timeout=30,
            what="two RUNNING instances in /metrics",
        )
    finally:
        assert http.delete("/v1/namespaces/default/services/sleeper", headers=auth).status_code == 200
    eventually(
        lambda: _sample(http.get("/metrics").text, "rune_instances", state="RUNNING") == 0,
        timeout=30,
        what="instances gone from /metrics",
    )


def test_descriptor_set_for_dynamic_clients(http: httpx.Client) -> None:
    from google.protobuf import descriptor_pb2

    r = http.get("/descriptor.binpb")
    assert r.status_code == 200
    fds = descriptor_pb2.FileDescriptorSet.FromString(r.content)
    names = [f.name for f in fds.file]
    assert "google/api/annotations.proto" in names
    assert {f"pkg/api/proto/{m}.proto" for m in methods.PB2_MODULES} <= set(names)
    # Dependencies come before the files that import them.
    assert names.index("pkg/api/proto/common.proto") < names.index("pkg/api/proto/service.proto")
