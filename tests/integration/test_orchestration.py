"""Casting real process services: env, mounts, ports, logs, scaling, rolling update, deletion."""

from __future__ import annotations

import functools
import json
import os
import stat
import sys
import urllib.request
from pathlib import Path

import grpc
import pytest

from rune.api import (
    common_pb2,
    configmap_pb2,
    configmap_pb2_grpc,
    health_pb2,
    health_pb2_grpc,
    secret_pb2,
    secret_pb2_grpc,
    service_pb2,
)
from tests.integration.orch import SERVER, STUBBORN, Orch
from tests.support import alive, eventually

HTTP_PORT = [common_pb2.ServicePort(name="http", port=8080)]


def _env_of(o: Orch, inst: dict[str, object]) -> dict[str, str]:
    lines = [ln for ln in o.log_lines(inst) if ln.startswith("env ")]  # type: ignore[arg-type]
    assert lines, "no env line yet"
    env: dict[str, str] = json.loads(lines[-1][4:])
    return env


def _http_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            return int(r.status)
    except OSError as e:  # URLError: not listening yet
        raise AssertionError(f"port {port}: {e}") from e


def test_instance_runs_with_env_mounts_ports_and_logs(orch: Orch) -> None:
    secrets = secret_pb2_grpc.SecretServiceStub(orch.runed.channel())
    secrets.CreateSecret(
        secret_pb2.CreateSecretRequest(
            secret=secret_pb2.Secret(name="db", namespace="default", data={"password": "s3cret", "user": "app"})
        ),
        metadata=orch.auth,
    )
    cms = configmap_pb2_grpc.ConfigmapServiceStub(orch.runed.channel())
    cms.CreateConfigmap(
        configmap_pb2.CreateConfigmapRequest(
            configmap=configmap_pb2.Configmap(name="settings", namespace="default", data={"mode": "fast", "LEVEL": "3"})
        ),
        metadata=orch.auth,
    )
    script = orch.program("server", SERVER)
    orch.cast(
        "web",
        script,
        scale=2,
        ports=HTTP_PORT,
        env={"GREETING": "hi", "DB_PASS": "{{secret:db/password}}", "MODE": "{{ configmap:settings/mode }}"},
        env_from=[service_pb2.EnvFromSource(configmap_name="settings", prefix="CFG_")],
        secret_mounts=[service_pb2.SecretMount(name="db", mount_path=str(orch.tmp / "secrets"))],
        configmap_mounts=[service_pb2.ConfigmapMount(name="settings", mount_path=str(orch.tmp / "conf"))],
    )
    insts = eventually(lambda: orch.running("web", 2), timeout=15, what="2 instances running")
    assert sorted(i["instance"]["name"] for i in insts) == ["web-0", "web-1"]
    ports = {i["ports"]["http"] for i in insts}
    assert len(ports) == 2, "each instance gets its own host port"
    for inst in insts:
        env = eventually(functools.partial(_env_of, orch, inst))
        assert env["GREETING"] == "hi"
        assert env["DB_PASS"] == "s3cret"
        assert env["MODE"] == "fast"
        # envFrom keys must be valid upper-case names after the prefix: "mode" is skipped.
        assert env["CFG_LEVEL"] == "3" and "CFG_mode" not in env
        assert env["RUNE_SERVICE_NAME"] == "web"
        assert env["RUNE_SERVICE_NAMESPACE"] == "default"
        assert env["RUNE_INSTANCE_ID"] == inst["id"]
        assert env["PORT"] == str(inst["ports"]["http"]) == env["RUNE_PORT_HTTP"] == env["WEB_SERVICE_PORT"]
        assert env["WEB_SERVICE_HOST"] == "127.0.0.1"
        # The stored env never holds the secret's value.
        assert inst["env"]["DB_PASS"] == "{{secret:db/password}}"
        assert "s3cret" not in json.dumps(inst)
        # It really listens on its port (Running means started: the program may still be binding).
        assert eventually(functools.partial(_http_status, inst["ports"]["http"]), timeout=15) == 200
        assert Path(inst["workdir"]).is_dir()
        # Mount paths are placed under the instance's own RUNE_MOUNTS_DIR (tests/integration/test_mounts.py).
        mounts = Path(env["RUNE_MOUNTS_DIR"])
        secret_file = mounts / str(orch.tmp / "secrets").lstrip("/") / "password"
        assert secret_file.read_text() == "s3cret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o400
        assert (mounts / str(orch.tmp / "conf").lstrip("/") / "mode").read_text() == "fast"
        # Own process group, and not runed's.
        assert os.getpgid(inst["pid"]) == inst["pid"]
        assert os.getsid(inst["pid"]) != os.getsid(orch.runed.proc.pid)  # type: ignore[union-attr]
        # JSON-lines log with seq, ns timestamps and stream.
        lines = (Path(inst["log_dir"]) / "log.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        assert [r["seq"] for r in recs] == list(range(1, len(recs) + 1))
        assert recs[0]["stream"] == "stdout" and recs[0]["ts"].endswith("Z") and len(recs[0]["ts"]) == 30
    # GetHealth reports the service healthy from real probe-free readiness.
    health = health_pb2_grpc.HealthServiceStub(orch.runed.channel())
    resp = health.GetHealth(health_pb2.GetHealthRequest(component_type="service", name="web"), metadata=orch.auth)
    assert resp.components[0].status == health_pb2.HEALTH_STATUS_HEALTHY


def test_a_command_and_its_args_read_variables_as_kubernetes_writes_them(orch: Orch) -> None:
    """``$(PORT)`` in process args is the instance's host port: a server listens where it is told
    without a shell. Unknown names and ``$$(`` stay as written, other ``$`` is left alone, and a
    variable from a secret is not expanded (a command line is visible to every user of the host)."""
    secret_pb2_grpc.SecretServiceStub(orch.runed.channel()).CreateSecret(
        secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(name="argv-db", data={"password": "hunter2"})),
        metadata=orch.auth,
    )
    show = "import json, sys; print('argv ' + json.dumps(sys.argv[1:]), flush=True); import time; time.sleep(600)"
    orch.cast_command(
        "argv",
        [sys.executable, "-c", show, "$(PORT)", "x$(GREETING)y", "$(NOPE)", "$$(PORT)", "$$ $HOME", "$(DB_PASS)"],
        ports=HTTP_PORT,
        env={"GREETING": "hi", "DB_PASS": "{{secret:argv-db/password}}"},
    )
    inst = eventually(lambda: orch.running("argv", 1), timeout=15)[0]

    def shown() -> list[str]:
        lines = [ln for ln in orch.log_lines(inst) if ln.startswith("argv ")]
        assert lines, "no argv line yet"
        out: list[str] = json.loads(lines[-1][5:])
        return out

    port = str(inst["ports"]["http"])
    assert eventually(shown) == [port, "xhiy", "$(NOPE)", "$(PORT)", "$$ $HOME", "$(DB_PASS)"]
    launch = (Path(inst["log_dir"]) / "launch.json").read_text()
    assert port in launch and "hunter2" not in launch


def test_scale_up_and_down_and_zero(orch: Orch) -> None:
    script = orch.program("server", SERVER)
    orch.cast("api", script, ports=HTTP_PORT)
    first = eventually(lambda: orch.running("api", 1), timeout=15)[0]
    orch.services.ScaleService(service_pb2.ScaleServiceRequest(name="api", scale=3), metadata=orch.auth)
    insts = eventually(lambda: orch.running("api", 3), timeout=15)
    assert first["id"] in {i["id"] for i in insts}, "scaling up keeps the existing instance"
    orch.services.ScaleService(service_pb2.ScaleServiceRequest(name="api", scale=1), metadata=orch.auth)
    insts = eventually(lambda: orch.running("api", 1), timeout=15)
    assert insts[0]["instance"]["name"] == "api-0"
    gone = [i["pid"] for i in insts]
    orch.services.ScaleService(service_pb2.ScaleServiceRequest(name="api", scale=0), metadata=orch.auth)
    eventually(lambda: orch.instances("api") == [], timeout=15)
    eventually(lambda: not any(alive(p) for p in gone))
    svc = orch.services.GetService(service_pb2.GetServiceRequest(name="api"), metadata=orch.auth).service
    assert svc.scale == 0
    assert svc.metadata.last_non_zero_scale == 1


def test_gradual_scaling_reports_progress(orch: Orch) -> None:
    script = orch.program("server", SERVER)
    orch.cast("grad", script, ports=HTTP_PORT, scale=1)
    eventually(lambda: orch.running("grad", 1), timeout=15)
    orch.services.ScaleService(
        service_pb2.ScaleServiceRequest(
            name="grad", scale=3, mode=service_pb2.SCALING_MODE_GRADUAL, step_size=1, interval_seconds=1
        ),
        metadata=orch.auth,
    )
    seen: set[int] = set()

    def progressed() -> bool:
        seen.add(sum(1 for i in orch.instances("grad") if i["state"] == "RUNNING"))
        orch.running("grad", 3)
        return True

    eventually(progressed, timeout=20, interval=0.02)
    assert 2 in seen, f"gradual scaling passed through 2 running instances (saw {sorted(seen)})"
    # Once there, WatchScaling reports completion and ends by itself.
    stream = orch.services.WatchScaling(
        service_pb2.WatchScalingRequest(service_name="grad", namespace="default", target_scale=3),
        metadata=orch.auth,
        timeout=15,
    )
    updates = [(u.running_instances, u.complete) for u in stream]
    assert updates[-1] == (3, True)
    st = orch.store()
    try:
        ops = [r.data for r in st.list("scaling_operation").items]
    finally:
        st.close()
    assert ops[-1]["status"] == "completed" and ops[-1]["current"] == 3


def test_rolling_update_replaces_one_at_a_time_and_rollback(orch: Orch) -> None:
    script = orch.program("server", SERVER)
    ready = common_pb2.Probe(type=common_pb2.PROBE_TYPE_HTTP, path="/ready", port=8080, period_seconds=1)
    orch.cast("roll", script, ports=HTTP_PORT, scale=2, env={"V": "1"}, health=common_pb2.HealthCheck(readiness=ready))
    old = {i["id"] for i in eventually(lambda: orch.running("roll", 2), timeout=15)}
    svc = orch.services.GetService(service_pb2.GetServiceRequest(name="roll"), metadata=orch.auth).service
    # Unchanged spec: a no-op.
    orch.services.UpdateService(service_pb2.UpdateServiceRequest(service=svc), metadata=orch.auth)
    svc.env["V"] = "2"
    max_seen = 0

    def replaced() -> bool:
        nonlocal max_seen
        insts = orch.instances("roll")
        live = [i for i in insts if i["state"] in ("RUNNING", "STARTING")]
        max_seen = max(max_seen, len(live))
        # Never fewer than 2 ready while the new ones come up, never more than one extra.
        assert {i["id"] for i in orch.running("roll", 2)}.isdisjoint(old)
        return True

    assert {i["id"] for i in orch.instances("roll")} == old, "an unchanged spec restarts nothing"
    orch.services.UpdateService(service_pb2.UpdateServiceRequest(service=svc), metadata=orch.auth)
    eventually(replaced, timeout=20)
    assert max_seen <= 3
    insts = orch.running("roll", 2)
    assert all(i["env"]["V"] == "2" for i in insts)
    # Roll back to revision 1 (a new revision with the old spec): V=1 again.
    stub = orch.services
    revs = stub.ListServiceRevisions(service_pb2.ListServiceRevisionsRequest(name="roll"), metadata=orch.auth)
    first = min(r.revision for r in revs.revisions)
    stub.RollbackService(service_pb2.RollbackServiceRequest(name="roll", to_revision=first), metadata=orch.auth)
    eventually(lambda: [i["env"]["V"] for i in orch.running("roll", 2)] == ["1", "1"], timeout=20)


def test_delete_with_finalizers_and_grace(orch: Orch) -> None:
    script = orch.program("stubborn", STUBBORN)
    orch.cast("stub", script, scale=2)
    insts = eventually(lambda: orch.running("stub", 2), timeout=15)
    pids = [i["pid"] for i in insts]
    resp = orch.services.DeleteService(
        service_pb2.DeleteServiceRequest(name="stub", grace_period=1), metadata=orch.auth
    )
    assert resp.deletion_id

    def done() -> service_pb2.DeletionOperation:
        op: service_pb2.DeletionOperation = orch.services.GetDeletionStatus(
            service_pb2.GetDeletionStatusRequest(name=resp.deletion_id, namespace="default"), metadata=orch.auth
        ).operation
        assert op.status == "completed", op
        return op

    op = eventually(done, timeout=15)
    assert op.total_instances == 2 and op.deleted_instances == 2
    assert [f.status for f in op.finalizers] == ["completed"] * len(op.finalizers)
    assert {f.type for f in op.finalizers} >= {"instance-cleanup", "service-deregister"}
    assert not any(alive(p) for p in pids), "SIGTERM was ignored, so SIGKILL after the grace period"
    assert orch.instances("stub") == []
    with pytest.raises(grpc.RpcError) as e:
        orch.services.GetService(service_pb2.GetServiceRequest(name="stub"), metadata=orch.auth)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_security_context_user_and_memory_limit(orch: Orch) -> None:
    orch.cast_shell(
        "limited",
        "echo uid=$(id -u) as=$(ulimit -v); exec sleep 60",
        process={"security_context": common_pb2.ProcessSecurityContext(user="nobody")},
        resources=common_pb2.Resources(memory=common_pb2.ResourceLimit(limit="256Mi")),
    )
    (inst,) = eventually(lambda: orch.running("limited", 1), timeout=15)
    line = eventually(lambda: next((ln for ln in orch.log_lines(inst) if ln.startswith("uid=")), None))
    assert line == f"uid=65534 as={256 * 1024}"
    assert inst["uid"] == 65534
    assert os.stat(f"/proc/{inst['pid']}").st_uid == 65534
