"""Liveness failures restart, readiness gates "ready" and dependents; HTTP, TCP and exec probes."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

from rune.api import common_pb2, health_pb2, health_pb2_grpc, service_pb2
from tests.integration.orch import SERVER, Orch
from tests.support import eventually

HTTP_PORT = [common_pb2.ServicePort(name="http", port=8080)]


def test_failing_liveness_probe_restarts(orch: Orch) -> None:
    live = common_pb2.Probe(
        type=common_pb2.PROBE_TYPE_HTTP, path="/live", port=8080, period_seconds=1, failure_threshold=2
    )
    orch.cast("lively", orch.program("server", SERVER), ports=HTTP_PORT, health=common_pb2.HealthCheck(liveness=live))
    (inst,) = eventually(lambda: orch.running("lively", 1), timeout=15)
    assert inst["restart_count"] == 0
    marker = Path(str(inst["workdir"])) / "unhealthy"
    marker.write_text("x")

    def restarted() -> dict[str, Any]:
        cur = orch.one("lively")
        assert cur["restart_count"] >= 1 and cur["pid"] != inst["pid"], (cur["state"], cur["reason"])
        return cur

    eventually(restarted, timeout=15)
    marker.unlink()
    (after,) = eventually(lambda: orch.running("lively", 1), timeout=15)
    count = after["restart_count"]
    # Healthy again: it stays up, and GetHealth shows the passing liveness check.
    health = health_pb2_grpc.HealthServiceStub(orch.runed.channel())

    def healthy() -> health_pb2.ComponentHealth:
        resp: health_pb2.GetHealthResponse = health.GetHealth(
            health_pb2.GetHealthRequest(component_type="instance", name=str(after["id"]), include_checks=True),
            metadata=orch.auth,
        )
        (c,) = resp.components
        assert c.status == health_pb2.HEALTH_STATUS_HEALTHY, c
        assert any(
            r.type == health_pb2.HEALTH_CHECK_TYPE_LIVENESS and r.consecutive_successes >= 1 for r in c.check_results
        ), c
        return c

    eventually(healthy, timeout=10)
    assert orch.one("lively")["restart_count"] == count


def test_readiness_gates_ready_and_dependents(orch: Orch) -> None:
    ready_file = orch.tmp / "db-ready"
    ready = common_pb2.Probe(type=common_pb2.PROBE_TYPE_HTTP, path="/ready", port=8080, period_seconds=1)
    script = orch.program("server", SERVER)
    orch.cast(
        "db",
        script,
        ports=HTTP_PORT,
        env={"READY_FILE": str(ready_file)},
        health=common_pb2.HealthCheck(readiness=ready),
    )
    orch.cast(
        "app", script, ports=HTTP_PORT, dependencies=[service_pb2.DependencyRef(service="db", namespace="default")]
    )

    def db_running_not_ready() -> bool:
        inst = orch.one("db")
        assert inst["state"] == "RUNNING" and not inst["ready"]
        return True

    eventually(db_running_not_ready, timeout=15)

    def app_waiting() -> bool:
        st = orch.store()
        try:
            status = st.get("service_status", "default", "app")
        finally:
            st.close()
        assert status is not None and "waiting for dependency service default/db" in status.data["message"]
        return True

    eventually(app_waiting, timeout=10)
    assert orch.instances("app") == [], "a dependent does not start before its dependency is ready"
    svc = orch.services.GetService(service_pb2.GetServiceRequest(name="db"), metadata=orch.auth).service
    assert svc.status != service_pb2.SERVICE_STATUS_RUNNING
    ready_file.write_text("ok")
    eventually(lambda: orch.running("db", 1), timeout=10)
    eventually(lambda: orch.running("app", 1), timeout=10)


def test_tcp_and_exec_probes(orch: Orch) -> None:
    tcp = common_pb2.Probe(type=common_pb2.PROBE_TYPE_TCP, port=8080, period_seconds=1)
    check = "import os, sys; sys.exit(0 if os.path.exists('go') else 1)"
    exe = common_pb2.Probe(
        type=common_pb2.PROBE_TYPE_COMMAND,
        command=[sys.executable, "-c", check],
        period_seconds=1,
        success_threshold=2,
        timeout_seconds=5,
    )
    script = orch.program("server", SERVER)
    orch.cast("tcp", script, ports=HTTP_PORT, health=common_pb2.HealthCheck(readiness=tcp))
    orch.cast("exe", script, ports=HTTP_PORT, health=common_pb2.HealthCheck(readiness=exe))
    eventually(lambda: orch.running("tcp", 1), timeout=15)

    def exe_not_ready() -> dict[str, Any]:
        inst = orch.one("exe")
        assert inst["state"] == "RUNNING" and not inst["ready"]
        return inst

    inst = eventually(exe_not_ready, timeout=15)
    # The exec probe runs in the instance's working directory.
    (Path(str(inst["workdir"])) / "go").write_text("1")
    eventually(lambda: orch.running("exe", 1), timeout=10)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_an_exec_probe_runs_as_the_instance_s_user(orch: Orch) -> None:
    """An instance that runs as another user is probed as that user (its group, not runed's), not as root."""
    probe = common_pb2.Probe(
        type=common_pb2.PROBE_TYPE_COMMAND,
        command=["/bin/sh", "-c", 'test "$(id -u) $(id -G)" = "65534 65534"'],
        period_seconds=1,
        timeout_seconds=5,
    )
    orch.cast_command(
        "nobody",
        ["sleep", "60"],
        process={"security_context": common_pb2.ProcessSecurityContext(user="nobody", group="nogroup")},
        health=common_pb2.HealthCheck(readiness=probe),
    )
    (inst,) = eventually(lambda: orch.running("nobody", 1), timeout=15)
    assert inst["uid"] == 65534 and inst["ready"]
