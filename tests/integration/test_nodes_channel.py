"""Logs and exec of an instance on another node, through either API host, over the node channel.

Two API hosts (whole runeds) and two nodes (127.0.0.2, .3) on one PostgreSQL database. The first
API host leads and is a node itself (``api1``, its controller role serves its channel); the second
runs no instances (``node.enabled: false``), so every log and exec call it answers goes over a
node channel. The nodes refuse whatever does not carry a node token of the cluster for them. The
last test stops a node, so it runs last.
"""

from __future__ import annotations

import base64
import json
import queue
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from websockets.sync.client import connect

from rune.api import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    exec_pb2,
    exec_pb2_grpc,
    instance_pb2,
    instance_pb2_grpc,
    logs_pb2,
    logs_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)
from runed.auth import nodetoken
from runed.auth.identity import load_server_key
from runed.model.nodes import NODE, SCOPE, Node
from runed.runner.shim import rfc3339_ns
from runed.store.open import open_url
from tests.e2e.rune import Rune
from tests.harness import Runed, Runeds
from tests.integration.orch import RUNEFILE
from tests.pgsupport import pg_database, reset_schema  # noqa: F401  (fixture)
from tests.support import Metadata, bootstrap_metadata, eventually, sse_events

NODES = {"n1": "127.0.0.2", "n2": "127.0.0.3"}
# Where instances run: the leading API host and the two nodes.
HOSTS = ["api1", "n1", "n2"]
KEY_FILES = ("auth.key", "kek.b64")
pytestmark = pytest.mark.slow
# Prints a numbered line every 0.2 s: a follower sees lines written after it started.
TICKER = (
    "import itertools, sys, time\nfor n in itertools.count():\n    print('tick', n, flush=True)\n    time.sleep(0.2)\n"
)


def cast_ticker(api: Runed, auth: Metadata, tmp: Path, scale: int) -> None:
    """The service "ticker" of ``scale`` instances of :data:`TICKER`."""
    script = tmp / "ticker.py"
    script.write_text(TICKER)
    svc = service_pb2.Service(
        name="ticker",
        namespace="default",
        scale=scale,
        runtime="process",
        process=common_pb2.ProcessSpec(command=sys.executable, args=["-u", str(script)]),
    )
    service_pb2_grpc.ServiceServiceStub(api.channel()).CreateService(
        service_pb2.CreateServiceRequest(service=svc), metadata=auth
    )


@dataclass
class Cluster:
    apis: list[Runed]
    nodes: dict[str, Runed]
    auth: Metadata
    store_url: str

    @property
    def token(self) -> str:
        return dict(self.auth)["authorization"].removeprefix("Bearer ")

    def instances(self, service: str) -> list[instance_pb2.Instance]:
        stub = instance_pb2_grpc.InstanceServiceStub(self.apis[0].channel())
        req = instance_pb2.ListInstancesRequest(service_name=service)
        return list(stub.ListInstances(req, metadata=self.auth).instances)

    def channel_of(self, nid: str) -> str:
        store = open_url(self.store_url)
        try:
            rec = store.get(NODE, SCOPE, nid)
            assert rec is not None
            node = Node.from_record(nid, rec.data)
        finally:
            store.close()
        assert node.channel_port, node
        return f"{node.address}:{node.channel_port}"


def runefile(tmp: Path, name: str, node: str) -> list[str]:
    path = tmp / f"{name}.yaml"
    path.write_text(RUNEFILE + "node:\n" + node)
    return ["--config", str(path)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_database: str) -> Iterator[Cluster]:  # noqa: F811
    reset_schema(pg_database)
    tmp = tmp_path_factory.mktemp("channel")
    env = {"RUNE_STORE_URL": pg_database}
    runeds = Runeds()
    try:
        first = runeds.start(tmp / "api1", args=runefile(tmp, "api1", "  id: api1\n"), env=env, ready=False)
        # Hosts sharing a store share its keys: each gets the first host's before its first start.
        eventually(lambda: all((first.data_dir / f).exists() for f in KEY_FILES), timeout=60, what="the keys")
        others: dict[str, Runed] = {}
        for name in ("api2", *NODES):
            (tmp / name).mkdir()
            for f in KEY_FILES:
                shutil.copy2(first.data_dir / f, tmp / name / f)
            if name == "api2":
                spec = "  enabled: false\n  id: api2\n"
                others[name] = runeds.start(tmp / name, args=runefile(tmp, name, spec), env=env, ready=False)
            else:
                spec = f"  id: {name}\n  address: {NODES[name]}\n"
                args = runefile(tmp, name, spec)
                others[name] = runeds.start(tmp / name, args=args, env=env, role="node", ready=False)
        for r in (first, *others.values()):
            r.wait_ready(90)
        c = Cluster(
            [first, others["api2"]], {n: others[n] for n in NODES}, bootstrap_metadata(first.channel()), pg_database
        )
        nodes = node_pb2_grpc.NodeServiceStub(first.channel())
        eventually(lambda: len(nodes.ListNodes(node_pb2.ListNodesRequest(), metadata=c.auth).nodes) == 3, timeout=30)
        cast_ticker(first, c.auth, tmp, 3)

        def running() -> bool:
            insts = c.instances("ticker")
            assert sorted(i.node_id for i in insts) == HOSTS, [(i.name, i.node_id) for i in insts]
            assert all(i.status == instance_pb2.INSTANCE_STATUS_RUNNING for i in insts)
            return True

        eventually(running, timeout=60, what="one ticker instance on each host")
        yield c
    finally:
        runeds.close()


def on_node(c: Cluster, nid: str) -> instance_pb2.Instance:
    return next(i for i in c.instances("ticker") if i.node_id == nid)


def exec_call(
    stub: exec_pb2_grpc.ExecServiceStub, md: Metadata, init: exec_pb2.ExecInitRequest, stdin: bytes = b""
) -> tuple[bytes, int]:
    """Run one exec session (``stdin`` then EOF): its stdout and exit code."""
    q: queue.Queue[exec_pb2.ExecRequest | None] = queue.Queue()
    q.put(exec_pb2.ExecRequest(init=init))
    if stdin:
        q.put(exec_pb2.ExecRequest(stdin=stdin))
    q.put(exec_pb2.ExecRequest(stdin=b""))

    def requests() -> Iterator[exec_pb2.ExecRequest]:
        while (r := q.get()) is not None:
            yield r

    out, code = b"", -1
    call = stub.StreamExec(requests(), metadata=md, timeout=30)
    for resp in call:
        which = resp.WhichOneof("response")
        if which == "stdout":
            out += resp.stdout
        elif which == "exit":
            code = resp.exit.code
            q.put(None)
    return out, code


@pytest.mark.parametrize("api", [0, 1])
def test_exec_over_grpc_reaches_an_instance_on_a_node_through_either_api_host(cluster: Cluster, api: int) -> None:
    stub = exec_pb2_grpc.ExecServiceStub(cluster.apis[api].channel())
    for nid, node in {"api1": cluster.apis[0], **cluster.nodes}.items():
        inst = on_node(cluster, nid)
        init = exec_pb2.ExecInitRequest(instance_id=inst.id, command=["sh", "-c", "cat; pwd; exit 7"])
        out, code = exec_call(stub, cluster.auth, init, stdin=b"over the channel\n")
        # The node ran it (api1 its own, directly): stdin went there, the working directory is in its data dir.
        assert code == 7
        said, cwd = out.decode().splitlines()
        assert said == "over the channel"
        assert cwd.startswith(str(node.data_dir.resolve() / "instances" / inst.id)), cwd
    # The node logged each call, and its audit entry names the caller the API host vouched for.
    assert "node channel /rune.api.ExecService/StreamExec for root" in cluster.nodes["n1"].output()
    admin = admin_pb2_grpc.AdminServiceStub(cluster.apis[api].channel())
    events = admin.ListAuditEvents(admin_pb2.ListAuditEventsRequest(limit=1000), metadata=cluster.auth).events
    started = [e for e in events if e.resource == "exec" and e.outcome == "started" and "exit 7" in e.detail]
    assert {e.subject for e in started} == {"root"} and len(started) >= 2


@pytest.mark.parametrize("api", [0, 1])
def test_logs_follow_over_grpc_reaches_an_instance_on_a_node(cluster: Cluster, api: int) -> None:
    stub = logs_pb2_grpc.LogServiceStub(cluster.apis[api].channel())
    inst = on_node(cluster, "n2")
    got = _followed(stub, cluster, logs_pb2.LogRequest(resource_target=f"instance/{inst.id}", follow=True, tail=1), 4)
    # A tail of one, then lines written while following (the ticker writes one every 0.2 s).
    assert {r.instance_id for r in got} == {inst.id}
    ticks = [int(r.content.split()[1]) for r in got]
    assert ticks == list(range(ticks[0], ticks[0] + 4)), ticks
    assert all(r.cursor for r in got)


@pytest.mark.parametrize("api", [0, 1])
def test_a_service_s_logs_merge_its_nodes_over_sse_and_resume(cluster: Cluster, api: int) -> None:
    # api1 reads its own instance from its files and merges in the nodes'; api2 merges three nodes.
    base = cluster.apis[api].http_base
    headers = {"authorization": f"Bearer {cluster.token}"}
    url = base + "/v1/namespaces/default/logs/ticker"
    names: set[str] = set()
    last_id = ""
    with httpx.Client(timeout=30, headers=headers) as client:
        # History as JSON lines: every node's lines in one time order, the tail counted over all of
        # them (as over one node's instances), not per node.
        def history(tail: int) -> list[dict[str, str]]:
            r = client.get(url, params={"tail": str(tail)})
            assert r.status_code == 200, r.text
            return [json.loads(line) for line in r.text.splitlines() if line]

        def full() -> list[dict[str, str]]:
            got = history(30)
            assert len(got) == 30, len(got)
            return got

        rows = eventually(full, timeout=20)
        assert [row["timestamp"] for row in rows] == sorted(row["timestamp"] for row in rows)
        assert {row["instanceName"] for row in rows} == {"ticker-0", "ticker-1", "ticker-2"}
        assert len(history(1)) == 1
        # Without a tail: every line, merged as the nodes stream them.
        everything = history(0)
        assert len(everything) >= 30 and {row["instanceName"] for row in everything} == {
            f"ticker-{i}" for i in range(3)
        }
        assert [row["timestamp"] for row in everything] == sorted(row["timestamp"] for row in everything)
        with client.stream("GET", url, params={"follow": "true", "tail": "2"}) as r:
            assert r.status_code == 200, r.read()
            for ev in sse_events(r.iter_lines()):
                names.add(json.loads(ev["data"])["instanceName"])
                last_id = ev["id"]
                if len(names) == 3:
                    break
        assert names == {"ticker-0", "ticker-1", "ticker-2"}
        # The merged cursor names every node's instance: a resume continues each where it was.
        positions = dict(p.split("=") for p in last_id.split(";")[1:])
        assert len(positions) == 3
        with client.stream("GET", url, params={"follow": "true"}, headers={"last-event-id": last_id}) as r:
            seen: dict[str, int] = {}
            for ev in sse_events(r.iter_lines()):
                line = json.loads(ev["data"])
                seen.setdefault(line["instanceId"], int(line["seq"]))
                if len(seen) == 3:
                    break
        assert all(seen[iid] == int(seq) + 1 for iid, seq in positions.items()), (positions, seen)


@pytest.mark.parametrize("api", [0, 1])
def test_a_follow_s_tail_counts_over_every_node_and_goes_on_without_a_gap(cluster: Cluster, api: int) -> None:
    """``rune logs -f --tail 3`` of a service on three hosts: the last three lines over all of them
    (as over one host's instances, not three of each), then every line written since, none twice."""
    stub = logs_pb2_grpc.LogServiceStub(cluster.apis[api].channel())
    eventually(lambda: len(_service_lines(stub, cluster, 30)) == 30, timeout=20, what="lines on every host")
    asked = rfc3339_ns(time.time_ns())
    got = _followed(stub, cluster, logs_pb2.LogRequest(resource_target="service/ticker", follow=True, tail=3), 24)
    # The tail: at most three lines written before the call, first, in time order (the old code
    # sent three of each host's: nine). How many of the three were written before the call depends
    # on how soon it began (the tickers go on meanwhile), so only the most is checked.
    before = [r for r in got if r.timestamp < asked]
    assert len(before) <= 3 and got[: len(before)] == before, [(r.instance_name, r.timestamp) for r in got[:9]]
    assert [r.timestamp for r in got[:3]] == sorted(r.timestamp for r in got[:3])
    # From each instance's first line on, every one of its lines, in order: nothing lost or repeated
    # where the tail ends and the follow begins.
    seqs: dict[str, list[int]] = {}
    for r in got:
        seqs.setdefault(r.instance_id, []).append(int(r.content.split()[1]))
    assert len(seqs) == 3
    for ticks in seqs.values():
        assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), seqs


def _followed(
    stub: logs_pb2_grpc.LogServiceStub, cluster: Cluster, req: logs_pb2.LogRequest, n: int
) -> list[logs_pb2.LogResponse]:
    """The first ``n`` responses of a follow, then the call cancelled."""
    call = stub.StreamLogs(iter([req]), metadata=cluster.auth, timeout=30)
    got: list[logs_pb2.LogResponse] = []
    for resp in call:
        got.append(resp)
        if len(got) == n:
            break
    call.cancel()
    return got


def _service_lines(stub: logs_pb2_grpc.LogServiceStub, cluster: Cluster, tail: int) -> list[logs_pb2.LogResponse]:
    req = logs_pb2.LogRequest(resource_target="service/ticker", tail=tail)
    return list(stub.StreamLogs(iter([req]), metadata=cluster.auth, timeout=30))


def test_exec_over_rest_reaches_an_instance_on_a_node(cluster: Cluster) -> None:
    url = f"ws://{cluster.apis[0].address('rest')}/v1/namespaces/default/exec/ticker/ws"
    with connect(url, additional_headers={"authorization": f"Bearer {cluster.token}"}) as ws:
        ws.send(json.dumps({"command": ["sh", "-c", "echo remote; exit 4"]}))
        out, ex = b"", None
        while ex is None:
            msg = json.loads(ws.recv(timeout=20))
            out += base64.b64decode(msg.get("stdout", ""))
            ex = msg.get("exit")
    assert out == b"remote\n" and ex["code"] == 4
    # A REST exec session (output as SSE) on a host that runs nothing.
    headers = {"authorization": f"Bearer {cluster.token}"}
    with httpx.Client(base_url=cluster.apis[1].http_base, timeout=30, headers=headers) as client:
        r = client.post("/v1/namespaces/default/exec/ticker", json={"command": ["sh", "-c", "echo session; exit 2"]})
        assert r.status_code == 201, r.text
        sid = r.json()["sessionId"]
        got, code = b"", None
        with client.stream("GET", f"/v1/namespaces/default/exec/sessions/{sid}/output") as s:
            for ev in sse_events(s.iter_lines()):
                data = json.loads(ev["data"])
                if ev["event"] == "stdout":
                    got += base64.b64decode(data["stdout"])
                elif ev["event"] == "exit":
                    code = data["exit"]["code"]
                    break
    assert (got, code) == (b"session\n", 2)


def test_a_service_s_follow_hears_new_nodes_and_ends_once_when_it_is_deleted(cluster: Cluster, tmp_path: Path) -> None:
    script = tmp_path / "ticker.py"
    script.write_text(TICKER)
    svc = service_pb2.Service(
        name="brief",
        namespace="default",
        scale=1,
        runtime="process",
        process=common_pb2.ProcessSpec(command=sys.executable, args=["-u", str(script)]),
    )
    services = service_pb2_grpc.ServiceServiceStub(cluster.apis[0].channel())
    services.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=cluster.auth)
    eventually(lambda: len(cluster.instances("brief")) == 1, timeout=60)
    stub = logs_pb2_grpc.LogServiceStub(cluster.apis[1].channel())
    req = logs_pb2.LogRequest(resource_target="brief", follow=True, max_batch=10)
    lines: list[logs_pb2.LogResponse] = []
    scaled = deleted = False
    for resp in stub.StreamLogs(iter([req]), metadata=cluster.auth, timeout=90):
        lines.extend(resp.lines)
        names = {ln.instance_name for ln in lines}
        if not scaled and names:
            # Two more instances, placed on the hosts that had none when the follow began.
            scale = service_pb2.ScaleServiceRequest(name="brief", namespace="default", scale=3)
            services.ScaleService(scale, metadata=cluster.auth)
            scaled = True
        if not deleted and len(names) == 3:
            # Every node's lines came: the service goes, and with it the follow, on each node.
            delete = service_pb2.DeleteServiceRequest(name="brief", namespace="default", force=True, now=True)
            services.DeleteService(delete, metadata=cluster.auth)
            deleted = True
    ends = [ln for ln in lines if "end_of_stream" in ln.status.details]
    assert len(ends) == 1 and lines[-1] == ends[0], [ln.content for ln in lines[-5:]]
    assert {ln.instance_name for ln in lines if ln.content.startswith("tick")} == {"brief-0", "brief-1", "brief-2"}


def test_rune_logs_and_exec_reach_instances_on_other_hosts(cluster: Cluster, tmp_path: Path) -> None:
    rune = Rune(home=tmp_path / "home", server=cluster.apis[1].grpc_target, procs=[])
    assert rune("login", "--token", cluster.token).returncode == 0
    logs = rune("logs", "ticker", "--tail", "6")
    assert logs.returncode == 0, logs.stderr
    assert len([ln for ln in logs.stdout.splitlines() if "tick" in ln]) == 6, logs.stdout
    for name in ("ticker-0", "ticker-1", "ticker-2"):
        piped = rune("exec", f"instance/{name}", "--", "sh", "-c", "cat; exit 6", input="piped\n")
        assert (piped.returncode, piped.stdout) == (6, "piped\n"), piped.stderr


def test_a_node_refuses_what_is_not_from_the_control_plane(cluster: Cluster) -> None:
    target = cluster.channel_of("n1")
    inst = on_node(cluster, "n1")
    init = exec_pb2.ExecInitRequest(instance_id=inst.id, command=["echo", "in"])
    key = load_server_key(cluster.apis[0].data_dir)
    with grpc.insecure_channel(target) as ch:
        stub = exec_pb2_grpc.ExecServiceStub(ch)
        refused: list[Metadata] = [
            [],
            cluster.auth,  # a user token: for the API, not for nodes
            [("authorization", f"Bearer {nodetoken.mint(key, 'n2', 'root')}")],  # another node's
            [("authorization", f"Bearer {nodetoken.mint(key, 'n1', 'root', lifetime=-60)}")],  # expired
            [("authorization", f"Bearer {nodetoken.mint(b'x' * 32, 'n1', 'root')}")],  # another cluster's
        ]
        for md in refused:
            with pytest.raises(grpc.RpcError) as e:
                exec_call(stub, md, init)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (md, e.value.details())
        # The same call with a node token for n1 is served.
        ok = [("authorization", f"Bearer {nodetoken.mint(key, 'n1', 'root')}")]
        assert exec_call(stub, ok, init) == (b"in\n", 0)
        # The channel serves logs and exec only.
        with pytest.raises(grpc.RpcError) as e:
            instance_pb2_grpc.InstanceServiceStub(ch).ListInstances(instance_pb2.ListInstancesRequest(), metadata=ok)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


def rich_error(e: grpc.RpcError) -> tuple[grpc.StatusCode, str, str, dict[str, str], float | None]:
    """A runed error's code, message, ErrorInfo reason and metadata, and RetryInfo delay (from its trailer)."""
    assert isinstance(e, grpc.Call)
    st = rpc_status.from_call(e)
    assert st is not None, (e.code(), e.details())
    info, retry = error_details_pb2.ErrorInfo(), None
    assert st.details[0].Unpack(info) and info.domain == "rune.api"
    for d in st.details[1:]:
        ri = error_details_pb2.RetryInfo()
        if d.Unpack(ri):
            retry = ri.retry_delay.ToNanoseconds() / 1e9
    return e.code(), st.message, info.reason, dict(info.metadata), retry


def test_a_node_s_own_error_reaches_the_client_with_its_details(cluster: Cluster) -> None:
    # Only the node counts an instance's exec sessions: it alone refuses one over the limit.
    inst = on_node(cluster, "n1")
    key = load_server_key(cluster.apis[0].data_dir)
    held: list[tuple[grpc.Call, queue.Queue[exec_pb2.ExecRequest | None]]] = []
    init = exec_pb2.ExecInitRequest(instance_id=inst.id, command=["sleep", "60"])
    with grpc.insecure_channel(cluster.channel_of("n1")) as ch:
        node = exec_pb2_grpc.ExecServiceStub(ch)
        md = [("authorization", f"Bearer {nodetoken.mint(key, 'n1', 'root', lifetime=300)}")]
        try:
            for _ in range(8):  # exec.max_sessions_per_instance
                q: queue.Queue[exec_pb2.ExecRequest | None] = queue.Queue()
                q.put(exec_pb2.ExecRequest(init=init))
                call = node.StreamExec(iter(q.get, None), metadata=md, timeout=60)
                assert next(call).WhichOneof("response") == "status"  # connected: it holds a slot
                held.append((call, q))  # type: ignore[arg-type]
            with pytest.raises(grpc.RpcError) as e:
                exec_call(node, md, init)
            own = rich_error(e.value)
            assert own[:4] == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"too many exec sessions on instance {inst.id} (limit 8)",
                "EXEC_SESSION_LIMIT",
                {"kind": "instance", "name": inst.id, "namespace": "default", "limit": "8"},
            )
            assert own[4] == 1.0
            # Through an API host: the same code, message, reason, metadata and retry delay, also when
            # the client's stdin and EOF cross the node's refusal on the way (each try is a new race).
            api = exec_pb2_grpc.ExecServiceStub(cluster.apis[1].channel())
            for stdin in [b""] * 10 + [b"x"] * 10:
                with pytest.raises(grpc.RpcError) as e:
                    exec_call(api, cluster.auth, init, stdin)
                assert rich_error(e.value) == own
            # And as the WebSocket's error frame (REST renders the same status).
            url = f"ws://{cluster.apis[0].address('rest')}/v1/namespaces/default/exec/instance/{inst.id}/ws"
            with connect(url, additional_headers={"authorization": f"Bearer {cluster.token}"}) as ws:
                ws.send(json.dumps({"command": ["true"]}))
                frame = json.loads(ws.recv(timeout=20))
            err = frame["error"]
            info = next(d for d in err["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
            assert (err["message"], info["reason"], info["metadata"]) == (own[1], own[2], own[3]), err
            assert any(d["@type"].endswith("google.rpc.RetryInfo") for d in err["details"]), err
            # And as a REST session's start: HTTP 429 with Retry-After and the same body.
            headers = {"authorization": f"Bearer {cluster.token}"}
            with httpx.Client(base_url=cluster.apis[1].http_base, timeout=30, headers=headers) as client:
                r = client.post(f"/v1/namespaces/default/exec/instance/{inst.id}", json={"command": ["true"]})
            assert (r.status_code, r.headers.get("retry-after")) == (429, "1"), r.text
            info = next(d for d in r.json()["details"] if d["@type"].endswith("google.rpc.ErrorInfo"))
            assert (r.json()["message"], info["reason"], info["metadata"]) == (own[1], own[2], own[3]), r.text
        finally:
            for call, q in held:
                call.cancel()
                q.put(None)


def test_an_unreachable_node_is_unavailable_naming_it(cluster: Cluster) -> None:
    inst = on_node(cluster, "n2")
    # The node's runed alone: its instance runs on, and its record still says RUNNING on n2.
    proc = cluster.nodes["n2"].proc
    assert proc is not None
    proc.kill()
    proc.wait(10)
    stub = exec_pb2_grpc.ExecServiceStub(cluster.apis[0].channel())
    init = exec_pb2.ExecInitRequest(instance_id=inst.id, command=["true"])
    with pytest.raises(grpc.RpcError) as e:
        exec_call(stub, cluster.auth, init)
    code, message, reason, metadata, _ = rich_error(e.value)
    assert code == grpc.StatusCode.UNAVAILABLE and "node n2" in message
    assert (reason, metadata) == ("UNAVAILABLE", {"node": "n2"})
