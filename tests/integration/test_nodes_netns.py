"""Nodes on networks of their own: a node whose network is cut, and dependencies across nodes.

A whole runed, the control plane (API and scheduler) and node n1 (127.0.0.2), runs on this host's
network; node n2 runs in a network namespace joined by a veth pair (``tests/netns.py``), its
address the namespace's end. Every host reaches a private PostgreSQL server that listens on the
host's end of the pair too. Cutting n2 off is that pair going down: n2's runed keeps running and
cannot reach anyone.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rune.api import common_pb2, node_pb2, service_pb2
from tests.harness import Runed, Runeds
from tests.integration.test_nodes import KEY_FILES, RUNNING, Cluster, runefile
from tests.netns import Netns, netns
from tests.pgsupport import private_cluster
from tests.support import bootstrap_metadata, eventually

# A cluster of three runeds converging, then a node cut off for the lost window.
pytestmark = pytest.mark.slow

# Answers "pong" on every address of its node, at the port its environment names.
PONG = textwrap.dedent(
    """
    import os, socketserver
    class H(socketserver.BaseRequestHandler):
        def handle(self):
            self.request.sendall(b"pong " + self.request.recv(100))
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
    """
)
# Dials its dependency argv[2] where its environment says and writes the answer to the file argv[1].
PING = textwrap.dedent(
    """
    import os, socket, sys, time
    dep = sys.argv[2].upper()
    host, port = os.environ[dep + "_SERVICE_HOST"], int(os.environ[dep + "_SERVICE_PORT"])
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"ping")
        answer = s.recv(100).decode()
    with open(sys.argv[1], "w") as f:
        f.write(answer)
    time.sleep(600)
    """
)


@dataclass
class NsRuned(Runed):
    """A runed whose process runs inside a network namespace (the same files and pids)."""

    prefix: list[str] = field(default_factory=list)

    def command(self) -> list[str]:
        return [*self.prefix, *super().command()]


@dataclass
class Split:
    cluster: Cluster
    ns: Netns


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    tmp = tmp_path_factory.mktemp("split")
    runeds = Runeds()
    with netns() as ns, private_cluster(listen=("127.0.0.1", ns.host_address)) as pg:
        db = pg.create_database("runed")
        n2 = NsRuned(tmp / "n2", role="node", prefix=ns.prefix())
        try:
            # The control plane's host is node n1 itself (the scheduler's leader runs instances too).
            spec = "  id: n1\n  address: 127.0.0.2\n  labels:\n    name: n1\n"
            n1 = runeds.start(tmp / "n1", args=runefile(tmp, "n1", spec), env={"RUNE_STORE_URL": db}, ready=False)
            eventually(lambda: all((n1.data_dir / f).exists() for f in KEY_FILES), timeout=60, what="the keys")
            (tmp / "n2").mkdir()
            for f in KEY_FILES:
                shutil.copy2(n1.data_dir / f, tmp / "n2" / f)
            spec = f"  id: n2\n  address: {ns.address}\n  labels:\n    name: n2\n"
            n2.args = runefile(tmp, "n2", spec)
            n2.env = {"RUNE_STORE_URL": db.replace("@127.0.0.1:", f"@{ns.host_address}:")}
            n2.launch()
            for r in (n1, n2):
                r.wait_ready(90)
            c = Cluster(n1, {"n1": n1, "n2": n2}, bootstrap_metadata(n1.channel()), tmp, db)
            listed = node_pb2.ListNodesRequest()
            eventually(lambda: len(c.node_api.ListNodes(listed, metadata=c.auth).nodes) == 2, timeout=30)
            yield Split(c, ns)
        finally:
            n2.stop()
            runeds.close()


def program(c: Cluster, name: str, text: str, *args: str) -> common_pb2.ProcessSpec:
    script = c.tmp / f"{name}.py"
    script.write_text(text)
    return common_pb2.ProcessSpec(command=sys.executable, args=[str(script), *args])


def _cwd(pid: int) -> Path | None:
    """Where a process works (None once it is gone): tells a copy of n2's from a reused pid."""
    try:
        return Path(f"/proc/{pid}/cwd").resolve(strict=True)
    except OSError:
        return None


def pong(c: Cluster, name: str, scale: int, **kw: Any) -> None:
    """A service of PONG servers, ready once they accept connections."""
    ready = common_pb2.Probe(type=common_pb2.PROBE_TYPE_TCP, port=7000, period_seconds=1)
    svc = service_pb2.Service(
        name=name,
        namespace="default",
        runtime="process",
        scale=scale,
        process=program(c, "pong", PONG),
        ports=[common_pb2.ServicePort(name="wire", port=7000)],
        health=common_pb2.HealthCheck(readiness=ready),
        **kw,
    )
    c.services.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=c.auth)


def ping(c: Cluster, name: str, dependency: str) -> Path:
    """A service on n1 that dials ``dependency``; the file it writes its answer to."""
    answer = c.tmp / f"{name}.answer"
    svc = service_pb2.Service(
        name=name,
        namespace="default",
        runtime="process",
        scale=1,
        process=program(c, "ping", PING, str(answer), dependency),
        dependencies=[service_pb2.DependencyRef(service=dependency)],
        node_selector={"name": "n1"},
    )
    c.services.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=c.auth)
    return answer


def test_a_dependent_gets_and_reaches_its_dependency_on_another_node(split: Split) -> None:
    c = split.cluster
    pong(c, "backend", 1, node_selector={"name": "n2"})
    answer = ping(c, "frontend", "backend")
    dep = eventually(lambda: c.running("backend", 1), timeout=60)[0]
    app = eventually(lambda: c.running("frontend", 1), timeout=60)[0]
    assert (dep.node_id, app.node_id) == ("n2", "n1")
    # The dependency's node address (not this node's loopback one) and its instance's host port.
    assert dep.ip == split.ns.address
    assert app.environment["BACKEND_SERVICE_HOST"] == split.ns.address
    assert app.environment["BACKEND_SERVICE_PORT"] == app.environment["BACKEND_SERVICE_PORT_WIRE"]
    assert app.environment["BACKEND_SERVICE_PORT"] == dep.environment["PORT"]
    # Over the veth pair, from n1's network to n2's.
    assert eventually(lambda: answer.exists() and answer.read_text(), timeout=30) == "pong ping"
    for name in ("frontend", "backend"):
        c.delete(name)


def test_a_dependency_on_the_dependent_s_node_is_preferred_at_the_loopback_address(split: Split) -> None:
    c = split.cluster
    pong(c, "both", 2)
    deps = eventually(lambda: c.running("both", 2), timeout=60)
    assert sorted(i.node_id for i in deps) == ["n1", "n2"]
    # Both ready (the service's status says so): the one on n1 is preferred, not merely the only one.
    eventually(lambda: c.service("both").status == service_pb2.SERVICE_STATUS_RUNNING, timeout=30)
    answer = ping(c, "near", "both")
    app = eventually(lambda: c.running("near", 1), timeout=60)[0]
    local = next(i for i in deps if i.node_id == "n1")
    assert app.environment["BOTH_SERVICE_HOST"] == "127.0.0.1"
    assert app.environment["BOTH_SERVICE_PORT"] == local.environment["PORT"]
    assert eventually(lambda: answer.exists() and answer.read_text(), timeout=30) == "pong ping"
    for name in ("near", "both"):
        c.delete(name)


def test_a_cut_off_node_is_replaced_elsewhere_and_stops_its_copies_when_healed(split: Split) -> None:
    c, ns = split.cluster, split.ns
    c.cast("island", 2)
    # A service only n2 may run: while n2 is lost, it has no instance a dependent may count on.
    c.cast("pinned", 1, node_selector={"name": "n2"})
    before = eventually(lambda: c.running("island", 2), timeout=60)
    eventually(lambda: c.running("pinned", 1), timeout=60)
    assert sorted(i.node_id for i in before) == ["n1", "n2"]
    cut = next(i for i in before if i.node_id == "n2")
    n2 = c.nodes["n2"]
    assert n2.proc is not None
    ns.cut()
    try:
        eventually(lambda: c.node("n2").status == "NotReady", timeout=30, what="n2 NotReady")

        def replaced() -> list[str]:
            insts = [i for i in c.instances("island") if i.node_id == "n1"]
            assert len(insts) == 2 and all(i.status == RUNNING for i in insts), [(i.name, i.node_id) for i in insts]
            return sorted(i.name for i in insts)

        assert eventually(replaced, timeout=30, what="n2's instance running on n1") == ["island-0", "island-1"]
        c.cast("waiter", 1, dependencies=[service_pb2.DependencyRef(service="pinned")])
        waiting = "waiting for dependency service default/pinned to be ready"
        eventually(lambda: c.service("waiter").status_message == waiting, timeout=30, what=waiting)
        assert c.instances("waiter") == []
        # A cut, not a crash: n2's runed and its copy still run, unaware.
        assert n2.proc.poll() is None
        assert str(_cwd(cut.pid)).startswith(str(n2.data_dir.resolve()))
    finally:
        ns.heal()
    eventually(lambda: c.node("n2").status == "Ready", timeout=60, what="n2 Ready again")

    def converged() -> bool:
        insts = c.instances("island")
        where = [(i.name, i.node_id, i.status) for i in insts]
        assert sorted(i.name for i in insts) == ["island-0", "island-1"], where
        assert all(i.node_id == "n1" and i.status == RUNNING for i in insts), where
        # The old copy is stopped, not only forgotten.
        assert not str(_cwd(cut.pid)).startswith(str(n2.data_dir.resolve())), cut.pid
        return True

    eventually(converged, timeout=60, what="one copy of every name, on n1")
    # n2 runs its pinned service again: the dependent starts.
    eventually(lambda: c.running("waiter", 1), timeout=60, what="the dependent running once n2 is back")
    for name in ("waiter", "pinned", "island"):
        c.delete(name)


def test_a_cut_off_node_deleted_meanwhile_registers_anew_when_healed_and_stops_what_it_ran(split: Split) -> None:
    """DeleteNode of a node cut off, not dead: its runed keeps running what it ran, unaware. Healed,
    it finds its node record gone: it registers anew and stops its old copies (their records are
    gone), then runs what is placed on it again."""
    import grpc

    c, ns = split.cluster, split.ns
    c.cast("marooned", 1, node_selector={"name": "n2"})
    [before] = eventually(lambda: c.running("marooned", 1), timeout=60)
    n2 = c.nodes["n2"]
    assert n2.proc is not None
    ns.cut()
    try:
        eventually(lambda: c.node("n2").status == "NotReady", timeout=30, what="n2 NotReady")
        c.node_api.DeleteNode(node_pb2.NodeActionRequest(id="n2"), metadata=c.auth)
        with pytest.raises(grpc.RpcError) as gone:
            c.node("n2")
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        # Its copy's record went with it; with no node for it, the service waits.
        eventually(lambda: c.instances("marooned") == [], timeout=30, what="the copy's record removed")
        # A cut, not a crash: n2's runed and its copy still run.
        assert n2.proc.poll() is None
        assert str(_cwd(before.pid)).startswith(str(n2.data_dir.resolve()))
    finally:
        ns.heal()

    def registered() -> bool:
        nodes = c.node_api.ListNodes(node_pb2.ListNodesRequest(), metadata=c.auth).nodes
        assert [n.status for n in nodes if n.id == "n2"] == ["Ready"], [(n.id, n.status) for n in nodes]
        return True

    eventually(registered, timeout=60, what="n2 registered again")

    def converged() -> bool:
        [now] = c.running("marooned", 1)
        assert now.node_id == "n2" and now.id != before.id, (now.id, before.id)
        # The old copy is stopped, not left running beside the new one.
        assert not str(_cwd(before.pid)).startswith(str(n2.data_dir.resolve())), before.pid
        return True

    eventually(converged, timeout=60, what="one new copy on n2, the old one stopped")
    # n2 stopped its copy because its record was gone (not only when a placement moved it away: a
    # watch resumed after the cut skips that change, and the copy ran on unlisted).
    assert f"instance default/{before.id}: its record was deleted by another host; stopping it" in n2.output()
    c.delete("marooned")
