"""LogService.StreamLogs over gRPC: history selection, merging, follow, cursors, parameter updates."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rune.api import logs_pb2, logs_pb2_grpc
from runed.logs.timeparse import format_ns
from tests.harness import Runed, RunedFactory, run_runed
from tests.integration.instance_fixtures import Instances
from tests.support import Metadata, bootstrap_metadata, eventually

T0 = 1_700_000_000 * 1_000_000_000  # a fixed past instant: history lines get exact timestamps


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runed]:
    tmp_path = tmp_path_factory.mktemp("api")
    with run_runed(tmp_path / "data", role="grpc") as p:
        yield p


@pytest.fixture(scope="module")
def stub(api: Runed) -> logs_pb2_grpc.LogServiceStub:
    return logs_pb2_grpc.LogServiceStub(api.channel())


@pytest.fixture(scope="module")
def md(api: Runed) -> list[tuple[str, str]]:
    return bootstrap_metadata(api.channel())


@pytest.fixture
def web(api: Runed) -> Instances:
    """Service "web" with three instances whose lines interleave in time (i*10 + k ms)."""
    insts = Instances(api.data_dir).reset()
    for k in range(3):
        iid = insts.add("web", k)
        w = insts.writers[iid]
        for i in range(5):
            w.write(f"web-{k} line {i}", stream="stderr" if i == 4 else "stdout", ns=T0 + (i * 10 + k) * 1_000_000)
    return insts


class Call:
    """A StreamLogs call fed from a queue (more messages can be sent while it is open)."""

    def __init__(self, stub: logs_pb2_grpc.LogServiceStub, md: list[tuple[str, str]], **req: object) -> None:
        self.q: queue.Queue[logs_pb2.LogRequest | None] = queue.Queue()
        self.q.put(logs_pb2.LogRequest(**req))  # type: ignore[arg-type]
        self.call = stub.StreamLogs(self._requests(), metadata=md, timeout=20)

    def _requests(self) -> Iterator[logs_pb2.LogRequest]:
        while (r := self.q.get()) is not None:
            yield r

    def send(self, **req: object) -> None:
        self.q.put(logs_pb2.LogRequest(**req))  # type: ignore[arg-type]

    def take(self, n: int) -> list[logs_pb2.LogResponse]:
        return [next(self.call) for _ in range(n)]

    def rest(self) -> list[logs_pb2.LogResponse]:
        out = list(self.call)
        self.q.put(None)
        return out

    def cancel(self) -> None:
        self.call.cancel()
        self.q.put(None)


LogStub = logs_pb2_grpc.LogServiceStub


def contents(rs: list[logs_pb2.LogResponse]) -> list[str]:
    return [r.content for r in rs]


def test_tail_merges_instances_in_time_order_and_ends(stub: LogStub, md: Metadata, web: Instances) -> None:
    # A non-follow request ends by itself once the lines are sent.
    rs = Call(stub, md, resource_target="web", tail=4).rest()
    assert contents(rs) == ["web-2 line 3", "web-0 line 4", "web-1 line 4", "web-2 line 4"]
    assert {r.service_name for r in rs} == {"web"}
    assert [r.instance_name for r in rs] == ["web-2", "web-0", "web-1", "web-2"]
    assert all(r.instance_id in web.writers and r.cursor and r.timestamp for r in rs)
    assert [r.stream for r in rs] == ["stdout", "stderr", "stderr", "stderr"]
    everything = Call(stub, md, resource_target="svc/web").rest()
    assert len(everything) == 15
    assert [r.timestamp for r in everything] == sorted(r.timestamp for r in everything)


def test_since_until_filter_stream_and_timestamps(stub: LogStub, md: Metadata, web: Instances) -> None:
    since, until = format_ns(T0 + 10_000_000), format_ns(T0 + 21_000_000)
    rs = Call(stub, md, resource_target="service/web", since=since, until=until).rest()
    assert contents(rs) == [f"web-{k} line {i}" for i in (1, 2) for k in range(3)][:5]
    rs = Call(stub, md, resource_target="web", filter="line 2").rest()
    assert contents(rs) == ["web-0 line 2", "web-1 line 2", "web-2 line 2"]
    rs = Call(stub, md, resource_target="web", filter="/^web-[12] line [03]$/").rest()
    assert contents(rs) == ["web-1 line 0", "web-2 line 0", "web-1 line 3", "web-2 line 3"]
    rs = Call(stub, md, resource_target="web", stream="stderr").rest()
    assert contents(rs) == ["web-0 line 4", "web-1 line 4", "web-2 line 4"]
    rs = Call(stub, md, resource_target="web", tail=1, timestamps=True).rest()
    assert rs[0].content == f"{format_ns(T0 + 42_000_000)} web-2 line 4"
    # Durations count back from now: these lines are years old.
    assert Call(stub, md, resource_target="web", since="1h").rest() == []


def test_targets(stub: LogStub, md: Metadata, web: Instances) -> None:
    iid = next(iter(web.writers))
    for target in (f"instance/{iid}", f"inst/{iid}", iid, "inst/web-0"):
        rs = Call(stub, md, resource_target=target, tail=2).rest()
        assert contents(rs) == ["web-0 line 3", "web-0 line 4"], target
        assert rs[0].instance_id == iid and rs[0].service_name == "web"
    for target, field in (("pod/web", "resource_target"), ("", "resource_target")):
        with pytest.raises(grpc.RpcError) as e:
            Call(stub, md, resource_target=target).rest()
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (e.value.details() or "")
    # A well-formed target that names nothing is NOT_FOUND, as exec says.
    for target in ("nope", "service/nope", "instance/nope"):
        with pytest.raises(grpc.RpcError) as e:
            Call(stub, md, resource_target=target).rest()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND, target
        assert '"nope" not found in namespace "default"' in (e.value.details() or "")
    with pytest.raises(grpc.RpcError) as e:
        Call(stub, md, resource_target="web", since="yesterday", stream="both").rest()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "since" in (e.value.details() or "") and "stream" in (e.value.details() or "")


def test_follow_across_rotation_restart_and_new_instances(stub: LogStub, md: Metadata, web: Instances) -> None:
    c = Call(stub, md, resource_target="web", tail=1, follow=True)
    assert contents(c.take(1)) == ["web-2 line 4"]
    ids = list(web.writers)
    w0 = web.writers[ids[0]]
    w0.write("live 1")
    assert contents(c.take(1)) == ["live 1"]
    # Rotation, twice, between reads: nothing lost or repeated.
    w0.write("live 2")
    w0.rotate()
    w0.write("live 3")
    w0.rotate()
    w0.write("live 4")
    assert contents(c.take(3)) == ["live 2", "live 3", "live 4"]
    # A restart: the live file starts afresh, seq keeps counting.
    (w0.dir / "log.jsonl").unlink()
    w0.write("after restart")
    assert contents(c.take(1)) == ["after restart"]
    # An instance created after the stream started is picked up from its first line.
    new = web.add("web", 3)
    web.writers[new].write("newcomer says hi")
    r = c.take(1)[0]
    assert (r.instance_name, r.content) == ("web-3", "newcomer says hi")
    c.cancel()


def test_resume_by_cursor_without_gaps_or_duplicates(stub: LogStub, md: Metadata, web: Instances) -> None:
    w = web.writers[list(web.writers)[1]]
    c = Call(stub, md, resource_target="web", tail=2, follow=True)
    first = c.take(2)
    for i in range(5):
        w.write(f"batch1 {i}")
    got = c.take(3)
    c.cancel()
    for i in range(5, 8):
        w.write(f"batch1 {i}")
    resumed = Call(stub, md, resource_target="web", follow=True, after_cursor=got[-1].cursor)
    assert contents(resumed.take(5)) == [f"batch1 {i}" for i in range(3, 8)]
    resumed.cancel()
    # A non-follow request from the very first cursor replays exactly what came after it.
    rs = Call(stub, md, resource_target="web", after_cursor=first[0].cursor).rest()
    assert contents(rs) == ["web-2 line 4"] + [f"batch1 {i}" for i in range(8)]


def test_parameter_update_changes_filter_and_ends_follow(stub: LogStub, md: Metadata, web: Instances) -> None:
    w = web.writers[next(iter(web.writers))]
    c = Call(stub, md, resource_target="web", follow=True, filter="keep")
    w.write("keep 1")
    w.write("drop 1")
    assert contents(c.take(1)) == ["keep 1"]
    c.send(parameter_update=True, follow=True, filter="drop")
    # The update applies to lines read after it arrives; give the server a moment to apply it.
    deadline = time.monotonic() + 10
    seen: list[str] = []

    def reader() -> None:
        for r in c.call:
            seen.append(r.content)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    while time.monotonic() < deadline and "drop 2" not in seen:
        w.write("keep 2")
        w.write("drop 2")
        time.sleep(0.1)
    assert "drop 2" in seen
    # Turning follow off ends the stream without the client cancelling.
    c.send(parameter_update=True, follow=False)
    t.join(10)
    assert not t.is_alive()
    c.q.put(None)


def test_cancel_ends_the_server_side_stream(tmp_path: Path, runed_factory: RunedFactory) -> None:
    p = runed_factory(tmp_path / "dbg", role="grpc", args=["--log-level", "debug"])
    md = bootstrap_metadata(p.channel())
    insts = Instances(p.data_dir)
    iid = insts.add("web", 0)
    insts.writers[iid].write("one")
    c = Call(logs_pb2_grpc.LogServiceStub(p.channel()), md, resource_target="web", follow=True)
    assert contents(c.take(1)) == ["one"]
    assert "LogService/StreamLogs CANCELLED" not in p.output()
    c.cancel()
    # The handler, its store watch and its file followers are gone as soon as the client is.
    eventually(lambda: "LogService/StreamLogs CANCELLED" in p.output(), timeout=5, what="the stream finishes")
