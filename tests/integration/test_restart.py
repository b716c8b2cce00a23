"""Restart policies with capped exponential back-off, crash-loop state, instance actions, container runtime."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest

from rune.api import common_pb2, instance_pb2, instance_pb2_grpc, service_pb2
from runed.model import objects
from runed.store.base import DELETED
from tests.harness import RunedFactory
from tests.integration.orch import EXITER, SERVER, STUBBORN, Orch
from tests.support import alive, eventually


def _starts(o: Orch, inst: dict[str, object]) -> list[float]:
    """Timestamps of the program's "run" lines: one per start."""
    path = Path(str(inst["log_dir"])) / "log.jsonl"
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec["line"] == "run":
            out.append(dt.datetime.fromisoformat(rec["ts"][:26] + "+00:00").timestamp())
    return out


def test_always_restarts_with_growing_capped_backoff(orch: Orch) -> None:
    script = orch.program("exiter", EXITER)
    orch.cast("crash", script, "3", "0")

    def looping() -> dict[str, Any]:
        inst = orch.one("crash")
        assert inst["restart_count"] >= 4, inst["restart_count"]
        return inst

    inst = eventually(looping, timeout=20)
    assert inst["last_exit_code"] == 3
    eventually(lambda: "CrashLoopBackOff" in orch.instances("crash")[0]["reason"])
    starts = _starts(orch, inst)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # Back-off 0.3, 0.6, 1.2, then capped at 1.2 (plus start-up time each).
    assert gaps[0] < gaps[2], gaps
    assert gaps[2] >= 1.1 and gaps[3] < 1.2 + 1.5, gaps
    # The same instance record is restarted, not replaced: no duplicates.
    assert len(orch.instances("crash")) == 1
    svc = orch.services.GetService(service_pb2.GetServiceRequest(name="crash"), metadata=orch.auth).service
    assert svc.status == service_pb2.SERVICE_STATUS_FAILED


def test_on_failure_and_never(orch: Orch) -> None:
    script = orch.program("exiter", EXITER)
    orch.cast("ok", script, "0", "0.2", restart_policy=common_pb2.RESTART_POLICY_ON_FAILURE)
    orch.cast("bad", script, "5", "0.2", restart_policy=common_pb2.RESTART_POLICY_ON_FAILURE)
    orch.cast("never", script, "5", "0.2", restart_policy=common_pb2.RESTART_POLICY_NEVER)

    def settled(name: str, state: str) -> dict[str, Any]:
        inst = orch.one(name)
        assert inst["state"] == state, inst["state"]
        return inst

    ok = eventually(lambda: settled("ok", "EXITED"), timeout=15)
    assert ok["last_exit_code"] == 0 and ok["restart_count"] == 0 and str(ok["reason"]).startswith("Completed")
    never = eventually(lambda: settled("never", "EXITED"), timeout=15)
    assert never["last_exit_code"] == 5 and never["restart_count"] == 0 and str(never["reason"]).startswith("Error")
    eventually(lambda: orch.instances("bad")[0]["restart_count"] >= 2, timeout=15)
    # Still exited a while later: the policy is honoured, the reconciler does not re-create it.
    eventually(lambda: orch.instances("bad")[0]["restart_count"] >= 3, timeout=15)
    assert settled("ok", "EXITED")["restart_count"] == 0
    assert settled("never", "EXITED")["restart_count"] == 0


def test_killed_process_is_restarted(orch: Orch) -> None:
    script = orch.program("server", SERVER)
    orch.cast("victim", script, ports=[common_pb2.ServicePort(name="http", port=80)])
    (inst,) = eventually(lambda: orch.running("victim", 1), timeout=15)
    os.kill(inst["pid"], signal.SIGKILL)

    def restarted() -> dict[str, Any]:
        (new,) = orch.running("victim", 1)
        assert new["restart_count"] == 1 and new["pid"] != inst["pid"]
        return new

    new = eventually(restarted, timeout=15)
    assert new["id"] == inst["id"] and new["last_signal"] == signal.SIGKILL
    assert new["ports"] == inst["ports"], "a restart keeps the instance's host port"


def test_instance_stop_start_restart(orch: Orch) -> None:
    script = orch.program("stubborn", STUBBORN)
    orch.cast("act", script)
    (inst,) = eventually(lambda: orch.running("act", 1), timeout=15)
    stub = instance_pb2_grpc.InstanceServiceStub(orch.runed.channel())
    req = instance_pb2.InstanceActionRequest(id=inst["id"], namespace="default", timeout_seconds=1)
    stub.StopInstance(req, metadata=orch.auth)
    eventually(lambda: orch.instances("act")[0]["state"] == "STOPPED", timeout=10)
    assert not alive(inst["pid"])
    got = stub.GetInstance(instance_pb2.GetInstanceRequest(id=inst["id"], namespace="default"), metadata=orch.auth)
    assert got.instance.status == instance_pb2.INSTANCE_STATUS_STOPPED
    stub.StartInstance(req, metadata=orch.auth)
    (started,) = eventually(lambda: orch.running("act", 1), timeout=10)
    stub.RestartInstance(req, metadata=orch.auth)
    eventually(lambda: orch.running("act", 1)[0]["pid"] != started["pid"], timeout=10)
    assert orch.instances("act")[0]["restart_count"] >= 2
    # Namespace is honoured: the same id in another namespace is not found.
    with pytest.raises(grpc.RpcError) as e:
        stub.StopInstance(instance_pb2.InstanceActionRequest(id=inst["id"], namespace="other"), metadata=orch.auth)
    assert e.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED)


def test_container_runtime_without_engine(orch: Orch) -> None:
    svc = service_pb2.Service(name="box", namespace="default", image="alpine:3", runtime="container", scale=1)
    with pytest.raises(grpc.RpcError) as e:
        orch.services.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=orch.auth)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # A container service already in the store (e.g. cast while an engine was up) fails with a reason,
    # while process services keep working.
    svc.metadata.generation = 1
    st = orch.store()
    try:
        st.put(objects.SERVICE, "default", "box", objects.service_record_data(svc, generation=1))
    finally:
        st.close()

    def fatal() -> dict[str, Any]:
        inst = orch.one("box")
        assert inst["state"] == "FATAL", inst["state"]
        return inst

    inst = eventually(fatal, timeout=10)
    assert "container runtime unavailable" in str(inst["reason"])
    orch.cast("proc", orch.program("server", SERVER), ports=[common_pb2.ServicePort(name="http", port=80)])
    eventually(lambda: orch.running("proc", 1), timeout=15)


def test_start_request_runs_a_never_instance_once(orch: Orch) -> None:
    script = orch.program("exiter", EXITER)
    orch.cast("once", script, "4", "0.2", restart_policy=common_pb2.RESTART_POLICY_NEVER)

    def exited() -> dict[str, Any]:
        inst = orch.one("once")
        assert inst["state"] == "EXITED", inst["state"]
        return inst

    first = eventually(exited, timeout=15)
    stub = instance_pb2_grpc.InstanceServiceStub(orch.runed.channel())
    stub.StartInstance(instance_pb2.InstanceActionRequest(id=str(first["id"]), namespace="default"), metadata=orch.auth)

    def ran_again() -> dict[str, Any]:
        inst = orch.one("once")
        assert inst["restart_count"] == 1 and inst["state"] == "EXITED", (inst["state"], inst["restart_count"])
        return inst

    eventually(ran_again, timeout=15)
    # The request was carried out once: after this exit the Never policy holds again. Reconcile
    # passes (every pass handles every action) have run once another service has come up.
    orch.cast("marker", orch.program("server", SERVER), ports=[common_pb2.ServicePort(name="http", port=80)])
    eventually(lambda: orch.running("marker", 1), timeout=15)
    again = ran_again()
    assert len(_starts(orch, again)) == 2


def test_an_instance_s_action_record_leaves_with_it(own_orch: Orch, runed_factory: RunedFactory) -> None:
    """A deleted instance's action record is deleted with its record (the revision after it), whether
    the controller read it at start-up or from its watch; an action of no instance is deleted by a pass."""
    o = own_orch
    o.cast("acted", o.program("stubborn", STUBBORN), scale=3)
    read, watched, plain = (i["id"] for i in eventually(lambda: o.running("acted", 3), timeout=15))

    def restart(iid: str) -> None:
        stub = instance_pb2_grpc.InstanceServiceStub(o.runed.channel())
        req = instance_pb2.InstanceActionRequest(id=iid, namespace="default", timeout_seconds=1)
        stub.RestartInstance(req, metadata=o.auth)
        eventually(lambda: {i["id"]: i for i in o.running("acted", 3)}[iid]["restart_count"] >= 1, timeout=10)

    restart(read)
    # A runed started anew reads that action at start-up.
    o.kill_runed()
    o.restart_runed(runed_factory)
    eventually(lambda: o.running("acted", 3), timeout=15)
    restart(watched)
    st = o.store()
    try:
        since = st.current_revision()
        o.services.DeleteService(service_pb2.DeleteServiceRequest(name="acted"), metadata=o.auth)
        eventually(lambda: o.service_gone("acted"), timeout=15)
        deleted = {(c.kind, c.name): c.revision for c in st.changes_since(since) if c.op == DELETED}
        for iid in (read, watched):
            assert deleted.get((objects.INSTANCE_ACTION, iid)) == deleted[(objects.INSTANCE, iid)] + 1
        assert (objects.INSTANCE, plain) in deleted and (objects.INSTANCE_ACTION, plain) not in deleted
        st.put(objects.INSTANCE_ACTION, "default", "no-such-instance", {"desired": "running", "restart_seq": 1})
        eventually(lambda: st.get(objects.INSTANCE_ACTION, "default", "no-such-instance") is None, timeout=10)
    finally:
        st.close()
