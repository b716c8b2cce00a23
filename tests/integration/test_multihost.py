"""Several runed hosts on one PostgreSQL database: shared reads and watches, one controller, matching keys.

Each "host" is a whole runed (supervisor, grpc, rest and controller roles) with its own data dir,
listening on its own loopback address (127.0.0.2, 127.0.0.3), as the README's "Several hosts"
section sets them up: the second host gets a copy of the first one's ``auth.key`` and ``kek.b64``.
One controller leads, the other stands by. The module shares the two hosts; the failover test
kills the leading host and so runs last.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import psycopg
import pytest

from rune.api import (
    auth_pb2,
    auth_pb2_grpc,
    common_pb2,
    health_pb2,
    health_pb2_grpc,
    instance_pb2,
    instance_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)
from runed.server.supervisor import EXIT_FATAL
from tests.harness import Runed, Runeds
from tests.integration.orch import RUNEFILE, SERVER
from tests.pgsupport import pg_database, reset_schema  # noqa: F401  (fixture)
from tests.support import Metadata, bearer, bootstrap_metadata, code_of, eventually, make_token

# A short lease keeps the failover test short (the default is 10 s); a low rate limit lets a test
# exhaust one host's bucket (polling in eventually() stays under it).
ENV = {
    "RUNE_CONTROLLER_LEASE_SECONDS": "3",
    "RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "30",
    "RUNE_AUTH_RATE_LIMIT_BURST": "30",
}
KEY_FILES = ("auth.key", "kek.b64")


def host_args(address: str, store_url: str, tmp: Path) -> list[str]:
    """The flags of one host: both listeners on its own address, the shared store, fast controller
    settings, and a node id of its own (on separate machines the hostnames differ; here they do not)."""
    cfg = tmp / f"runefile-{address}.yaml"
    # Short node timings: the dead leader's node is lost, and its instances placed elsewhere, in seconds.
    node = "\nnode:\n  id: host-{}\n  heartbeat_seconds: 0.5\n  not_ready_seconds: 2\n  lost_after_seconds: 2\n"
    cfg.write_text(RUNEFILE + node.format(address.rsplit(".", 1)[1]))
    return [
        "--config",
        str(cfg),
        "--grpc-addr",
        f"{address}:0",
        "--http-addr",
        f"{address}:0",
        "--store-url",
        store_url,
    ]


def copy_keys(src: Path, dst: Path) -> None:
    """What an operator does for a new host: the first host's key files, before its first start."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in KEY_FILES:
        shutil.copy2(src / name, dst / name)


@dataclass
class Cluster:
    a: Runed
    b: Runed
    auth: Metadata
    tmp: Path
    store_url: str

    @property
    def leader(self) -> Runed:
        """The host whose controller holds the lease (the other one's reports ready as ``standby``)."""
        hosts = [h for h in (self.a, self.b) if h.address("controller") == "controller"]
        assert len(hosts) == 1, [(h.data_dir.name, h.address("controller")) for h in (self.a, self.b)]
        return hosts[0]

    @property
    def standby(self) -> Runed:
        return self.b if self.leader is self.a else self.a

    def services(self, host: Runed) -> service_pb2_grpc.ServiceServiceStub:
        return service_pb2_grpc.ServiceServiceStub(host.channel())

    def cast(self, host: Runed, name: str) -> None:
        script = self.tmp / "server.py"
        script.write_text(SERVER)
        svc = service_pb2.Service(
            name=name,
            namespace="default",
            scale=1,
            runtime="process",
            process=common_pb2.ProcessSpec(command=sys.executable, args=[str(script)]),
            # Any free port: the server runs until stopped (without PORT it exits at once, crash-looping).
            env={"PORT": "0"},
        )
        self.services(host).CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=self.auth)

    def controller_health(self, host: Runed) -> health_pb2.ComponentHealth:
        stub = health_pb2_grpc.HealthServiceStub(host.channel())
        resp = stub.GetHealth(health_pb2.GetHealthRequest(component_type="controller"), metadata=self.auth)
        assert len(resp.components) == 1, resp
        component: health_pb2.ComponentHealth = resp.components[0]
        return component

    def running(self, host: Runed, name: str) -> instance_pb2.Instance:
        """The service's one instance, RUNNING, as ``host`` reads it (an AssertionError for eventually)."""
        stub = instance_pb2_grpc.InstanceServiceStub(host.channel())
        resp = stub.ListInstances(instance_pb2.ListInstancesRequest(service_name=name), metadata=self.auth)
        states = [(i.id, i.status) for i in resp.instances]
        assert [s for _, s in states] == [instance_pb2.INSTANCE_STATUS_RUNNING], states
        inst: instance_pb2.Instance = resp.instances[0]
        return inst


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_database: str) -> Iterator[Cluster]:  # noqa: F811
    reset_schema(pg_database)
    tmp = tmp_path_factory.mktemp("multihost")
    runeds = Runeds()
    try:
        a = runeds.start(tmp / "a", args=host_args("127.0.0.2", pg_database, tmp), env=ENV, ready=False)
        # The second host starts as soon as the first has created its keys: either may then lead.
        eventually(lambda: all((a.data_dir / f).exists() for f in KEY_FILES), timeout=60, what="the first keys")
        copy_keys(a.data_dir, tmp / "b")
        b = runeds.start(tmp / "b", args=host_args("127.0.0.3", pg_database, tmp), env=ENV, ready=False)
        a.wait_ready(90)
        b.wait_ready(90)
        yield Cluster(a, b, bootstrap_metadata(a.channel()), tmp, pg_database)
    finally:
        runeds.close()


def test_hosts_listen_on_their_own_addresses_and_one_controller_leads(cluster: Cluster) -> None:
    assert cluster.a.grpc_target.startswith("127.0.0.2:") and cluster.a.http_base.startswith("http://127.0.0.2:")
    assert cluster.b.grpc_target.startswith("127.0.0.3:") and cluster.b.http_base.startswith("http://127.0.0.3:")
    # One controller took the lease; the other reports ready as a standby.
    assert cluster.standby.address("controller") == "standby"
    assert "controller=standby" in cluster.standby.output()
    assert "controller=controller" in cluster.leader.output()
    # Every host's health says which controller leads.
    for host in (cluster.a, cluster.b):
        c = cluster.controller_health(host)
        assert c.status == health_pb2.HEALTH_STATUS_HEALTHY, c
        assert c.id.startswith(f"{socket.gethostname()}:{cluster.leader.data_dir}:"), c.id
        assert c.message.startswith(f"leader {c.id}, lease 3s"), c.message


def test_a_write_on_one_host_is_read_and_watched_on_the_other(cluster: Cluster) -> None:
    watch = cluster.services(cluster.b).WatchServices(
        service_pb2.WatchServicesRequest(namespace="default", since_revision=0),
        metadata=cluster.auth,
        timeout=30,
    )
    try:
        cluster.cast(cluster.a, "shared")
        for ev in watch:
            if ev.service.name == "shared":
                assert ev.event_type == common_pb2.EVENT_TYPE_ADDED
                break
    finally:
        watch.cancel()
    got = cluster.services(cluster.b).GetService(
        service_pb2.GetServiceRequest(name="shared", namespace="default"), metadata=cluster.auth
    )
    assert got.service.name == "shared"
    token = cluster.auth[0][1]
    r = httpx.get(f"{cluster.b.http_base}/v1/namespaces/default/services/shared", headers={"authorization": token})
    assert r.status_code == 200, r.text
    # The leading controller runs it, on its own host; both hosts report the same instance.
    inst = eventually(lambda: cluster.running(cluster.a, "shared"), timeout=30)
    assert cluster.running(cluster.b, "shared").id == inst.id
    assert (cluster.leader.data_dir / "instances" / inst.id).is_dir()
    assert not (cluster.standby.data_dir / "instances" / inst.id).exists()


def test_bootstrap_happens_once_across_hosts(cluster: Cluster) -> None:
    # The fixture bootstrapped on the first host: the second refuses, and accepts the first's token.
    from rune.api import admin_pb2, admin_pb2_grpc

    admin_b = admin_pb2_grpc.AdminServiceStub(cluster.b.channel())
    code, details = code_of(admin_b.AdminBootstrap, admin_pb2.AdminBootstrapRequest())
    assert code == grpc.StatusCode.FAILED_PRECONDITION, details
    assert "already bootstrapped" in details
    r = httpx.post(f"{cluster.b.http_base}/rune.api.AdminService/AdminBootstrap", json={})
    assert r.status_code == 412, r.text
    cluster.services(cluster.b).ListServices(
        service_pb2.ListServicesRequest(namespace="default"), metadata=cluster.auth
    )


def test_an_exec_session_used_on_another_host_fails_clearly(cluster: Cluster) -> None:
    # Exec reaches the instances of its own host: the leader's.
    here, there = cluster.leader, cluster.standby
    cluster.cast(here, "shell")
    eventually(lambda: cluster.running(here, "shell"), timeout=30)
    headers = {"authorization": cluster.auth[0][1]}
    r = httpx.post(
        f"{here.http_base}/v1/namespaces/default/exec/shell", json={"command": ["sleep", "30"]}, headers=headers
    )
    assert r.status_code == 201, r.text
    sid = r.json()["sessionId"]
    for path in (f"sessions/{sid}/output", f"sessions/{sid}/input"):
        url = f"{there.http_base}/v1/namespaces/default/exec/{path}"
        other = (
            httpx.get(url, headers=headers) if path.endswith("output") else httpx.post(url, json={}, headers=headers)
        )
        assert other.status_code == 404, other.text
        message = other.json()["message"]
        assert f'exec session "{sid}" not found' in message and "exec sessions are per host" in message, message
    # On its own host the session is there: end it.
    done = httpx.post(
        f"{here.http_base}/v1/namespaces/default/exec/sessions/{sid}/input",
        json={"signal": {"name": "KILL"}},
        headers=headers,
    )
    assert done.status_code == 204, done.text


def test_a_host_whose_keys_differ_refuses_to_start(cluster: Cluster) -> None:
    # A host with its own fresh keys (nothing copied): the token key is the first difference named.
    # One role is enough: each role checks the keys as it starts.
    fresh = Runed(cluster.tmp / "fresh", args=host_args("127.0.0.4", cluster.store_url, cluster.tmp), role="grpc")
    # The same token key but another KEK.
    other_kek = cluster.tmp / "other-kek"
    copy_keys(cluster.a.data_dir, other_kek)
    (other_kek / "kek.b64").write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    wrong_kek = Runed(other_kek, args=host_args("127.0.0.5", cluster.store_url, cluster.tmp), role="grpc")
    try:
        for host in (fresh, wrong_kek):
            host.launch()
        assert [host.wait(60) for host in (fresh, wrong_kek)] == [EXIT_FATAL, EXIT_FATAL]
    finally:
        for host in (fresh, wrong_kek):
            host.stop()
    out = fresh.output()
    assert f"the token HMAC key {fresh.data_dir / 'auth.key'} does not match the one the store's other hosts" in out
    assert "tokens issued on one would be rejected on the other" in out, out
    assert f"Copy auth.key from a host that already uses this store into {fresh.data_dir} (mode 0600)" in out, out
    out = wrong_kek.output()
    assert "the token HMAC key" not in out, out
    assert "the secrets KEK" in out and "Copy kek.b64" in out and "RUNE_MASTER_KEY" in out, out
    # The store holds check values, never the keys themselves.
    with psycopg.connect(cluster.store_url) as conn:
        stored = str(conn.execute("SELECT data FROM objects WHERE kind = 'keycheck'").fetchall())
    assert "auth_key" in stored and "kek" in stored, stored
    for name in KEY_FILES:
        assert (cluster.a.data_dir / name).read_text().strip() not in stored
    # Neither start changed what the store expects: the running hosts still serve.
    cluster.services(cluster.b).ListServices(
        service_pb2.ListServicesRequest(namespace="default"), metadata=cluster.auth
    )


def test_rate_limits_are_counted_per_host(cluster: Cluster) -> None:
    secret = make_token(cluster.a, cluster.auth, "limited", ["readonly"])
    on_a = auth_pb2_grpc.AuthServiceStub(cluster.a.channel())
    on_b = auth_pb2_grpc.AuthServiceStub(cluster.b.channel())
    for _ in range(1000):
        code, _ = code_of(on_a.WhoAmI, auth_pb2.WhoAmIRequest(), metadata=bearer(secret))
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            break
        assert code == grpc.StatusCode.OK
    else:
        raise AssertionError("the first host never limited the token")
    # The other host keeps its own bucket for the same token: full.
    assert code_of(on_b.WhoAmI, auth_pb2.WhoAmIRequest(), metadata=bearer(secret))[0] == grpc.StatusCode.OK


@pytest.mark.slow
def test_a_clean_stop_of_the_leader_hands_the_lease_over(cluster: Cluster) -> None:
    """SIGTERM: the leader deletes its lease record on the way out, so the standby takes a free lease
    at its next look instead of waiting out the lease's ttl. The stopped host then starts again, as
    the standby (the next test kills the leader)."""
    leader, standby = cluster.leader, cluster.standby
    assert leader.stop() == 0
    eventually(lambda: standby.address("controller") == "controller", timeout=60, what="the standby leads")
    # A lease left behind is only taken after its ttl, with a warning; a released one is taken as free.
    assert "did not renew within" not in standby.output()
    assert cluster.controller_health(standby).id.startswith(f"{socket.gethostname()}:{standby.data_dir}:")
    leader.launch().wait_ready(90)
    eventually(lambda: leader.address("controller") == "standby", timeout=60, what="the old leader stands by")
    assert cluster.leader is standby


@pytest.mark.slow
def test_the_standby_takes_over_when_the_leading_host_dies(cluster: Cluster) -> None:
    """Runs last: it kills the first host (supervisor and roles, SIGKILL: no lease release)."""
    dead, standby = cluster.leader, cluster.standby
    assert dead.proc is not None
    os.killpg(dead.proc.pid, signal.SIGKILL)
    dead.proc.wait(10)
    eventually(lambda: standby.address("controller") == "controller", timeout=60, what="the standby leads")
    assert cluster.controller_health(standby).id.startswith(f"{socket.gethostname()}:{standby.data_dir}:")
    cluster.cast(standby, "after")
    inst = eventually(lambda: cluster.running(standby, "after"), timeout=30)
    # The new one runs on the new leader's host, from its data dir.
    assert (standby.data_dir / "instances" / inst.id).is_dir()

    # The dead leader's node is lost: its instances are placed on the new leader's host.
    def moved() -> bool:
        stub = instance_pb2_grpc.InstanceServiceStub(standby.channel())
        insts = stub.ListInstances(instance_pb2.ListInstancesRequest(service_name="shared"), metadata=cluster.auth)
        here = [i for i in insts.instances if (standby.data_dir / "instances" / i.id).is_dir()]
        assert [i.status for i in here] == [instance_pb2.INSTANCE_STATUS_RUNNING], insts
        return True

    eventually(moved, timeout=60, what="the dead leader's instance runs on the new leader's host")
