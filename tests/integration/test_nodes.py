"""A cluster on one machine: a control plane and three nodes on one PostgreSQL database.

The control plane is a whole runed (grpc, rest, controller) whose controller only schedules
(``node.enabled: false``); each node is ``runed serve --role node`` with its own data dir, node id
and loopback address (127.0.0.2, .3, .4). The module shares the cluster; the node-failure test kills
a node and so runs last.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rune.api import (
    common_pb2,
    health_pb2,
    health_pb2_grpc,
    instance_pb2,
    instance_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)
from runed.model import objects
from runed.store.base import iter_all
from runed.store.open import open_url
from tests.e2e.rune import Rune
from tests.harness import Runed, Runeds, reap_data_dir
from tests.integration.orch import EXITER, RUNEFILE
from tests.pgsupport import pg_database, reset_schema  # noqa: F401  (fixture)
from tests.support import Metadata, bootstrap_metadata, error_info, eventually

NODES = {"n1": "127.0.0.2", "n2": "127.0.0.3", "n3": "127.0.0.4"}
# Fast heartbeats: a dead node is NotReady after 3 s and its instances move 2 s later.
TIMINGS = """
  heartbeat_seconds: 0.5
  not_ready_seconds: 3
  lost_after_seconds: 2
"""
KEY_FILES = ("auth.key", "kek.b64")
# Each test waits on a cluster of four runeds converging.
pytestmark = pytest.mark.slow
RUNNING = instance_pb2.INSTANCE_STATUS_RUNNING
# Ignores SIGTERM: a graceful stop takes the whole grace period (then SIGKILL).
STUBBORN = (
    "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('run', flush=True)\ntime.sleep(600)\n"
)


def runefile(tmp: Path, name: str, node: str) -> list[str]:
    path = tmp / f"{name}.yaml"
    path.write_text(RUNEFILE + "node:\n" + node + TIMINGS)
    return ["--config", str(path)]


@dataclass
class Cluster:
    api: Runed
    nodes: dict[str, Runed]
    auth: Metadata
    tmp: Path
    store_url: str

    @property
    def node_api(self) -> node_pb2_grpc.NodeServiceStub:
        return node_pb2_grpc.NodeServiceStub(self.api.channel())

    @property
    def services(self) -> service_pb2_grpc.ServiceServiceStub:
        return service_pb2_grpc.ServiceServiceStub(self.api.channel())

    def cast(self, name: str, scale: int, **kw: Any) -> None:
        script = self.tmp / "sleeper.py"
        script.write_text(EXITER)
        svc = service_pb2.Service(
            name=name,
            namespace="default",
            scale=scale,
            runtime="process",
            process=common_pb2.ProcessSpec(command=sys.executable, args=[str(script), "0", "600"]),
            **kw,
        )
        self.services.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=self.auth)

    def service(self, name: str) -> service_pb2.Service:
        req = service_pb2.GetServiceRequest(name=name, namespace="default")
        svc: service_pb2.Service = self.services.GetService(req, metadata=self.auth).service
        return svc

    def instances(self, service: str) -> list[instance_pb2.Instance]:
        stub = instance_pb2_grpc.InstanceServiceStub(self.api.channel())
        resp = stub.ListInstances(instance_pb2.ListInstancesRequest(service_name=service), metadata=self.auth)
        return list(resp.instances)

    def running(self, service: str, n: int) -> list[instance_pb2.Instance]:
        """Exactly ``n`` instances, all RUNNING (an AssertionError for eventually())."""
        insts = self.instances(service)
        states = [(i.name, i.node_id, i.status) for i in insts]
        assert len(insts) == n and all(i.status == RUNNING for i in insts), states
        return insts

    def delete(self, name: str) -> None:
        req = service_pb2.DeleteServiceRequest(name=name, namespace="default", force=True, now=True)
        self.services.DeleteService(req, metadata=self.auth)
        eventually(lambda: not self.instances(name), timeout=30, what=f"{name}'s instances gone")

    def node_health(self, name: str = "") -> dict[str, int]:
        stub = health_pb2_grpc.HealthServiceStub(self.api.channel())
        req = health_pb2.GetHealthRequest(component_type="node", name=name)
        return {c.id: c.status for c in stub.GetHealth(req, metadata=self.auth).components}

    def node(self, nid: str) -> node_pb2.Node:
        node: node_pb2.Node = self.node_api.GetNode(node_pb2.GetNodeRequest(id=nid), metadata=self.auth).node
        return node


def start_node(runeds: Runeds, tmp: Path, nid: str, store_url: str) -> Runed:
    spec = f"  id: {nid}\n  address: {NODES[nid]}\n  labels:\n    name: {nid}\n"
    return runeds.start(
        tmp / nid, args=runefile(tmp, nid, spec), env={"RUNE_STORE_URL": store_url}, role="node", ready=False
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_database: str) -> Iterator[Cluster]:  # noqa: F811
    reset_schema(pg_database)
    tmp = tmp_path_factory.mktemp("nodes")
    runeds = Runeds()
    try:
        api = runeds.start(
            tmp / "cp", args=runefile(tmp, "cp", "  enabled: false\n"), env={"RUNE_STORE_URL": pg_database}, ready=False
        )
        # Hosts sharing a store share its keys: each node gets the control plane's before its first start.
        eventually(lambda: all((api.data_dir / f).exists() for f in KEY_FILES), timeout=60, what="the keys")
        nodes = {}
        for nid in NODES:
            (tmp / nid).mkdir()
            for f in KEY_FILES:
                shutil.copy2(api.data_dir / f, tmp / nid / f)
            nodes[nid] = start_node(runeds, tmp, nid, pg_database)
        for r in (api, *nodes.values()):
            r.wait_ready(90)
        c = Cluster(api, nodes, bootstrap_metadata(api.channel()), tmp, pg_database)
        eventually(lambda: len(c.node_api.ListNodes(node_pb2.ListNodesRequest(), metadata=c.auth).nodes) == 3)
        yield c
    finally:
        runeds.close()


def test_nodes_register_with_their_address_capacity_and_labels(cluster: Cluster) -> None:
    nodes = cluster.node_api.ListNodes(node_pb2.ListNodesRequest(), metadata=cluster.auth).nodes
    assert {n.id: n.address for n in nodes} == NODES
    for n in nodes:
        assert n.status == "Ready" and not n.cordoned and n.labels["name"] == n.id
        assert n.capacity.cpu_millis >= 1000 and n.capacity.memory_bytes > 0
    picked = cluster.node_api.ListNodes(node_pb2.ListNodesRequest(label_selector={"name": "n2"}), metadata=cluster.auth)
    assert [n.id for n in picked.nodes] == ["n2"]
    # GetHealth's node components: the API host itself ("local", as a lone runed) and every node.
    healthy = health_pb2.HEALTH_STATUS_HEALTHY
    assert {k: v for k, v in cluster.node_health().items() if k != "local"} == dict.fromkeys(NODES, healthy)
    assert cluster.node_health("n2") == {"n2": healthy}


def test_scale_6_spreads_over_the_three_nodes(cluster: Cluster) -> None:
    cluster.cast("spread", 6)
    insts = eventually(lambda: cluster.running("spread", 6), timeout=60)
    assert Counter(i.node_id for i in insts) == {"n1": 2, "n2": 2, "n3": 2}
    for inst in insts:
        node = cluster.nodes[inst.node_id]
        assert inst.ip == NODES[inst.node_id]
        # The process really runs on that node: in its data dir's instance directory.
        assert os.readlink(f"/proc/{inst.pid}/cwd").startswith(str((node.data_dir / "instances" / inst.id).resolve()))
    # The service's status counts the instances of every node.
    eventually(lambda: cluster.service("spread").status == service_pb2.SERVICE_STATUS_RUNNING, timeout=30)
    assert cluster.node("n1").instances == 2
    cluster.delete("spread")


def test_a_service_too_big_for_every_node_stays_pending_with_the_reason(cluster: Cluster) -> None:
    cluster.cast("huge", 1, resources=common_pb2.Resources(memory=common_pb2.ResourceLimit(request="1000Ti")))

    def pending() -> bool:
        svc = cluster.service("huge")
        assert svc.status == service_pb2.SERVICE_STATUS_PENDING, svc
        assert svc.status_message == "0/3 nodes: 3 insufficient memory", svc.status_message
        return True

    eventually(pending, timeout=30)
    assert cluster.instances("huge") == []
    cluster.delete("huge")


def test_cordoned_node_gets_no_new_instances(cluster: Cluster) -> None:
    cluster.node_api.CordonNode(node_pb2.NodeActionRequest(id="n3"), metadata=cluster.auth)
    try:
        cluster.cast("avoid", 4)
        insts = eventually(lambda: cluster.running("avoid", 4), timeout=60)
        assert Counter(i.node_id for i in insts) == {"n1": 2, "n2": 2}
        big = common_pb2.Resources(memory=common_pb2.ResourceLimit(request="1000Ti"))
        cluster.cast("huge2", 1, resources=big)
        eventually(lambda: cluster.service("huge2").status_message == "0/3 nodes: 2 insufficient memory, 1 cordoned")
        # A node selector narrows the nodes further.
        cluster.cast("picky", 1, node_selector={"name": "n1"})
        assert [i.node_id for i in eventually(lambda: cluster.running("picky", 1), timeout=60)] == ["n1"]
    finally:
        cluster.node_api.UncordonNode(node_pb2.NodeActionRequest(id="n3"), metadata=cluster.auth)
    for name in ("avoid", "huge2", "picky"):
        cluster.delete(name)


def test_drain_moves_every_instance_off_the_node(cluster: Cluster) -> None:
    cluster.cast("moving", 3)
    before = eventually(lambda: cluster.running("moving", 3), timeout=60)
    assert sorted(i.node_id for i in before) == ["n1", "n2", "n3"]
    old = next(i for i in before if i.node_id == "n1")
    cluster.node_api.DrainNode(node_pb2.NodeActionRequest(id="n1"), metadata=cluster.auth)
    try:
        assert cluster.node("n1").draining

        def moved() -> list[instance_pb2.Instance]:
            insts = cluster.running("moving", 3)
            assert "n1" not in {i.node_id for i in insts}, [(i.name, i.node_id) for i in insts]
            return insts

        after = eventually(moved, timeout=60)
        assert sorted(i.name for i in after) == ["moving-0", "moving-1", "moving-2"]
        # Its replacement may run before the old process has ended (its SIGTERM is on its way): gone soon.
        eventually(
            lambda: not Path(f"/proc/{old.pid}").exists() or old.pid in {i.pid for i in after},
            timeout=30,
            what="the drained node's process ended",
        )
        assert cluster.node("n1").instances == 0
    finally:
        cluster.node_api.UncordonNode(node_pb2.NodeActionRequest(id="n1"), metadata=cluster.auth)
        # Also after a failure: the next tests count each node's instances.
        cluster.delete("moving")


def test_drain_moves_an_instance_only_once_the_service_s_others_are_ready(cluster: Cluster) -> None:
    gate = cluster.tmp / "gate"
    check = f"import os, sys; sys.exit(0 if os.path.exists({str(gate)!r}) else 1)"
    probe = common_pb2.Probe(
        type=common_pb2.PROBE_TYPE_COMMAND, command=[sys.executable, "-c", check], period_seconds=1
    )
    cluster.cast("gated", 2, health=common_pb2.HealthCheck(readiness=probe))
    drained = eventually(lambda: cluster.running("gated", 2), timeout=60)[0].node_id
    cluster.node_api.DrainNode(node_pb2.NodeActionRequest(id=drained), metadata=cluster.auth)
    try:
        # A scheduler pass after the drain (each pass looks at every service): it places a new one.
        cluster.cast("marker", 1)
        eventually(lambda: cluster.running("marker", 1), timeout=60)
        # The service's other instance is not ready: the drained node keeps its instance.
        assert cluster.node(drained).instances == 1 and drained in {i.node_id for i in cluster.instances("gated")}
        gate.write_text("")

        def moved() -> bool:
            insts = cluster.running("gated", 2)
            assert drained not in {i.node_id for i in insts}, [(i.name, i.node_id) for i in insts]
            return True

        eventually(moved, timeout=60)
    finally:
        cluster.node_api.UncordonNode(node_pb2.NodeActionRequest(id=drained), metadata=cluster.auth)
    for name in ("gated", "marker"):
        cluster.delete(name)


def test_rune_get_and_describe_nodes(cluster: Cluster, tmp_path: Path) -> None:
    rune = Rune(home=tmp_path / "home", server=cluster.api.grpc_target, procs=[])
    token = dict(cluster.auth)["authorization"].removeprefix("Bearer ")
    assert rune("login", "--token", token).returncode == 0
    out = rune("get", "nodes")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()[1:]}
    assert set(rows) == set(NODES) and all(r[1] == "Ready" and r[2] == NODES[n] for n, r in rows.items()), out.stdout
    cordon = rune("cordon", "n2")
    assert cordon.returncode == 0 and "node/n2 cordoned" in cordon.stdout, cordon.stderr
    assert "Ready,SchedulingDisabled" in rune("get", "nodes", "n2").stdout
    assert rune("uncordon", "n2").returncode == 0
    described = rune("describe", "node", "n3")
    assert described.returncode == 0 and "address: 127.0.0.4" in described.stdout, described.stdout


def node_series(cluster: Cluster) -> dict[str, dict[str, float]]:
    """The API's /metrics, parsed: each rune_node_* family by node."""
    text = httpx.get(f"{cluster.api.http_base}/metrics", timeout=30).text
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("rune_node_"):
                out.setdefault(sample.name, {})[sample.labels["node"]] = sample.value
    return out


def test_metrics_has_each_node_s_readiness_capacity_requests_and_instances(cluster: Cluster) -> None:
    res = common_pb2.Resources(
        cpu=common_pb2.ResourceLimit(request="250m"), memory=common_pb2.ResourceLimit(request="64Mi")
    )
    cluster.cast("metered", 2, resources=res, node_selector={"name": "n2"})
    eventually(lambda: cluster.running("metered", 2), timeout=60)
    series = node_series(cluster)
    assert series["rune_node_ready"] == dict.fromkeys(NODES, 1.0)
    assert series["rune_node_schedulable"] == dict.fromkeys(NODES, 1.0)
    assert series["rune_node_instances"] == {"n1": 0, "n2": 2, "n3": 0}
    assert series["rune_node_cpu_requested_cores"] == {"n1": 0, "n2": 0.5, "n3": 0}
    assert series["rune_node_memory_requested_bytes"] == {"n1": 0, "n2": 128 * 2**20, "n3": 0}
    for nid in NODES:
        node = cluster.node(nid)
        assert series["rune_node_cpu_allocatable_cores"][nid] == node.allocatable.cpu_millis / 1000
        assert series["rune_node_memory_allocatable_bytes"][nid] == node.allocatable.memory_bytes
        # Beats every 0.5 s; NotReady after 3 s without one.
        assert 0 <= series["rune_node_heartbeat_age_seconds"][nid] < 3
    cluster.node_api.CordonNode(node_pb2.NodeActionRequest(id="n3"), metadata=cluster.auth)
    try:
        assert node_series(cluster)["rune_node_schedulable"] == {"n1": 1.0, "n2": 1.0, "n3": 0.0}
    finally:
        cluster.node_api.UncordonNode(node_pb2.NodeActionRequest(id="n3"), metadata=cluster.auth)
    cluster.delete("metered")


def test_a_scaling_operation_completes_counting_every_node_s_instances(cluster: Cluster) -> None:
    cluster.cast("grown", 1)
    eventually(lambda: cluster.running("grown", 1), timeout=60)
    req = service_pb2.ScaleServiceRequest(name="grown", namespace="default", scale=3)
    cluster.services.ScaleService(req, metadata=cluster.auth)
    insts = eventually(lambda: cluster.running("grown", 3), timeout=60)
    assert sorted(i.node_id for i in insts) == ["n1", "n2", "n3"]
    # The leader advances the operation, counting the instances of every node (each node alone runs one).
    store = open_url(cluster.store_url)
    try:

        def completed() -> bool:
            ops = [
                r.data for r in iter_all(store, objects.SCALING_OPERATION, "default") if r.data["service"] == "grown"
            ]
            assert [(op["status"], op["current"]) for op in ops] == [("completed", 3)], ops
            return True

        eventually(completed, timeout=30)
    finally:
        store.close()
    cluster.delete("grown")


def test_a_deletion_completes_once_the_instances_of_every_node_are_gone(cluster: Cluster) -> None:
    script = cluster.tmp / "stubborn.py"
    script.write_text(STUBBORN)
    proc = common_pb2.ProcessSpec(command=sys.executable, args=[str(script)])
    svc = service_pb2.Service(
        name="stubborn", namespace="default", scale=1, runtime="process", process=proc, node_selector={"name": "n1"}
    )
    cluster.services.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=cluster.auth)
    [inst] = eventually(lambda: cluster.running("stubborn", 1), timeout=60)
    # Running once exec'd: it ignores SIGTERM once it said so (before, a SIGTERM would end it at once).
    log = cluster.nodes["n1"].data_dir / "instances" / inst.id / "log.jsonl"
    eventually(lambda: log.exists() and '"run"' in log.read_text(), timeout=30, what="the program ignoring SIGTERM")
    req = service_pb2.DeleteServiceRequest(name="stubborn", namespace="default", grace_period=5, detach=True)
    asked = time.monotonic()
    op_id = cluster.services.DeleteService(req, metadata=cluster.auth).deletion_id

    def done() -> service_pb2.DeletionOperation:
        get = service_pb2.GetDeletionStatusRequest(namespace="default", name=op_id)
        op: service_pb2.DeletionOperation = cluster.services.GetDeletionStatus(get, metadata=cluster.auth).operation
        assert op.status == "completed", op.status
        return op

    op = eventually(done, timeout=60)
    # Completed once n1 has stopped its copy (killed after the grace period), not at once by the nodes
    # that run none; and by one driver.
    assert time.monotonic() - asked >= 5
    assert cluster.instances("stubborn") == []
    assert (op.total_instances, op.deleted_instances) == (1, 1)


def test_a_killed_node_is_replaced_elsewhere_and_stops_its_copies_when_back(cluster: Cluster) -> None:
    cluster.cast("survivor", 3)
    before = eventually(lambda: cluster.running("survivor", 3), timeout=60)
    lost = next(i for i in before if i.node_id == "n3")
    n3 = cluster.nodes["n3"]
    # The node's whole process tree: its runed and the instances and shims it started.
    assert n3.proc is not None
    os.killpg(n3.proc.pid, signal.SIGKILL)
    reap_data_dir(n3.data_dir)
    eventually(lambda: cluster.node("n3").status == "NotReady", timeout=30, what="n3 NotReady")
    assert cluster.node_health("n3") == {"n3": health_pb2.HEALTH_STATUS_UNHEALTHY}

    def replaced() -> list[instance_pb2.Instance]:
        insts = [i for i in cluster.instances("survivor") if i.node_id != "n3"]
        assert len(insts) == 3 and all(i.status == RUNNING for i in insts), [(i.name, i.node_id) for i in insts]
        return insts

    after = eventually(replaced, timeout=30, what="n3's instance running on another node")
    assert lost.name in {i.name for i in after}
    gone = next(i for i in cluster.instances("survivor") if i.node_id == "n3")
    assert gone.status_message.startswith("Lost: node n3 has not sent a heartbeat"), gone.status_message
    # Back: n3 stops (and forgets) what was placed elsewhere meanwhile; no name runs twice.
    n3.stop()
    n3.start(90)
    eventually(lambda: cluster.node("n3").status == "Ready", timeout=30, what="n3 Ready again")

    def converged() -> bool:
        insts = cluster.instances("survivor")
        assert sorted(i.name for i in insts) == ["survivor-0", "survivor-1", "survivor-2"], [
            (i.name, i.node_id) for i in insts
        ]
        return True

    eventually(converged, timeout=30)
    cluster.delete("survivor")


def test_a_node_gone_for_good_is_deleted_with_its_instance_records(cluster: Cluster, tmp_path: Path) -> None:
    """DeleteNode (``rune delete node``, ``DELETE /v1/nodes/{id}``) forgets a node that is not Ready and the
    records of the instances it ran; a Ready node is refused; a deleted node that comes back registers anew."""
    cluster.cast("orphaned", 3)
    eventually(lambda: cluster.running("orphaned", 3), timeout=60)
    with pytest.raises(grpc.RpcError) as refused:
        cluster.node_api.DeleteNode(node_pb2.NodeActionRequest(id="n1"), metadata=cluster.auth)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'node "n1" is Ready' in (refused.value.details() or "")
    assert error_info(refused.value).reason == "NODE_READY"
    with pytest.raises(grpc.RpcError) as missing:
        cluster.node_api.DeleteNode(node_pb2.NodeActionRequest(id="n9"), metadata=cluster.auth)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    n3 = cluster.nodes["n3"]
    assert n3.proc is not None
    os.killpg(n3.proc.pid, signal.SIGKILL)
    reap_data_dir(n3.data_dir)

    def replaced() -> bool:
        insts = cluster.instances("orphaned")
        assert len([i for i in insts if i.node_id != "n3" and i.status == RUNNING]) == 3, insts
        assert any(i.node_id == "n3" for i in insts), "the lost copy's record, until the node is deleted"
        return True

    eventually(replaced, timeout=30, what="n3's instance running elsewhere")
    rune = Rune(home=tmp_path / "home", server=cluster.api.grpc_target, procs=[])
    token = dict(cluster.auth)["authorization"].removeprefix("Bearer ")
    assert rune("login", "--token", token).returncode == 0
    out = rune("delete", "node", "n3")
    assert out.returncode == 0 and "node/n3 deleted (1 instance record(s) removed)" in out.stdout, (
        out.stdout,
        out.stderr,
    )

    nodes = cluster.node_api.ListNodes(node_pb2.ListNodesRequest(), metadata=cluster.auth).nodes
    assert sorted(n.id for n in nodes) == ["n1", "n2"]
    assert "n3" not in cluster.node_health()
    insts = cluster.instances("orphaned")
    assert len(insts) == 3 and not [i for i in insts if i.node_id == "n3"], [(i.name, i.node_id) for i in insts]
    gone = httpx.delete(f"{cluster.api.http_base}/v1/nodes/n3", headers=dict(cluster.auth), timeout=30)
    assert gone.status_code == 404, gone.text

    # Back: it registers anew and runs nothing of what it ran (its records are gone).
    n3.stop()
    n3.start(90)
    eventually(lambda: cluster.node("n3").status == "Ready", timeout=30, what="n3 registered again")
    insts = eventually(lambda: cluster.running("orphaned", 3), timeout=30)
    assert sorted(i.name for i in insts) == ["orphaned-0", "orphaned-1", "orphaned-2"]
    cluster.delete("orphaned")


def test_a_deletion_does_not_wait_for_a_lost_node_s_copy_which_the_node_removes_when_back(cluster: Cluster) -> None:
    cluster.cast("forsaken", 1, node_selector={"name": "n3"})
    eventually(lambda: cluster.running("forsaken", 1), timeout=60)
    n3 = cluster.nodes["n3"]
    assert n3.proc is not None
    os.killpg(n3.proc.pid, signal.SIGKILL)
    reap_data_dir(n3.data_dir)

    def lost() -> bool:
        [copy] = cluster.instances("forsaken")
        assert copy.status_message.startswith("Lost: node n3"), copy.status_message
        return True

    eventually(lost, timeout=30, what="n3's copy marked lost")
    req = service_pb2.DeleteServiceRequest(name="forsaken", namespace="default", detach=True)
    op_id = cluster.services.DeleteService(req, metadata=cluster.auth).deletion_id

    def done() -> service_pb2.DeletionOperation:
        get = service_pb2.GetDeletionStatusRequest(namespace="default", name=op_id)
        op: service_pb2.DeletionOperation = cluster.services.GetDeletionStatus(get, metadata=cluster.auth).operation
        assert op.status == "completed", (op.status, op.finalizer_status)
        return op

    # Completed while n3 is away (nobody can stop its copy; n3 itself does once back).
    eventually(done, timeout=30, what="the deletion completed without n3")
    with pytest.raises(grpc.RpcError) as gone:
        cluster.service("forsaken")
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    n3.stop()
    n3.start(90)
    eventually(lambda: cluster.node("n3").status == "Ready", timeout=30, what="n3 Ready again")
    eventually(lambda: cluster.instances("forsaken") == [], timeout=30, what="n3 removed its copy's record")
