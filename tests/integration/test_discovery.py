"""Instances find each other: a dependent is told its dependency's host and ports; expose.host_port is honoured."""

from __future__ import annotations

import socket
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from rune.api import common_pb2, instance_pb2, instance_pb2_grpc, service_pb2
from tests.e2e.rune import Rune, kill_all
from tests.integration.orch import SERVER, Orch
from tests.support import eventually

# Answers every connection with "pong <what it was sent>" on its PORT.
PONG = textwrap.dedent(
    """
    import os, socketserver
    class H(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.sendall(b"pong " + self.request.recv(100))
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
    """
)

# Connects to its dependency by what its environment says, and exits 0 only on the expected answer.
PING = textwrap.dedent(
    """
    import os, socket, sys
    host, port = os.environ["DB_SERVICE_HOST"], int(os.environ["DB_SERVICE_PORT"])
    assert os.environ["DB_SERVICE_PORT_WIRE"] == str(port), os.environ["DB_SERVICE_PORT_WIRE"]
    print("dialing", host, port, "admin", os.environ["DB_SERVICE_PORT_ADMIN"], flush=True)
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"ping")
        answer = s.recv(100)
    print("answer", answer.decode(), flush=True)
    sys.exit(0 if answer == b"pong ping" else 1)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _exited(orch: Orch, service: str) -> dict[str, Any]:
    insts = orch.instances(service)
    assert [i["state"] for i in insts] == ["EXITED"], [(i["state"], i.get("reason")) for i in insts]
    return insts[0]


@pytest.fixture
def rune(orch: Orch, tmp_path: Path) -> Iterator[Rune]:
    """The `rune` CLI logged in to the module's runed with its root token."""
    procs: list[Any] = []
    r = Rune(home=tmp_path / "home", server=orch.runed.grpc_target, procs=procs)
    token = dict(orch.auth)["authorization"].removeprefix("Bearer ")
    login = r("login", "--token", token)
    assert login.returncode == 0, login.stderr
    yield r
    kill_all(procs)


def test_a_dependent_reaches_its_dependency_by_its_environment(orch: Orch) -> None:
    ready = common_pb2.Probe(type=common_pb2.PROBE_TYPE_TCP, port=5432, period_seconds=1)
    orch.cast(
        "db",
        orch.program("pong", PONG),
        ports=[common_pb2.ServicePort(name="wire", port=5432), common_pb2.ServicePort(name="admin", port=8081)],
        health=common_pb2.HealthCheck(readiness=ready),
    )
    orch.cast(
        "app",
        orch.program("ping", PING),
        dependencies=[service_pb2.DependencyRef(service="db")],
        restart_policy=common_pb2.RESTART_POLICY_NEVER,
    )
    db = eventually(lambda: orch.running("db", 1), timeout=15)[0]
    app = eventually(lambda: _exited(orch, "app"), timeout=20, what="the dependent ran to its end")
    assert app["last_exit_code"] == 0, orch.log_lines(app)
    assert "answer pong ping" in orch.log_lines(app)
    assert app["env"]["DB_SERVICE_HOST"] == "127.0.0.1"
    assert app["env"]["DB_SERVICE_PORT"] == str(db["ports"]["wire"]) == app["env"]["DB_SERVICE_PORT_WIRE"]
    assert app["env"]["DB_SERVICE_PORT_ADMIN"] == str(db["ports"]["admin"])
    # An instance's own service endpoint is reachable too (no name that resolves to nothing).
    assert db["env"]["DB_SERVICE_HOST"] == "127.0.0.1" and db["env"]["DB_SERVICE_PORT"] == str(db["ports"]["wire"])


def test_expose_host_port_is_the_instance_port_across_updates(orch: Orch, rune: Rune) -> None:
    port = _free_port()
    ready = common_pb2.Probe(type=common_pb2.PROBE_TYPE_HTTP, path="/", port=8080, period_seconds=1)
    orch.cast(
        "edge",
        orch.program("server", SERVER),
        # SERVER listens on PORT, the first port; the host port exposes it by name.
        ports=[common_pb2.ServicePort(name="http", port=8080), common_pb2.ServicePort(name="metrics", port=9100)],
        expose=common_pb2.ServiceExpose(port="http", host_port=port),
        health=common_pb2.HealthCheck(readiness=ready),
    )
    inst = eventually(lambda: orch.running("edge", 1), timeout=15)[0]
    assert inst["ports"]["http"] == port and inst["ports"]["metrics"] != port
    assert inst["env"]["RUNE_PORT_HTTP"] == str(port) == inst["env"]["EDGE_SERVICE_PORT_HTTP"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
        assert r.status == 200
    # The API says where each port is reached, by name, on gRPC and REST alike.
    stub = instance_pb2_grpc.InstanceServiceStub(orch.runed.channel())
    got = stub.GetInstance(instance_pb2.GetInstanceRequest(id=inst["instance"]["id"]), metadata=orch.auth).instance
    assert dict(got.host_ports) == {"http": port, "metrics": inst["ports"]["metrics"]}
    auth = dict(orch.auth)["authorization"]
    with httpx.Client(base_url=orch.runed.http_base, headers={"authorization": auth}) as c:
        listed = c.get("/v1/namespaces/default/instances").json()["instances"]
    assert next(i for i in listed if i["name"] == "edge-0")["hostPorts"] == {
        "http": port,
        "metrics": inst["ports"]["metrics"],
    }

    wide = rune("get", "instances", "-o", "wide")
    assert wide.returncode == 0, wide.stderr
    head, *rows = wide.stdout.splitlines()
    assert "PORTS" in head.split()
    row = next(r for r in rows if r.startswith("edge-0"))
    assert f"127.0.0.1:{port}->http" in row and f"127.0.0.1:{inst['ports']['metrics']}->metrics" in row
    described = rune("describe", "service", "edge")
    assert described.returncode == 0, described.stderr
    assert f"127.0.0.1:{port}->http" in described.stdout
    one = rune("describe", "instance", "edge-0")
    assert one.returncode == 0, one.stderr
    assert f"http: {port}" in one.stdout

    # A rolling update (with a readiness probe) cannot surge onto a taken host port: the
    # replacement starts once the old instance has let go of it, and gets the same port.
    spec = orch.services.GetService(service_pb2.GetServiceRequest(name="edge"), metadata=orch.auth).service
    spec.env["VERSION"] = "2"
    orch.services.UpdateService(service_pb2.UpdateServiceRequest(service=spec), metadata=orch.auth)

    def replaced() -> dict[str, Any]:
        new = orch.running("edge", 1)[0]
        assert new["id"] != inst["id"] and new["env"].get("VERSION") == "2"
        return new

    new = eventually(replaced, timeout=20, what="the replacement instance ready")
    assert new["ports"]["http"] == port
    assert new["restart_count"] == 0, "the replacement's first start did not fail on the taken port"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
        assert r.status == 200


def test_a_busy_host_port_is_the_reason_an_instance_waits(orch: Orch) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = int(squatter.getsockname()[1])
    try:
        orch.cast(
            "late",
            orch.program("server", SERVER),
            ports=[common_pb2.ServicePort(name="http", port=8080)],
            expose=common_pb2.ServiceExpose(host_port=port),
        )

        def waiting() -> bool:
            insts = orch.instances("late")
            assert len(insts) == 1, insts
            inst = insts[0]
            assert f"host port {port} (service.expose.host_port) is in use" in inst["reason"], inst["reason"]
            return True

        eventually(waiting, timeout=15)
    finally:
        squatter.close()
    inst = eventually(lambda: orch.running("late", 1), timeout=15, what="started once the port is free")[0]
    assert inst["ports"]["http"] == port


def test_a_host_port_without_a_port_to_expose_is_refused(orch: Orch) -> None:
    with pytest.raises(grpc.RpcError) as e:
        orch.cast("nowhere", orch.program("server", SERVER), expose=common_pb2.ServiceExpose(host_port=8080))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "service.expose.host_port" in (e.value.details() or "")
