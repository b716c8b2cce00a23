"""WatchNodes over gRPC and SSE, and `rune get nodes -w`: node changes as they happen, heartbeats left out.

A lone runed is one node; its heartbeat here comes every 0.2 s, so every test sees heartbeats (store
writes of the node record) that must not become events.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from rune.api import common_pb2, node_pb2, node_pb2_grpc
from tests.e2e.rune import Rune, kill_all
from tests.harness import Runed
from tests.integration.test_gateway_sse import events, headers, take
from tests.support import Metadata, eventually, rest_bootstrapped_runed

HOST = socket.gethostname()
HEARTBEAT = 0.2
ADDED, MODIFIED = common_pb2.EVENT_TYPE_ADDED, common_pb2.EVENT_TYPE_MODIFIED


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, str]]:
    with rest_bootstrapped_runed(
        tmp_path_factory.mktemp("nodes-watch"), f"node:\n  heartbeat_seconds: {HEARTBEAT}\n"
    ) as pair:
        yield pair


def _auth(token: str) -> Metadata:
    return [("authorization", f"Bearer {token}")]


def _collect(call: grpc.Future) -> queue.Queue[node_pb2.WatchNodesResponse]:  # type: ignore[type-arg]
    """The stream's events, as they come, in a queue (filled by a thread until the call ends)."""
    got: queue.Queue[node_pb2.WatchNodesResponse] = queue.Queue()

    def run() -> None:
        try:
            for ev in call:
                got.put(ev)
        except grpc.RpcError:
            pass

    threading.Thread(target=run, daemon=True).start()
    return got


def _quiet(got: queue.Queue[node_pb2.WatchNodesResponse], seconds: float) -> None:
    """No event within ``seconds`` (several heartbeats)."""
    with pytest.raises(queue.Empty):
        ev = got.get(timeout=seconds)
        pytest.fail(f"unexpected event {ev}")


def _revision(nodes: node_pb2_grpc.NodeServiceStub, md: Metadata) -> int:
    return int(nodes.ListNodes(node_pb2.ListNodesRequest(), metadata=md).revision)


def _flags(evs: list[node_pb2.WatchNodesResponse]) -> list[tuple[int, bool, bool, str]]:
    return [(e.event_type, e.node.cordoned, e.node.draining, e.node.status) for e in evs]


def test_watch_nodes_shows_cordon_and_drain_not_heartbeats_and_resumes_alike(fast: tuple[Runed, str]) -> None:
    runed, token = fast
    md = _auth(token)
    nodes = node_pb2_grpc.NodeServiceStub(runed.channel())
    call = nodes.WatchNodes(node_pb2.WatchNodesRequest(), metadata=md)
    try:
        got = _collect(call)
        added = got.get(timeout=10)
        assert (added.event_type, added.node.id, added.node.status) == (ADDED, HOST, "Ready")
        start = _revision(nodes, md)
        _quiet(got, 10 * HEARTBEAT)
        # The heartbeats were written meanwhile: the store moved on, the watch said nothing.
        assert _revision(nodes, md) >= start + 3
        for rpc in (nodes.CordonNode, nodes.DrainNode, nodes.UncordonNode):
            rpc(node_pb2.NodeActionRequest(id=HOST), metadata=md)
            time.sleep(3 * HEARTBEAT)
        live = [got.get(timeout=10) for _ in range(3)]
        _quiet(got, 5 * HEARTBEAT)
    finally:
        call.cancel()
    assert _flags(live) == [
        (MODIFIED, True, False, "Ready"),
        (MODIFIED, True, True, "Ready"),
        (MODIFIED, False, False, "Ready"),
    ]
    assert [e.node.instances for e in live] == [0, 0, 0] and all(e.node.last_heartbeat for e in live)
    # Resumed from the snapshot's revision: the same events, at the same revisions, nothing more.
    resumed_call = nodes.WatchNodes(node_pb2.WatchNodesRequest(since_revision=added.revision), metadata=md)
    try:
        resumed_got = _collect(resumed_call)
        resumed = [resumed_got.get(timeout=10) for _ in range(3)]
        _quiet(resumed_got, 5 * HEARTBEAT)
    finally:
        resumed_call.cancel()
    assert _flags(resumed) == _flags(live)
    assert [e.revision for e in resumed] == [e.revision for e in live]


def test_watch_nodes_label_selector_and_bad_input(fast: tuple[Runed, str]) -> None:
    runed, token = fast
    md = _auth(token)
    nodes = node_pb2_grpc.NodeServiceStub(runed.channel())
    call = nodes.WatchNodes(node_pb2.WatchNodesRequest(label_selector={"zone": "nowhere"}), metadata=md)
    try:
        got = _collect(call)
        nodes.CordonNode(node_pb2.NodeActionRequest(id=HOST), metadata=md)
        nodes.UncordonNode(node_pb2.NodeActionRequest(id=HOST), metadata=md)
        _quiet(got, 5 * HEARTBEAT)
    finally:
        call.cancel()
    with pytest.raises(grpc.RpcError) as e:
        next(iter(nodes.WatchNodes(node_pb2.WatchNodesRequest(since_revision=-1), metadata=md)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "since_revision" in str(e.value.details())
    with pytest.raises(grpc.RpcError) as e:
        next(iter(nodes.WatchNodes(node_pb2.WatchNodesRequest(label_selector={"bad key!": "x"}), metadata=md)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "label_selector" in str(e.value.details())
    # Over REST the same: 400 naming the field, not a stream.
    with httpx.Client(base_url=runed.http_base, timeout=10) as c:
        r = c.get("/v1/nodes:watch", params={"since_revision": "-1"}, headers=headers(token))
    assert r.status_code == 400 and "since_revision" in r.text, r.text


def test_watch_nodes_over_sse_resumes_after_last_event_id(fast: tuple[Runed, str]) -> None:
    runed, token = fast
    with httpx.Client(base_url=runed.http_base, timeout=10) as c:
        with c.stream("GET", "/v1/nodes:watch", headers=headers(token)) as s:
            assert s.status_code == 200 and s.headers["content-type"].startswith("text/event-stream")
            evs = events(s.iter_lines())
            (snapshot,) = take(evs, 1)
            assert snapshot.event == "ADDED" and snapshot.data["node"]["id"] == HOST  # type: ignore[index]
            assert c.post(f"/v1/nodes/{HOST}:cordon", json={}, headers=headers(token)).status_code == 200
            (cordoned,) = take(evs, 1)
        assert cordoned.event == "MODIFIED" and cordoned.data["node"]["cordoned"] is True  # type: ignore[index]
        time.sleep(5 * HEARTBEAT)
        assert c.post(f"/v1/nodes/{HOST}:uncordon", json={}, headers=headers(token)).status_code == 200
        # From the cordon on: the uncordon, not the heartbeats in between.
        with c.stream("GET", "/v1/nodes:watch", headers=headers(token, **{"last-event-id": cordoned.id})) as s:
            (resumed,) = take(events(s.iter_lines()), 1)
        assert resumed.event == "MODIFIED" and resumed.data["node"]["cordoned"] is False  # type: ignore[index]
        assert int(resumed.id) > int(cordoned.id)


def test_rune_get_nodes_watch_prints_changes_after_the_list(fast: tuple[Runed, str], tmp_path: Path) -> None:
    runed, token = fast
    rune = Rune(home=tmp_path / "home", server=runed.grpc_target, procs=[])
    assert rune("login", "--token", token).returncode == 0
    out = tmp_path / "watch.out"
    rune.popen("get", "nodes", "-w", out=out)
    try:
        eventually(lambda: HOST in out.read_text(), timeout=30)
        nodes = node_pb2_grpc.NodeServiceStub(runed.channel())
        nodes.CordonNode(node_pb2.NodeActionRequest(id=HOST), metadata=_auth(token))
        eventually(lambda: "Modified" in out.read_text(), timeout=30)
        nodes.UncordonNode(node_pb2.NodeActionRequest(id=HOST), metadata=_auth(token))
        eventually(lambda: out.read_text().count("Modified") == 2, timeout=30)
        time.sleep(5 * HEARTBEAT)
    finally:
        kill_all(rune.procs)
    lines = [ln for ln in out.read_text().splitlines() if ln.strip()]
    # The list (header and the node), then exactly the two changes: no ADDED again, no heartbeats.
    assert len(lines) == 4, lines
    assert lines[0].split()[0] == "NAME" and lines[1].split()[:2] == [HOST, "Ready"]
    assert lines[2].split()[:3] == ["Modified", HOST, "Ready,SchedulingDisabled"], lines
    assert lines[3].split()[:3] == ["Modified", HOST, "Ready"], lines
