"""What the API reports about services: watches that replay what was, terminal statuses, the scale cap."""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Iterator

import grpc
import httpx
import pytest

from rune.api import common_pb2, service_pb2
from tests.harness import run_runed
from tests.integration.orch import EXITER, Orch, runefile_args
from tests.support import bad_request_violations, eventually

BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
# Small on purpose: the cap is a setting, and a test must not start a thousand processes to reach it.
MAX_SCALE = 3
SLEEPER = "import time\nprint('up', flush=True)\ntime.sleep(3600)\n"
Seen = tuple[int, int, int, int]  # (revision, event type, scale, status)


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orch]:
    """A runed with fast controller settings and ``limits.max_scale: 3``."""
    tmp = tmp_path_factory.mktemp("reports")
    with run_runed(tmp / "data", args=runefile_args(tmp, f"limits:\n  max_scale: {MAX_SCALE}\n")) as r:
        yield Orch.on(r, tmp)


@pytest.fixture
def o(capped: Orch) -> Iterator[Orch]:
    yield capped
    capped.clear()


def _get(o: Orch, name: str) -> service_pb2.Service:
    svc: service_pb2.Service = o.services.GetService(service_pb2.GetServiceRequest(name=name), metadata=o.auth).service
    return svc


def _converged(o: Orch, name: str, scale: int) -> bool:
    svc = _get(o, name)
    assert (svc.scale, svc.status) == (scale, service_pb2.SERVICE_STATUS_RUNNING), (svc.scale, svc.status)
    return bool(o.running(name, scale))


class _Collector:
    """A WatchServices stream read in a thread: every event of one service, as (revision, type, scale, status)."""

    def __init__(self, o: Orch, name: str, since: int = 0) -> None:
        self.name = name
        self.events: list[Seen] = []
        req = service_pb2.WatchServicesRequest(since_revision=since)
        self.call = o.services.WatchServices(req, metadata=o.auth, timeout=120)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for ev in self.call:
                if ev.service.name == self.name:
                    self.events.append((ev.revision, ev.event_type, ev.service.scale, ev.service.status))
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise

    def until(self, revision: int) -> list[Seen]:
        """Every event up to ``revision`` once the stream has delivered it."""
        eventually(lambda: self.events and self.events[-1][0] >= revision, timeout=20, what=f"revision {revision}")
        return [e for e in self.events if e[0] <= revision]

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(10)


def test_a_resumed_watch_replays_exactly_what_the_live_watch_showed(o: Orch) -> None:
    o.cast("w", o.program("sleeper", SLEEPER))
    eventually(lambda: _converged(o, "w", 1), timeout=20)
    live = _Collector(o, "w")
    try:
        eventually(lambda: live.events, what="the snapshot")
        start = live.events[0][0]
        for scale in (3, 2):
            o.services.ScaleService(service_pb2.ScaleServiceRequest(name="w", scale=scale), metadata=o.auth)
            # Status changes interleave with the spec changes: each scale is reached before the next.
            eventually(functools.partial(_converged, o, "w", scale), timeout=30)
        st = o.store()
        try:
            last = max(c.revision for c in st.changes_since(start, ["service", "service_status"]) if c.name == "w")
        finally:
            st.close()
        shown = live.until(last)
    finally:
        live.close()
    resumed = _Collector(o, "w", since=start)
    try:
        replayed = resumed.until(last)
    finally:
        resumed.close()
    # The snapshot (ADDED at ``start``) is not part of a resume from ``start``; every change after it is.
    assert shown[0][:2] == (start, common_pb2.EVENT_TYPE_ADDED)
    assert replayed == shown[1:]
    # And what both show is what was: scale 3 reported Running before the scale went down to 2.
    running = service_pb2.SERVICE_STATUS_RUNNING
    assert [s for _, _, s, st in replayed if st == running and s > 1][:1] == [3], replayed
    assert replayed[-1][2:] == (2, running), replayed


def test_a_job_that_completes_is_completed_not_pending(o: Orch) -> None:
    o.cast("job", o.program("exiter", EXITER), "0", "0.2", restart_policy=common_pb2.RESTART_POLICY_ON_FAILURE)

    def completed() -> service_pb2.Service:
        svc = _get(o, "job")
        assert svc.status == service_pb2.SERVICE_STATUS_COMPLETED, svc.status
        return svc

    svc = eventually(completed, timeout=20)
    assert svc.status_final and "1/1 instances completed (exit code 0)" in svc.status_message
    listed = o.services.ListServices(
        service_pb2.ListServicesRequest(field_selector_expr="status=completed"), metadata=o.auth
    ).services
    assert [s.name for s in listed] == ["job"]
    # A wait for the scale ends at once: the job is done and will not run again.
    req = service_pb2.WatchScalingRequest(service_name="job", target_scale=1)
    progress = list(o.services.WatchScaling(req, metadata=o.auth, timeout=30))
    assert progress[-1].complete and progress[-1].status.code == 0, progress[-1]
    assert "completed" in progress[-1].status.message
    # REST shows the same.
    r = httpx.get(o.runed.http_base + "/v1/namespaces/default/services/job", headers=dict(o.auth), timeout=10).json()[
        "service"
    ]
    assert (r["status"], r["statusFinal"]) == ("SERVICE_STATUS_COMPLETED", True), r


def test_an_instance_that_fails_for_good_fails_the_service_and_its_waits(o: Orch) -> None:
    script = o.program("exiter", EXITER)
    o.cast("never", script, "1", "0.2", restart_policy=common_pb2.RESTART_POLICY_NEVER)
    o.cast("loop", script, "3", "0.2")  # Always: a crash loop may still recover, so it is not final

    def failed(name: str) -> service_pb2.Service:
        svc = _get(o, name)
        assert svc.status == service_pb2.SERVICE_STATUS_FAILED, svc.status
        return svc

    never = eventually(lambda: failed("never"), timeout=20)
    assert never.status_final, never
    assert "never-0: Error: exit code 1" in never.status_message and "does not restart" in never.status_message
    loop = eventually(lambda: failed("loop"), timeout=20)
    assert not loop.status_final and "loop-0" in loop.status_message, loop
    # Waiting for the scale ends with the reason instead of running into the deadline.
    req = service_pb2.WatchScalingRequest(service_name="never", target_scale=1)
    progress = list(o.services.WatchScaling(req, metadata=o.auth, timeout=30))
    last = progress[-1]
    assert not last.complete and last.status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0], last
    assert "exit code 1" in last.status.message


def _gate(o: Orch) -> service_pb2.DependencyRef:
    """A dependency that never gets ready (scale 0): were the cap ever lost, no instance would start."""
    gate = service_pb2.Service(name="gate", runtime="process", scale=0)
    gate.process.command = sys.executable
    o.services.CreateService(service_pb2.CreateServiceRequest(service=gate), metadata=o.auth)
    return service_pb2.DependencyRef(service="gate")


def test_scale_is_capped_on_create_update_and_scale_over_grpc(o: Orch) -> None:
    svc = service_pb2.Service(name="big", runtime="process", scale=MAX_SCALE + 1, dependencies=[_gate(o)])
    svc.process.command = sys.executable
    cases = [
        ("CreateService", service_pb2.CreateServiceRequest(service=svc), "service.scale"),
        ("UpdateService", service_pb2.UpdateServiceRequest(service=svc), "service.scale"),
        ("ScaleService", service_pb2.ScaleServiceRequest(name="big", scale=2_000_000), "scale"),
    ]
    svc0 = service_pb2.Service()
    svc0.CopyFrom(svc)
    svc0.scale = 0
    o.services.CreateService(service_pb2.CreateServiceRequest(service=svc0), metadata=o.auth)
    for method, req, field in cases:
        with pytest.raises(grpc.RpcError) as err:
            getattr(o.services, method)(req, metadata=o.auth)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.value)
        violations = bad_request_violations(err.value)
        assert list(violations) == [field], (method, violations)
        assert f"at most {MAX_SCALE} (limits.max_scale)" in violations[field], violations
    assert _get(o, "big").scale == 0
    # The cap itself is allowed (ScaleService records an operation; the controller applies it).
    o.services.ScaleService(service_pb2.ScaleServiceRequest(name="big", scale=MAX_SCALE), metadata=o.auth)
    eventually(lambda: _get(o, "big").scale == MAX_SCALE, timeout=30, what="scale applied")


def test_scale_is_capped_over_rest(o: Orch) -> None:
    base = o.runed.http_base + "/v1/namespaces/default/services"
    _gate(o)
    with httpx.Client(headers=dict(o.auth), timeout=10) as http:
        svc = {
            "name": "rest-big",
            "runtime": "process",
            "process": {"command": "true"},
            "scale": MAX_SCALE + 1,
            "dependencies": [{"service": "gate"}],
        }
        for r, field in (
            (http.post(base, json=svc), "service.scale"),
            (http.put(f"{base}/rest-big", json=svc), "service.scale"),
        ):
            assert r.status_code == 400, r.text
            assert [(v["field"], f"at most {MAX_SCALE}" in v["description"]) for v in _violations(r.json())] == [
                (field, True)
            ], r.text
        assert http.post(base, json=dict(svc, scale=0)).status_code == 200
        r = http.post(f"{base}/rest-big:scale", json={"scale": 2_000_000})
        assert r.status_code == 400, r.text
        assert [v["field"] for v in _violations(r.json())] == ["scale"], r.text
        assert "limits.max_scale" in r.json()["message"]


def _violations(body: dict[str, object]) -> list[dict[str, str]]:
    details = body.get("details", [])
    assert isinstance(details, list), body
    for d in details:
        if d["@type"] == BAD_REQUEST:
            return list(d["fieldViolations"])
    return []
