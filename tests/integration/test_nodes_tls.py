"""The node channel over TLS (``node.tls``): an API host reaches a node's logs and exec only after
checking the node's certificate against the cluster's CA, and never in plaintext.

A control plane (``node.enabled: false``) and node n1 (127.0.0.2, a certificate for that address)
on one PostgreSQL database; two more API hosts beside them: one trusting another CA, one without
``node.tls``.
"""

from __future__ import annotations

import shutil
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from rune.api import (
    exec_pb2,
    exec_pb2_grpc,
    instance_pb2,
    instance_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
)
from runed.model.nodes import NODE, SCOPE, Node
from runed.store.open import open_url
from tests.harness import Runed, Runeds
from tests.integration.test_nodes import KEY_FILES, NODES, RUNNING, runefile
from tests.integration.test_nodes_channel import cast_ticker
from tests.pgsupport import pg_database, reset_schema  # noqa: F401  (fixture)
from tests.pki import PKI, der, replace_file, served_certificate
from tests.support import Metadata, bootstrap_metadata, eventually

pytestmark = pytest.mark.slow


@dataclass
class TLSCluster:
    api: Runed
    others: dict[str, Runed]
    auth: Metadata
    store_url: str
    pki: PKI
    tmp: Path

    def instance(self) -> instance_pb2.Instance:
        stub = instance_pb2_grpc.InstanceServiceStub(self.api.channel())
        req = instance_pb2.ListInstancesRequest(service_name="ticker")
        insts = list(stub.ListInstances(req, metadata=self.auth).instances)
        assert len(insts) == 1 and insts[0].status == RUNNING, [(i.name, i.status) for i in insts]
        inst: instance_pb2.Instance = insts[0]
        return inst


def _tls(tmp: Path, pki: PKI, name: str, *, serves: bool) -> str:
    """The ``node.tls`` lines of a runefile: the CA, and a certificate for n1's address if it serves."""
    ca = tmp / f"{name}-ca.crt"
    ca.write_bytes(pki.ca_pem)
    lines = f"  tls:\n    enabled: true\n    ca_file: {ca}\n"
    if serves:
        key, cert = pki.issue(name, server=True, ips=(NODES["n1"],))
        (tmp / f"{name}.key").write_bytes(key)
        (tmp / f"{name}.crt").write_bytes(cert)
        lines += f"    cert_file: {tmp / f'{name}.crt'}\n    key_file: {tmp / f'{name}.key'}\n"
    return lines


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, pg_database: str) -> Iterator[TLSCluster]:  # noqa: F811
    reset_schema(pg_database)
    tmp = tmp_path_factory.mktemp("nodetls")
    pki, stranger = PKI(), PKI()
    env = {"RUNE_STORE_URL": pg_database}
    runeds = Runeds()
    try:
        spec = "  enabled: false\n  id: cp\n" + _tls(tmp, pki, "cp", serves=False)
        api = runeds.start(tmp / "cp", args=runefile(tmp, "cp", spec), env=env, ready=False)
        eventually(lambda: all((api.data_dir / f).exists() for f in KEY_FILES), timeout=60, what="the keys")
        specs = {
            "n1": f"  id: n1\n  address: {NODES['n1']}\n" + _tls(tmp, pki, "n1", serves=True),
            # An API host that trusts another CA, and one that has no node.tls at all.
            "wrong-ca": "  enabled: false\n  id: wrong-ca\n" + _tls(tmp, stranger, "wrong-ca", serves=False),
            "plain": "  enabled: false\n  id: plain\n",
        }
        others: dict[str, Runed] = {}
        for name, spec in specs.items():
            (tmp / name).mkdir()
            for f in KEY_FILES:
                shutil.copy2(api.data_dir / f, tmp / name / f)
            role = "node" if name == "n1" else None
            others[name] = runeds.start(tmp / name, args=runefile(tmp, name, spec), env=env, role=role, ready=False)
        for r in (api, *others.values()):
            r.wait_ready(90)
        c = TLSCluster(api, others, bootstrap_metadata(api.channel()), pg_database, pki, tmp)
        cast_ticker(api, c.auth, tmp, 1)
        eventually(c.instance, timeout=60, what="the ticker running on n1")
        yield c
    finally:
        runeds.close()


def _n1(c: TLSCluster) -> Node:
    """Node n1 as its record says."""
    store = open_url(c.store_url)
    try:
        rec = store.get(NODE, SCOPE, "n1")
        assert rec is not None
        return Node.from_record(rec.name, rec.data)
    finally:
        store.close()


def _logs(r: Runed, c: TLSCluster, inst: instance_pb2.Instance) -> list[logs_pb2.LogResponse]:
    stub = logs_pb2_grpc.LogServiceStub(r.channel())
    req = logs_pb2.LogRequest(resource_target=f"instance/{inst.id}", tail=3)
    return list(stub.StreamLogs(iter([req]), metadata=c.auth, timeout=30))


def test_logs_and_exec_reach_a_node_over_tls(tls_cluster: TLSCluster) -> None:
    c = tls_cluster
    inst = c.instance()
    assert inst.node_id == "n1"

    def read() -> list[logs_pb2.LogResponse]:
        got = _logs(c.api, c, inst)
        assert got and all(r.content.startswith("tick") for r in got), got
        return got

    eventually(read, timeout=20, what="the node's lines")
    stub = exec_pb2_grpc.ExecServiceStub(c.api.channel())
    init = exec_pb2.ExecInitRequest(instance_id=inst.id, command=["sh", "-c", "echo over-tls; exit 3"])
    out, code = b"", None
    for resp in stub.StreamExec(iter([exec_pb2.ExecRequest(init=init)]), metadata=c.auth, timeout=30):
        out += resp.stdout
        if resp.HasField("exit"):
            code = resp.exit.code
    assert (out, code) == (b"over-tls\n", 3)
    # The node says so in its record, and its channel speaks nothing but TLS.
    node = _n1(c)
    assert node.channel_tls and node.channel_port
    with grpc.insecure_channel(f"{node.address}:{node.channel_port}") as plain:
        stub_plain = logs_pb2_grpc.LogServiceStub(plain)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub_plain.StreamLogs(iter([logs_pb2.LogRequest(resource_target=f"instance/{inst.id}")]), timeout=5))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_host_that_cannot_check_the_node_s_certificate_reaches_nothing(tls_cluster: TLSCluster) -> None:
    c = tls_cluster
    inst = c.instance()
    with pytest.raises(grpc.RpcError) as other_ca:
        _logs(c.others["wrong-ca"], c, inst)
    assert other_ca.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "node n1" in (other_ca.value.details() or ""), other_ca.value.details()
    with pytest.raises(grpc.RpcError) as plain:
        _logs(c.others["plain"], c, inst)
    assert plain.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "node n1" in (plain.value.details() or "") and "set node.tls" in (plain.value.details() or "")


def test_a_node_whose_certificate_is_not_one_refuses_to_start_naming_it(
    tls_cluster: TLSCluster, tmp_path: Path
) -> None:
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    ca = tmp_path / "ca.crt"
    ca.write_bytes(PKI().ca_pem)
    spec = f"  id: n9\n  address: 127.0.0.9\n  tls:\n    enabled: true\n    ca_file: {ca}\n"
    spec += f"    cert_file: {bogus}\n    key_file: {bogus}\n"
    (tmp_path / "n9").mkdir()
    for f in KEY_FILES:
        shutil.copy2(tls_cluster.api.data_dir / f, tmp_path / "n9" / f)
    r = Runed(tmp_path / "n9", args=runefile(tmp_path, "n9", spec), env={"RUNE_STORE_URL": tls_cluster.store_url})
    r.role = "node"
    r.launch()
    try:
        assert r.proc is not None
        code = r.proc.wait(60)
    finally:
        r.stop()
    assert code != 0
    out = r.output()
    assert f"node.tls.cert_file: {bogus} is not a PEM certificate" in out, out[-2000:]
    assert f"node.tls.key_file: {bogus} is not an unencrypted PEM private key" in out
    assert "Traceback" not in out


def test_a_renewed_node_certificate_is_served_without_a_restart(tls_cluster: TLSCluster) -> None:
    c = tls_cluster
    node = _n1(c)
    target = f"{node.address}:{node.channel_port}"
    ctx = ssl.create_default_context(cadata=c.pki.ca_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    assert served_certificate(target, ctx) == der((c.tmp / "n1.crt").read_bytes())
    key, cert = c.pki.issue("n1", server=True, ips=(NODES["n1"],))
    replace_file(c.tmp / "n1.crt", cert)
    replace_file(c.tmp / "n1.key", key)
    eventually(
        lambda: served_certificate(target, ctx) == der(cert), what="the node channel serving the renewed certificate"
    )
    # The API host reaches the node's logs over a new connection with it.
    inst = c.instance()
    eventually(lambda: _logs(c.api, c, inst), timeout=20, what="the node's lines")
    assert c.others["n1"].proc is not None and c.others["n1"].proc.poll() is None, "the node restarted"


def test_a_host_given_the_cluster_s_ca_reaches_the_node_without_a_restart(tls_cluster: TLSCluster) -> None:
    """The CA file of a host that trusted another CA is replaced by the cluster's (a CA rotation):
    its next call checks the node's certificate against the new file."""
    c = tls_cluster
    inst = c.instance()
    host = c.others["wrong-ca"]
    ca_file = c.tmp / "wrong-ca-ca.crt"
    before = ca_file.read_bytes()
    with pytest.raises(grpc.RpcError) as refused:
        _logs(host, c, inst)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    try:
        replace_file(ca_file, c.pki.ca_pem)
        assert eventually(lambda: _logs(host, c, inst), timeout=20, what="the node's lines through that host")
    finally:
        replace_file(ca_file, before)
    assert host.proc is not None and host.proc.poll() is None, "the host restarted"
