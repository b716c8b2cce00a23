"""StreamLogs(show_events): instance lifecycle events from the controller, interleaved with real output."""

from __future__ import annotations

import queue
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from rune.api import common_pb2, logs_pb2, logs_pb2_grpc
from runed.runner import native
from tests.harness import RunedFactory
from tests.integration.orch import EXITER, SERVER, Orch, runefile_args
from tests.support import eventually

# Kills itself with SIGKILL: an exit by signal, not by code.
SELF_KILLER = textwrap.dedent(
    """
    import os, signal
    print("about to die", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


NEEDS_KEEPER = pytest.mark.skipif(native.shim_path() is None, reason="no C compiler: no keeper")


def _stub(o: Orch) -> logs_pb2_grpc.LogServiceStub:
    return logs_pb2_grpc.LogServiceStub(o.runed.channel())


def _history(o: Orch, target: str, **kw: object) -> list[logs_pb2.LogResponse]:
    req = logs_pb2.LogRequest(resource_target=target, **kw)  # type: ignore[arg-type]
    return list(_stub(o).StreamLogs(iter([req]), metadata=o.auth, timeout=20))


def _events(lines: list[logs_pb2.LogResponse]) -> list[str]:
    return [x.content for x in lines if x.stream == "event"]


def _restarts(o: Orch, name: str, n: int) -> dict[str, object]:
    insts = o.instances(name)
    assert len(insts) == 1, insts
    inst = insts[0]
    assert int(inst["restart_count"]) >= n, (inst["state"], inst["reason"])
    return inst


@pytest.fixture(params=["auto", pytest.param("shared", marks=NEEDS_KEEPER)])
def either_orch(request: pytest.FixtureRequest, runed_factory: RunedFactory, tmp_path: Path) -> Iterator[Orch]:
    """The module's runed (a shim per instance), or one of the test's own with one keeper for all
    (whose instances start, and print, sooner after they are asked for)."""
    if request.param == "auto":
        yield request.getfixturevalue("orch")
        return
    env = {"RUNE_CONTROLLER_SHIM": "shared"}
    o = Orch.on(runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env=env), tmp_path)
    yield o
    o.clear()


def test_crash_loop_events_interleave_with_output(either_orch: Orch) -> None:
    o = either_orch
    o.cast("crash", o.program("exiter", EXITER), "3", "0.1")
    eventually(lambda: _restarts(o, "crash", 2), timeout=20)

    plain = _history(o, "crash")
    assert plain and {x.stream for x in plain} == {"stdout"}, "events are shown only when asked for"

    mixed = _history(o, "crash", show_events=True)
    events = _events(mixed)
    assert events[0] == "Starting"
    assert any(e.startswith("Started: pid ") for e in events), events
    assert "Exited: exit code 3" in events
    assert any(e.startswith("Back-off: restarting in 0.3s (restart policy Always, exit code 3)") for e in events), (
        events
    )
    assert "Restarting after back-off (restart 1)" in events
    # One timeline: every "run" line sits between a "Started" event and the "Exited" event that
    # follows it (a Started event is stamped when the process started, not when runed saw it run).
    timeline = [x.content if x.stream == "event" else f"out:{x.content}" for x in mixed]
    runs = [i for i, line in enumerate(timeline) if line == "out:run"]
    assert len(runs) >= 2, timeline  # two restarts: two runs ended, a third may not have printed yet
    for i in runs:
        assert timeline[i - 1].startswith("Started: pid "), timeline[i - 3 : i + 2]
        # The last run may still be going.
        assert timeline[i + 1 : i + 2] in (["Exited: exit code 3"], []), timeline[i - 1 : i + 3]
    assert [x.timestamp for x in mixed] == sorted(x.timestamp for x in mixed)
    # Event lines name their instance and carry their own seq, independent of the output's.
    ev = [x for x in mixed if x.stream == "event"]
    assert {x.service_name for x in ev} == {"crash"} and {x.instance_name for x in ev} == {"crash-0"}
    seqs = [x.seq for x in ev]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    # The stdout/stderr choice limits output, not events.
    only_err = _history(o, "crash", show_events=True, stream="stderr")
    assert only_err and {x.stream for x in only_err} == {"event"}


def test_exit_by_signal_and_never_restarted(orch: Orch) -> None:
    o = orch
    o.cast("killer", o.program("killer", SELF_KILLER), restart_policy=common_pb2.RESTART_POLICY_NEVER)

    def exited() -> list[str]:
        events = _events(_history(o, "killer", show_events=True))
        assert "Not restarted (restart policy Never)" in events, events
        return events

    events = eventually(exited, timeout=15)
    assert "Exited: killed by signal 9" in events
    assert events.index("Exited: killed by signal 9") < events.index("Not restarted (restart policy Never)")


class _Follow:
    """A follow stream read on a thread, so the test can wait on it with a deadline."""

    def __init__(self, o: Orch, **req: object) -> None:
        self.got: queue.Queue[logs_pb2.LogResponse] = queue.Queue()
        self.stop = threading.Event()
        first = logs_pb2.LogRequest(follow=True, **req)  # type: ignore[arg-type]
        self.call = _stub(o).StreamLogs(self._requests(first), metadata=o.auth, timeout=30)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _requests(self, first: logs_pb2.LogRequest) -> Iterator[logs_pb2.LogRequest]:
        yield first
        self.stop.wait()

    def _read(self) -> None:
        try:
            for x in self.call:
                self.got.put(x)
        except grpc.RpcError:
            pass

    def until(
        self, pred: Callable[[list[logs_pb2.LogResponse]], bool], timeout: float = 20
    ) -> list[logs_pb2.LogResponse]:
        out: list[logs_pb2.LogResponse] = []

        def seen() -> bool:
            while not self.got.empty():
                out.append(self.got.get_nowait())
            assert pred(out), [x.content for x in out]
            return True

        eventually(seen, timeout=timeout)
        return out

    def close(self) -> None:
        self.call.cancel()
        self.stop.set()
        self.thread.join(10)


def test_liveness_kill_is_followed_live_and_resumes_from_a_cursor(orch: Orch) -> None:
    o = orch
    live = common_pb2.Probe(
        type=common_pb2.PROBE_TYPE_HTTP, path="/live", port=8080, period_seconds=1, failure_threshold=2
    )
    o.cast(
        "lively",
        o.program("server", SERVER),
        ports=[common_pb2.ServicePort(name="http", port=8080)],
        health=common_pb2.HealthCheck(liveness=live),
    )
    (inst,) = eventually(lambda: o.running("lively", 1), timeout=15)
    history = _history(o, "lively", show_events=True)
    assert any(x.content.startswith("Started: pid ") for x in history)
    resume_at = history[-1].cursor

    follow = _Follow(o, resource_target="lively", show_events=True)
    try:
        (Path(str(inst["workdir"])) / "unhealthy").write_text("x")
        # The history first (tail 0: all of it), then live lines until the restarted server is up.
        got = follow.until(lambda out: sum(e.startswith("Started: pid ") for e in _events(out)) >= 2)
    finally:
        follow.close()
    before = _events(history)
    assert _events(got)[: len(before)] == before
    events = _events(got)[len(before) :]
    assert any(e.startswith("Liveness probe failed: ") and not e.endswith("; killing") for e in events), events
    kill = next(e for e in events if e.endswith("; killing"))
    assert kill.startswith("Liveness probe failed: ")
    order = [
        events.index(kill),
        events.index("Stopping: LivenessProbeFailed: restarting"),
        next(i for i, e in enumerate(events) if e.startswith("Stopped: ")),
        next(i for i, e in enumerate(events) if e.startswith("Back-off: ") or e.endswith("(restart 1)")),
    ]
    assert order == sorted(order), events

    # The cursor covers output and events: resuming returns exactly what came after it, once each.
    resumed = _history(o, "lively", show_events=True, after_cursor=resume_at)
    assert _events(resumed)[: len(events)] == events
    keys = [(x.stream == "event", x.seq) for x in resumed]
    assert len(keys) == len(set(keys))
    assert not {(x.stream == "event", x.seq) for x in history} & set(keys)


def test_events_over_rest_when_asked_for(orch: Orch) -> None:
    import httpx
    import orjson

    o = orch
    o.cast("crashrest", o.program("exiter", EXITER), "3", "0.1")
    eventually(lambda: _restarts(o, "crashrest", 1), timeout=20)
    headers = {"Authorization": o.auth[0][1]}
    url = f"{o.runed.http_base}/v1/namespaces/default/logs/crashrest"
    with httpx.Client(timeout=20) as http:
        plain = http.get(url, headers=headers)
        mixed = http.get(url, params={"show_events": "true"}, headers=headers)
    assert plain.status_code == 200 and mixed.status_code == 200, (plain.text, mixed.text)
    plain_streams = {orjson.loads(line)["stream"] for line in plain.text.splitlines() if line.strip()}
    mixed_lines = [orjson.loads(line) for line in mixed.text.splitlines() if line.strip()]
    assert plain_streams == {"stdout"}
    assert "Exited: exit code 3" in [x["content"] for x in mixed_lines if x["stream"] == "event"]


def test_the_events_alone_are_asked_for_with_stream_event(orch: Orch) -> None:
    """``stream: "event"`` gives the lifecycle events alone (no ``show_events`` needed): no output
    line, ``tail`` counting events, the same over REST; another stream value is named in the error."""
    import httpx
    import orjson

    o = orch
    # Output before and after its events: a tail of the mixed stream would end with output lines.
    o.cast_shell(
        "evonly", "for i in 1 2 3 4 5; do echo line $i; done; exit 4", restart_policy=common_pb2.RESTART_POLICY_NEVER
    )

    def stopped() -> list[logs_pb2.LogResponse]:
        mixed = _history(o, "evonly", show_events=True)
        assert "Not restarted (restart policy Never)" in _events(mixed), _events(mixed)
        return mixed

    mixed = eventually(stopped, timeout=15)
    alone = _history(o, "evonly", stream="event")
    assert alone and {x.stream for x in alone} == {"event"}
    assert [(x.content, x.seq) for x in alone] == [(x.content, x.seq) for x in mixed if x.stream == "event"]
    assert "Exited: exit code 4" in _events(alone)
    last2 = _history(o, "evonly", stream="event", tail=2)
    assert [(x.content, x.seq) for x in last2] == [(x.content, x.seq) for x in alone[-2:]]

    headers = {"Authorization": o.auth[0][1]}
    url = f"{o.runed.http_base}/v1/namespaces/default/logs/evonly"
    with httpx.Client(timeout=20) as http:
        rest = http.get(url, params={"stream": "event"}, headers=headers)
        bad = http.get(url, params={"stream": "events"}, headers=headers)
    assert rest.status_code == 200, rest.text
    assert [orjson.loads(line)["content"] for line in rest.text.splitlines() if line.strip()] == _events(alone)
    assert bad.status_code == 400, bad.text
    violations = [v for d in bad.json()["details"] for v in d.get("fieldViolations", [])]
    assert [v["field"] for v in violations] == ["stream"] and '"event"' in violations[0]["description"], violations


def test_a_run_too_short_to_be_seen_running_still_has_its_started_event(orch: Orch) -> None:
    """Instances that exit within a millisecond of their start: each run's events are Started then
    Exited, also when no pass saw it running (its Started event was missing then, for some runs:
    eight instances restarting three times make that all but certain to show)."""
    o = orch
    o.cast_shell("blink", "exit 3", scale=8)

    def restarted() -> bool:
        counts = [int(i["restart_count"]) for i in o.instances("blink")]
        assert len(counts) == 8 and min(counts) >= 3, counts
        return True

    eventually(restarted, timeout=30)
    lines = _history(o, "blink", stream="event")
    for name in {x.instance_name for x in lines}:
        runs = [
            x.content for x in lines if x.instance_name == name and x.content.startswith(("Started: pid ", "Exited: "))
        ]
        exits = [i for i, e in enumerate(runs) if e.startswith("Exited: ")]
        assert len(exits) >= 3, (name, runs)
        assert all(i > 0 and runs[i - 1].startswith("Started: pid ") for i in exits), (name, runs)


def test_an_events_only_follow_makes_cursors_past_the_output_it_did_not_read(orch: Orch, tmp_path: Path) -> None:
    """Following ``stream: "event"`` reads no output, but the cursor of an event it follows (not one
    of its history, whose output positions are those at its start) stands after the output written
    before that event: resumed for the output, it gives what came after. Each run prints after a
    second, so the first end comes while the stream follows."""
    o = orch
    count = tmp_path / "runs"
    o.cast_shell(
        "evrun", f"n=$(($(cat {count} 2>/dev/null || echo 0) + 1)); echo $n > {count}; sleep 1; echo run $n; exit 3"
    )
    follow = _Follow(o, resource_target="evrun", stream="event")
    try:
        got = follow.until(lambda out: sum(x.content == "Exited: exit code 3" for x in out) >= 2)
    finally:
        follow.close()
    assert {x.stream for x in got} == {"event"}, [(x.stream, x.content) for x in got]
    first_exit = next(x for x in got if x.content == "Exited: exit code 3")
    resumed = _history(o, "evrun", after_cursor=first_exit.cursor, stream="stdout")
    assert resumed and resumed[0].content == "run 2", [x.content for x in resumed]
    assert [x.content for x in resumed] == [f"run {i}" for i in range(2, len(resumed) + 2)]
