"""StreamLogs batches (LogRequest.max_batch) against real chatty processes: every line, in order, with
cursors that resume inside a batch; the one-line form for clients that do not opt in; a stalled
follower told what it skipped."""

from __future__ import annotations

import json
import queue
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import code_pb2

from rune.api import logs_pb2, logs_pb2_grpc, service_pb2
from rune.gateway import codec
from runed.logs import files
from tests.harness import run_runed
from tests.integration.orch import Orch, runefile_args
from tests.support import eventually, sse_events

LINES = 2000
# Writes LINES numbered lines as fast as it can (one stream: the shim orders two pipes as it reads them), then stays up.
BURST = textwrap.dedent(
    f"""
    import time
    for i in range({LINES}):
        print(f"burst {{i}} " + "x" * 40, flush=True)
    time.sleep(3600)
    """
)
# Writes numbered lines as fast as it can, forever.
FLOOD = textwrap.dedent(
    """
    i = 0
    while True:
        print(f"flood {i} " + "x" * 40, flush=True)
        i += 1
    """
)


@pytest.fixture(scope="module")
def orch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orch]:
    tmp = tmp_path_factory.mktemp("batches")
    # Rotation keeps ≈ 2 x 256 KiB: the burst fits, a stalled follower of the flood falls off it.
    args = runefile_args(tmp, "  log_max_bytes: 262144\n  log_backups: 1\n")
    with run_runed(tmp / "data", args=args) as r:
        o = Orch.on(r, tmp)
        o.cast("burst", o.program("burst", BURST))
        yield o


@pytest.fixture(scope="module")
def stub(orch: Orch) -> logs_pb2_grpc.LogServiceStub:
    return logs_pb2_grpc.LogServiceStub(orch.runed.channel())


@pytest.fixture(scope="module")
def burst(orch: Orch) -> dict[str, object]:
    """The burst instance once all its lines are written."""

    def written() -> dict[str, object]:
        inst = orch.one("burst")
        assert files.last_seq(Path(inst["log_dir"])) >= LINES - 1
        return inst

    return eventually(written, timeout=60, what="the burst written")


def flat(msgs: list[logs_pb2.LogResponse]) -> list[logs_pb2.LogResponse]:
    return [line for m in msgs for line in m.lines]


def line_fields(rs: list[logs_pb2.LogResponse]) -> list[tuple[object, ...]]:
    return [(r.content, r.cursor, r.seq, r.stream, r.timestamp, r.instance_id, r.log_level) for r in rs]


def test_batches_carry_every_line_in_order_with_cursors(
    stub: logs_pb2_grpc.LogServiceStub, orch: Orch, burst: dict[str, object]
) -> None:
    req = logs_pb2.LogRequest(resource_target="burst", max_batch=64)
    msgs = list(stub.StreamLogs(iter([req]), metadata=orch.auth, timeout=30))
    lines = flat(msgs)
    assert [ln.content.split()[1] for ln in lines] == [str(i) for i in range(LINES)]
    assert [ln.seq for ln in lines] == list(range(lines[0].seq, lines[0].seq + LINES))
    assert all(ln.service_name == "burst" and ln.instance_name == "burst-0" and ln.timestamp for ln in lines)
    assert len({ln.cursor for ln in lines}) == LINES
    assert len(msgs) == -(-LINES // 64) and all(1 <= len(m.lines) <= 64 for m in msgs)
    # The outer message says nothing but where it ends.
    assert all(m.cursor == m.lines[-1].cursor and not m.content and not m.instance_id for m in msgs)

    # Without opting in: one line per message, exactly the lines (and cursors) of the batches.
    single = list(stub.StreamLogs(iter([logs_pb2.LogRequest(resource_target="burst")]), metadata=orch.auth))
    assert all(not m.lines and m.content for m in single)
    assert line_fields(single) == line_fields(lines)

    # Resuming from a cursor in the middle of a batch continues right after that line.
    inside = msgs[3].lines[10]
    req = logs_pb2.LogRequest(resource_target="burst", max_batch=50, after_cursor=inside.cursor)
    resumed = flat(list(stub.StreamLogs(iter([req]), metadata=orch.auth, timeout=30)))
    k = lines.index(inside)
    assert line_fields(resumed) == line_fields(lines[k + 1 :])
    # ... and so does a follower, which then receives new lines in batches too.
    follow = stub.StreamLogs(
        iter([logs_pb2.LogRequest(resource_target="burst", max_batch=50, after_cursor=inside.cursor, follow=True)]),
        metadata=orch.auth,
        timeout=30,
    )
    got: list[logs_pb2.LogResponse] = []
    for m in follow:
        assert 1 <= len(m.lines) <= 50
        got.extend(m.lines)
        if len(got) >= LINES - k - 1:
            break
    follow.cancel()
    assert line_fields(got) == line_fields(lines[k + 1 :])


def test_batch_size_is_checked(stub: logs_pb2_grpc.LogServiceStub, orch: Orch) -> None:
    req = logs_pb2.LogRequest(resource_target="burst", max_batch=100_000)
    with pytest.raises(grpc.RpcError) as e:
        list(stub.StreamLogs(iter([req]), metadata=orch.auth, timeout=30))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_batch" in str(e.value.details())


def test_sse_batches_on_request_and_one_line_events_by_default(orch: Orch, burst: dict[str, object]) -> None:
    url = orch.runed.http_base + "/v1/namespaces/default/logs/burst"
    headers = {"authorization": orch.auth[0][1]}
    with httpx.Client(headers=headers, timeout=30) as c:
        with c.stream("GET", url, params={"follow": "true", "max_batch": "100"}) as r:
            assert r.status_code == 200
            batches: list[dict[str, Any]] = []
            ids: list[str] = []
            for ev in sse_events(r.iter_lines()):
                data = json.loads(ev["data"])
                batches.append(data)
                ids.append(ev["id"])
                if sum(len(b["lines"]) for b in batches) >= LINES:
                    break
        lines = [ln for b in batches for ln in b["lines"]]
        assert [ln["content"].split()[1] for ln in lines] == [str(i) for i in range(LINES)]
        assert all(1 <= len(b["lines"]) <= 100 for b in batches)
        assert ids == [b["lines"][-1]["cursor"] for b in batches]

        with c.stream("GET", url, params={"follow": "true"}) as r:
            events = sse_events(r.iter_lines())
            single = [json.loads(next(events)["data"]) for _ in range(LINES)]
        assert [e["content"] for e in single] == [ln["content"] for ln in lines]
        assert [e["cursor"] for e in single] == [ln["cursor"] for ln in lines]
        assert all("lines" not in e for e in single)
        assert set(single[0]) == {
            "serviceName", "instanceId", "instanceName", "timestamp", "content", "stream", "logLevel", "cursor", "seq"
        }  # fmt: skip


def test_rest_lines_are_the_grpc_lines_in_protojson(
    stub: logs_pb2_grpc.LogServiceStub, orch: Orch, burst: dict[str, object]
) -> None:
    """The gateway gets its lines JSON-ready (no LogResponse in between): still exactly what gRPC sends."""
    req = logs_pb2.LogRequest(resource_target="burst", timestamps=True)
    want = [codec.to_dict(m) for m in stub.StreamLogs(iter([req]), metadata=orch.auth, timeout=30)]
    for w in want:
        assert w.pop("lines") == []
    url = orch.runed.http_base + "/v1/namespaces/default/logs/burst"
    with httpx.Client(headers={"authorization": orch.auth[0][1]}, timeout=30) as c:
        got = [json.loads(ln) for ln in c.get(url, params={"timestamps": "true"}).text.splitlines()]
        assert got == want and len(got) == LINES
        batched = [
            json.loads(ln) for ln in c.get(url, params={"timestamps": "true", "max_batch": "64"}).text.splitlines()
        ]
    assert [ln for b in batched for ln in b["lines"]] == want
    assert all(b["cursor"] == b["lines"][-1]["cursor"] and b["content"] == "" for b in batched)


def _requests(q: queue.Queue[logs_pb2.LogRequest | None]) -> Iterator[logs_pb2.LogRequest]:
    while (r := q.get()) is not None:
        yield r


@pytest.mark.slow
def test_a_stalled_follower_is_told_how_many_lines_it_skipped(stub: logs_pb2_grpc.LogServiceStub, orch: Orch) -> None:
    orch.cast("flood", orch.program("flood", FLOOD))
    log_dir = Path(eventually(lambda: orch.one("flood"), timeout=30)["log_dir"])
    eventually(lambda: files.last_seq(log_dir) >= 0 or None, timeout=30, what="the flood started")
    q: queue.Queue[logs_pb2.LogRequest | None] = queue.Queue()
    q.put(logs_pb2.LogRequest(resource_target="flood", follow=True, tail=1, max_batch=100))
    # No BDP probing: the client's flow-control window stays small, as it is for a slow reader.
    ch = grpc.insecure_channel(orch.runed.address("grpc"), options=[("grpc.http2.bdp_probe", 0)])
    call = logs_pb2_grpc.LogServiceStub(ch).StreamLogs(_requests(q), metadata=orch.auth, timeout=120)
    try:
        last = next(call).lines[-1].seq
        # Stall: read nothing while the writer moves ~20 retained log sizes ahead.
        eventually(lambda: files.last_seq(log_dir) > last + 100_000 or None, timeout=90, what="the flood ran ahead")
        seqs: list[int] = []
        gaps: list[logs_pb2.LogResponse] = []
        for m in call:
            for ln in m.lines:
                if ln.status.code == code_pb2.DATA_LOSS:
                    gaps.append(ln)
                    seqs.extend(range(ln.seq - _missing(ln) + 1, ln.seq + 1))
                else:
                    assert ln.content.startswith("flood ")
                    seqs.append(ln.seq)
            if gaps and seqs[-1] > gaps[0].seq + 10:
                break
    finally:
        call.cancel()
        q.put(None)
        ch.close()
        req = service_pb2.DeleteServiceRequest(name="flood", namespace="default", now=True)
        orch.services.DeleteService(req, metadata=orch.auth)
    gap = gaps[0]
    missing = _missing(gap)
    # What the follower had in flight when it stalled is bounded: far less than the writer wrote.
    received = gap.seq - missing - last
    assert missing > 0 and received < 100_000
    assert f"{missing} lines" in gap.content
    # Nothing lost silently: counting each gap line as the lines it stands for, every seq is there once.
    assert seqs == list(range(last + 1, last + 1 + len(seqs)))


def _missing(gap: logs_pb2.LogResponse) -> int:
    return int(dict(d.split("=") for d in gap.status.details)["missing_lines"])
