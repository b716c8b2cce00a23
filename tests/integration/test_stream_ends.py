"""Streams end with what they follow: exec sessions and log follows of a deleted service, on every transport,
and a resumed log stream says how many lines rotation removed instead of skipping them."""

from __future__ import annotations

import base64
import json
import queue
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.sync.client import connect

from rune.api import exec_pb2, exec_pb2_grpc, instance_pb2, instance_pb2_grpc, logs_pb2, logs_pb2_grpc, service_pb2
from tests.harness import run_runed
from tests.integration.orch import Orch, runefile_args
from tests.support import alive, eventually, sse_events

# Small log files, one backup: a few hundred lines rotate most of themselves away.
LOG_LIMITS = "  log_max_bytes: 1024\n  log_backups: 1\n"
# Waits to be stopped (dies at once on SIGTERM).
IDLE = textwrap.dedent(
    """
    import time
    print("up", flush=True)
    while True:
        time.sleep(1)
    """
)
# Prints "tick <n>" forever, a few per second.
TICKER = textwrap.dedent(
    """
    import itertools, time
    for i in itertools.count():
        print(f"tick {i}", flush=True)
        time.sleep(0.05)
    """
)
# Prints "n 1" .. "n 5", waits for a file "go" in its working directory, then prints up to "n <argv[1]>".
COUNTER = textwrap.dedent(
    """
    import os, sys, time
    for i in range(1, 6):
        print(f"n {i}", flush=True)
    while not os.path.exists("go"):
        time.sleep(0.02)
    for i in range(6, int(sys.argv[1]) + 1):
        print(f"n {i}", flush=True)
    while True:
        time.sleep(1)
    """
)
# The exec command: print the pid that then becomes `sleep 5555`.
SLEEPER = ["sh", "-c", "echo $$; exec sleep 5555"]
TIMEOUT = 30


@pytest.fixture(scope="module")
def module_orch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orch]:
    tmp = tmp_path_factory.mktemp("ends")
    with run_runed(tmp / "data", args=runefile_args(tmp, LOG_LIMITS)) as r:
        yield Orch.on(r, tmp)


@pytest.fixture
def o(module_orch: Orch) -> Iterator[Orch]:
    yield module_orch
    module_orch.clear()


def cast_running(o: Orch, name: str, source: str, *args: str) -> dict[str, Any]:
    o.cast(name, o.program(name, source), *args)
    return eventually(lambda: o.running(name, 1), timeout=20, what=f"{name} running")[0]


def delete(o: Orch, name: str) -> None:
    o.services.DeleteService(service_pb2.DeleteServiceRequest(name=name, namespace="default"), metadata=o.auth)


def sleep_gone(pid: int) -> None:
    eventually(lambda: not alive(pid), timeout=10, what=f"`sleep 5555` (pid {pid}) killed with its session")


def assert_final_exit(frames: list[dict[str, Any]]) -> None:
    """The session's last frames: a status saying the instance went away, then the exit of the killed command."""
    assert [f.get("status", {}).get("code") for f in frames if "status" in f] == [10], frames  # ABORTED
    status = next(f["status"] for f in frames if "status" in f)
    assert "sleeper-0" in status["message"] and "the exec session ends" in status["message"], status
    assert "exit" in frames[-1], frames
    assert frames[-1]["exit"]["signaled"] and frames[-1]["exit"]["signal"] == "SIGKILL", frames
    assert frames[-1]["exit"]["code"] == 137


# -- exec --------------------------------------------------------------------------------------


def test_exec_over_grpc_ends_when_the_service_is_deleted(o: Orch) -> None:
    cast_running(o, "sleeper", IDLE)
    stub = exec_pb2_grpc.ExecServiceStub(o.runed.channel())
    requests: queue.Queue[exec_pb2.ExecRequest | None] = queue.Queue()
    requests.put(exec_pb2.ExecRequest(init=exec_pb2.ExecInitRequest(service_name="sleeper", command=SLEEPER)))

    def feed() -> Iterator[exec_pb2.ExecRequest]:
        while (r := requests.get()) is not None:
            yield r

    call = stub.StreamExec(feed(), metadata=o.auth, timeout=TIMEOUT)
    try:
        out = b""
        while not out.endswith(b"\n"):
            out += next(call).stdout
        pid = int(out.split()[0])
        assert alive(pid)
        delete(o, "sleeper")
        # The stream ends by itself (an open request side notwithstanding) with the status and the exit.
        rest = list(call)
    finally:
        requests.put(None)
        call.cancel()
    frames = [{str(r.WhichOneof("response")): _plain(r)} for r in rest]
    assert_final_exit(frames)
    sleep_gone(pid)


def _plain(r: exec_pb2.ExecResponse) -> Any:
    which = r.WhichOneof("response")
    if which == "status":
        return {"code": r.status.code, "message": r.status.message}
    if which == "exit":
        return {"code": r.exit.code, "signaled": r.exit.signaled, "signal": r.exit.signal}
    return base64.b64encode(getattr(r, str(which))).decode()


def test_exec_over_websocket_ends_when_the_service_is_deleted(o: Orch) -> None:
    cast_running(o, "sleeper", IDLE)
    url = f"ws://{o.runed.address('rest')}/v1/namespaces/default/exec/sleeper/ws"
    with connect(url, additional_headers={"authorization": o.auth[0][1]}) as ws:
        ws.send(json.dumps({"command": SLEEPER}))
        out = b""
        while not out.endswith(b"\n"):
            out += base64.b64decode(json.loads(ws.recv(timeout=TIMEOUT)).get("stdout", ""))
        pid = int(out.split()[0])
        delete(o, "sleeper")
        frames: list[dict[str, Any]] = []
        while not frames or "exit" not in frames[-1]:
            frames.append(json.loads(ws.recv(timeout=TIMEOUT)))
        assert_final_exit(frames)
        # And the server closes the socket: nothing more comes.
        with pytest.raises(ConnectionClosedOK):
            ws.recv(timeout=TIMEOUT)
    sleep_gone(pid)


def test_exec_over_sse_ends_when_the_service_is_deleted(o: Orch) -> None:
    cast_running(o, "sleeper", IDLE)
    with httpx.Client(base_url=o.runed.http_base, headers={"authorization": o.auth[0][1]}, timeout=TIMEOUT) as c:
        r = c.post("/v1/namespaces/default/exec/sleeper", json={"command": SLEEPER})
        assert r.status_code == 201, r.text
        sid = r.json()["sessionId"]
        frames: list[dict[str, Any]] = []
        pid = 0
        with c.stream("GET", f"/v1/namespaces/default/exec/sessions/{sid}/output") as s:
            assert s.status_code == 200
            # The SSE response ends by itself after the exit: reading to its end is the assertion.
            for ev in sse_events(s.iter_lines()):
                data = json.loads(ev["data"])
                if "stdout" in data and not pid:
                    pid = int(base64.b64decode(data["stdout"]).split()[0])
                    delete(o, "sleeper")
                elif pid:
                    frames.append(data)
    assert pid, "no pid printed"
    assert_final_exit(frames)
    sleep_gone(pid)


# -- logs -f -------------------------------------------------------------------------------------


class Follow:
    """A gRPC StreamLogs follow read on a thread, so the test can wait for its end with a deadline."""

    def __init__(self, o: Orch, **req: Any) -> None:
        self.requests: queue.Queue[logs_pb2.LogRequest | None] = queue.Queue()
        self.requests.put(logs_pb2.LogRequest(follow=True, **req))
        stub = logs_pb2_grpc.LogServiceStub(o.runed.channel())
        self.call = stub.StreamLogs(self._feed(), metadata=o.auth, timeout=TIMEOUT)
        self.got: list[logs_pb2.LogResponse] = []
        self.ended = threading.Event()
        self.error: grpc.RpcError | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _feed(self) -> Iterator[logs_pb2.LogRequest]:
        while (r := self.requests.get()) is not None:
            yield r

    def _read(self) -> None:
        try:
            for r in self.call:
                self.got.append(r)
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.ended.set()

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()


@pytest.mark.parametrize("target", ["service/ticker", "instance"])
def test_logs_follow_over_grpc_ends_when_the_service_is_deleted(o: Orch, target: str) -> None:
    inst = cast_running(o, "ticker", TICKER)
    if target == "instance":
        target = f"instance/{inst['id']}"
    f = Follow(o, resource_target=target)
    try:
        eventually(lambda: len(f.got) >= 3, timeout=TIMEOUT, what="lines followed")
        delete(o, "ticker")
        assert f.ended.wait(TIMEOUT), "the follow did not end with the service"
    finally:
        f.close()
    assert f.error is None, f.error
    last = f.got[-1]
    assert last.stream == "event" and list(last.status.details) == ["end_of_stream"], last
    what = "service ticker" if target.startswith("service/") else "instance ticker-0"
    assert last.status.message == f"{what} was deleted", last
    assert last.content.endswith("end of the log stream")
    ticks = [int(r.content.split()[1]) for r in f.got[:-1] if r.stream == "stdout"]
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), "every line up to the end, in order"


def test_logs_follow_over_sse_ends_when_the_service_is_deleted(o: Orch) -> None:
    cast_running(o, "ticker", TICKER)
    events: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=o.runed.http_base, headers={"authorization": o.auth[0][1]}, timeout=TIMEOUT) as c,
        c.stream("GET", "/v1/namespaces/default/logs/ticker", params={"follow": "true"}) as s,
    ):
        assert s.status_code == 200
        # The SSE response ends by itself after the last event: reading to its end is the assertion.
        for ev in sse_events(s.iter_lines()):
            events.append(json.loads(ev["data"]))
            if len(events) == 3:
                delete(o, "ticker")
    last = events[-1]
    assert last["stream"] == "event" and last["status"]["details"] == ["end_of_stream"], last
    assert last["status"]["message"] == "service ticker was deleted"


def test_a_restart_keeps_an_instance_follow_and_a_stop_ends_it_and_its_exec(o: Orch) -> None:
    inst = cast_running(o, "ticker", TICKER)
    instances = instance_pb2_grpc.InstanceServiceStub(o.runed.channel())
    action = instance_pb2.InstanceActionRequest(id=inst["id"], namespace="default")
    f = Follow(o, resource_target=f"instance/{inst['id']}")
    try:
        eventually(lambda: len(f.got) >= 3, timeout=TIMEOUT, what="lines followed")
        # A restart stops the process too, but the instance goes on: so does its follow.
        instances.RestartInstance(action, metadata=o.auth)

        def restarted() -> bool:
            ticks = [r.content for r in f.got if r.stream == "stdout"]
            assert "tick 0" in ticks[1:], ticks[-5:]
            return True

        eventually(restarted, timeout=TIMEOUT, what="lines of the restarted process on the same follow")
        assert not f.ended.is_set() and f.error is None
        eventually(lambda: o.running("ticker", 1), timeout=TIMEOUT)
        stub = exec_pb2_grpc.ExecServiceStub(o.runed.channel())
        init = exec_pb2.ExecInitRequest(instance_id=inst["id"], command=SLEEPER)
        call = stub.StreamExec(iter([exec_pb2.ExecRequest(init=init)]), metadata=o.auth, timeout=TIMEOUT)
        out = b""
        while not out.endswith(b"\n"):
            out += next(call).stdout
        pid = int(out.split()[0])
        # A stop for good ends both.
        instances.StopInstance(action, metadata=o.auth)
        frames = [{str(r.WhichOneof("response")): _plain(r)} for r in call]
        assert f.ended.wait(TIMEOUT), "the follow did not end with the stopped instance"
    finally:
        f.close()
    assert frames[0]["status"]["code"] == 10 and "instance ticker-0 is stopping" in frames[0]["status"]["message"]
    assert frames[-1]["exit"]["code"] == 137
    sleep_gone(pid)
    last = f.got[-1]
    assert list(last.status.details) == ["end_of_stream"] and last.status.message.startswith(
        "instance ticker-0 was stopped"
    )


# -- a resumed stream reports what rotation removed ---------------------------------------------------


def test_resume_from_a_rotated_away_cursor_reports_the_missing_lines(o: Orch) -> None:
    last_n = 300
    inst = cast_running(o, "counter", COUNTER, str(last_n))
    stub = logs_pb2_grpc.LogServiceStub(o.runed.channel())

    def history(**req: Any) -> list[logs_pb2.LogResponse]:
        return list(stub.StreamLogs(iter([logs_pb2.LogRequest(**req)]), metadata=o.auth, timeout=TIMEOUT))

    def first_five() -> list[logs_pb2.LogResponse]:
        got = history(resource_target="counter")
        assert len(got) == 5, [r.content for r in got]
        return got

    early = eventually(first_five, timeout=TIMEOUT)
    assert [r.content for r in early] == [f"n {i}" for i in range(1, 6)]
    cursor = early[2].cursor  # after "n 3"
    (Path(inst["workdir"]) / "go").touch()
    eventually(
        lambda: [r.content for r in history(resource_target="counter", tail=1)] == [f"n {last_n}"], timeout=TIMEOUT
    )
    resumed = history(resource_target="counter", after_cursor=cursor)
    marker, lines = resumed[0], resumed[1:]
    # What is left starts well after "n 4": everything in between is reported, not skipped.
    first_left = int(lines[0].content.split()[1])
    assert first_left > 4 + 50
    assert [r.content for r in lines] == [f"n {i}" for i in range(first_left, last_n + 1)]
    missing = first_left - 4
    assert marker.stream == "event" and marker.status.code == 15, marker  # DATA_LOSS
    assert list(marker.status.details) == [f"missing_lines={missing}", "first_seq=4", f"last_seq={first_left - 1}"]
    assert f"{missing} lines of counter-0" in marker.content and marker.seq == first_left - 1
    # Resuming from the marker's own cursor continues after the missing lines, without a second marker.
    again = history(resource_target="counter", after_cursor=marker.cursor)
    assert [r.content for r in again] == [r.content for r in lines]

    # The same marker travels on SSE, ahead of the remaining lines.
    events: list[dict[str, Any]] = []
    with (
        httpx.Client(base_url=o.runed.http_base, headers={"authorization": o.auth[0][1]}, timeout=TIMEOUT) as c,
        c.stream("GET", "/v1/namespaces/default/logs/counter", params={"follow": "true", "after_cursor": cursor}) as s,
    ):
        for ev in sse_events(s.iter_lines()):
            events.append(json.loads(ev["data"]))
            if events[-1]["content"] == f"n {last_n}":
                break
    assert events[0]["status"]["code"] == 15 and events[0]["status"]["details"][0] == f"missing_lines={missing}"
    assert [e["content"] for e in events[1:]] == [r.content for r in lines]
