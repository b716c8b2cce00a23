"""The server core over real sockets: start-up, reflection, health, errors, shutdown."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from rune.api import admin_pb2 as rune_admin_pb2
from rune.api import admin_pb2_grpc as rune_admin_grpc
from rune.api import health_pb2 as rune_health_pb2
from rune.api import health_pb2_grpc as rune_health_grpc
from tests.harness import Runed, RunedFactory, run_cli
from tests.support import eventually


def _list_services(channel: grpc.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    return {s.name for r in responses for s in r.list_services_response.service}


def test_reflection_lists_all_services(runed: Runed) -> None:
    names = _list_services(runed.channel())
    expected = {
        f"rune.api.{s}"
        for s in (
            "ServiceService InstanceService LogService ExecService HealthService SecretService "
            "ConfigmapService NamespaceService AuthService AdminService"
        ).split()
    }
    assert expected <= names
    assert "grpc.health.v1.Health" in names
    assert "grpc.reflection.v1alpha.ServerReflection" in names


def test_standard_health_is_serving(runed: Runed) -> None:
    stub = health_pb2_grpc.HealthStub(runed.channel())
    resp = stub.Check(health_pb2.HealthCheckRequest(service="rune.api.ServiceService"))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def test_unauthenticated_call_has_status_details_and_request_id(runed: Runed) -> None:
    stub = rune_health_grpc.HealthServiceStub(runed.channel())
    with pytest.raises(grpc.RpcError) as ei:
        stub.GetHealth(rune_health_pb2.GetHealthRequest(), metadata=[("x-request-id", "req-123")])
    err = ei.value
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    md = dict(err.trailing_metadata())
    assert md["x-request-id"] == "req-123"
    st = status_pb2.Status.FromString(md["grpc-status-details-bin"])
    infos = [d for d in st.details if d.Is(error_details_pb2.RequestInfo.DESCRIPTOR)]
    assert infos, "expected a RequestInfo detail"
    info = error_details_pb2.RequestInfo()
    infos[0].Unpack(info)
    assert info.request_id == "req-123"


def test_malformed_authorization_is_unauthenticated(runed: Runed) -> None:
    stub = rune_health_grpc.HealthServiceStub(runed.channel())
    with pytest.raises(grpc.RpcError) as ei:
        stub.GetHealth(rune_health_pb2.GetHealthRequest(), metadata=[("authorization", "Basic abc")])
    assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in (ei.value.details() or "")


def test_sigterm_stops_cleanly(runed: Runed) -> None:
    runed.signal(signal.SIGTERM)
    assert runed.wait(20) == 0
    assert not (runed.data_dir / "run" / "grpc.json").exists()


def test_port_in_use_is_one_clear_line(runed_factory: RunedFactory, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = runed_factory(tmp_path / "d", args=["--grpc-addr", f"127.0.0.1:{port}"], ready=False)
        code = r.wait(60)
    assert code != 0
    assert "Traceback" not in r.output()
    assert f"cannot listen on 127.0.0.1:{port}" in r.output()


def test_unknown_runefile_key_is_one_clear_line(tmp_path: Path) -> None:
    cfg = tmp_path / "runefile.yaml"
    cfg.write_text("server:\n  grpc_adress: ':1'\n")
    r = run_cli(["--config", str(cfg), "--data-dir", str(tmp_path / "d")])
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "unknown key server.grpc_adress" in r.stderr


def test_validate_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("log:\n  level: debug\nserver:\n  grpc_address: 127.0.0.1:9999\n")
    assert run_cli(["validate", "--config", str(good)]).returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("log:\n  format: xml\n")
    r = run_cli(["validate", "--config", str(bad)])
    assert r.returncode != 0
    assert "log.format" in r.stderr


def test_unwritable_data_dir_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = run_cli(["--data-dir", str(blocker / "data"), "--grpc-addr", "127.0.0.1:0"])
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "not writable" in r.stderr


def test_role_restarted_after_crash(runed: Runed) -> None:
    import json
    import os

    info = json.loads((runed.data_dir / "run" / "grpc.json").read_text())
    os.kill(info["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        marker = runed.data_dir / "run" / "grpc.json"
        if marker.exists():
            new = json.loads(marker.read_text())
            if new["pid"] != info["pid"]:
                break
        time.sleep(0.1)
    else:
        pytest.fail("grpc role was not restarted")
    ch = grpc.insecure_channel(new["address"])
    try:
        stub = health_pb2_grpc.HealthStub(ch)
        grpc.channel_ready_future(ch).result(timeout=10)
        assert stub.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    finally:
        ch.close()


def test_single_role_runs_alone_with_json_logs(runed_factory: RunedFactory, tmp_path: Path) -> None:
    import json

    r = runed_factory(tmp_path / "data", role="grpc", args=["--log-format", "json"], timeout=20)
    stub = health_pb2_grpc.HealthStub(r.channel())
    assert stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    r.signal(signal.SIGTERM)
    assert r.wait(20) == 0
    # Everything the role wrote (stdout and stderr alike) is one JSON record per line.
    lines = [ln for ln in r.output().splitlines() if ln.strip()]
    assert lines, "expected log lines"
    records = [json.loads(ln) for ln in lines]
    assert any("ready" in r["msg"] for r in records)
    assert all({"ts", "level", "msg"} <= r.keys() for r in records)


def test_a_stream_the_client_cancels_is_recorded_as_cancelled(runed: Runed, auth: list[tuple[str, str]]) -> None:
    from rune.api import namespace_pb2, namespace_pb2_grpc

    stub = namespace_pb2_grpc.NamespaceServiceStub(runed.channel())
    stream = stub.WatchNamespaces(namespace_pb2.WatchNamespacesRequest(), metadata=auth)
    next(stream)  # the snapshot has started: the server is inside the handler
    stream.cancel()
    eventually(
        lambda: "/rune.api.NamespaceService/WatchNamespaces CANCELLED" in runed.output(),
        what="the cancelled watch logged as CANCELLED",
    )
    assert "/rune.api.NamespaceService/WatchNamespaces OK" not in runed.output()


def test_a_second_runed_on_the_data_dir_of_one_that_runs_is_refused_and_leaves_it_alone(
    runed_factory: RunedFactory, tmp_path: Path
) -> None:
    """Started by mistake on the data dir of a running runed (another port), a second runed says so
    and exits. It used to remove the first one's readiness markers as it started its roles (the
    first one's /readyz then said it was down) and take its controller's lease."""
    first = runed_factory(tmp_path / "data")
    assert first.proc is not None
    leader = first.role_pid("controller")
    holder = f"{socket.gethostname()}:{first.data_dir}:{leader}"
    admin = rune_admin_grpc.AdminServiceStub(first.channel())
    md = [("authorization", f"Bearer {admin.AdminBootstrap(rune_admin_pb2.AdminBootstrapRequest()).token_secret}")]
    health = rune_health_grpc.HealthServiceStub(first.channel())
    rest = first.http_base

    def led_by() -> str:
        req = rune_health_pb2.GetHealthRequest(component_type="controller")
        leading: str = health.GetHealth(req, metadata=md).components[0].id
        return leading

    assert led_by() == holder
    second = runed_factory(tmp_path / "data", ready=False)
    assert second.wait(60) != 0
    assert f"is in use by another runed (pid {first.proc.pid})" in second.output(), second.output()
    assert "Traceback" not in second.output()
    # The first is untouched: ready, leading, its markers in place.
    assert httpx.get(f"{rest}/readyz", timeout=10).status_code == 200
    assert led_by() == holder and first.role_pid("controller") == leader
    assert "another holder took the lease" not in first.output()
