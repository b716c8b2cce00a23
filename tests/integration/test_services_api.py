"""ServiceService over real gRPC against the API role alone: validation, upsert, namespaces, references."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc

from rune.api import common_pb2, namespace_pb2, namespace_pb2_grpc, service_pb2
from tests.harness import Runed, RunedFactory
from tests.integration.services import create, fails, sleeper, stub_of
from tests.support import Metadata as Auth
from tests.support import bad_request_violations


def test_create_reports_every_invalid_field_with_its_path(api_runed: Runed, api_auth: Auth) -> None:
    stub = stub_of(api_runed)
    bad = service_pb2.Service(name="Web_1", runtime="process", scale=-1, env={"1BAD": "x"})
    bad.ports.add(name="http", port=0)
    bad.ports.add(name="http", port=70000)
    bad.resources.cpu.request = "2"
    bad.resources.cpu.limit = "500m"
    bad.resources.memory.limit = "lots"
    bad.health.liveness.type = common_pb2.PROBE_TYPE_HTTP  # without a port
    bad.health.readiness.type = common_pb2.PROBE_TYPE_COMMAND  # without a command
    bad.dependencies.add(service="db", secret="s")
    bad.secret_mounts.add(name="creds", mount_path="relative")
    bad.expose.port = "grpc"
    err = fails(
        lambda: stub.CreateService(service_pb2.CreateServiceRequest(service=bad), metadata=api_auth),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    fields = set(bad_request_violations(err))
    assert {
        "service.name",
        "service.scale",
        "service.env[1BAD]",
        "service.process.command",
        "service.ports[0].port",
        "service.ports[1].name",
        "service.ports[1].port",
        "service.resources.cpu.request",
        "service.resources.memory.limit",
        "service.health.liveness.port",
        "service.health.readiness.command",
        "service.dependencies[0]",
        "service.secret_mounts[0].mount_path",
        "service.expose.port",
    } <= fields, fields
    fails(
        lambda: stub.CreateService(service_pb2.CreateServiceRequest(), metadata=api_auth),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_container_runtime_without_docker_is_a_failed_precondition(runed_factory: RunedFactory, tmp_path: Path) -> None:
    cfg = tmp_path / "runefile.yaml"
    cfg.write_text(f"docker:\n  socket: {tmp_path / 'no-docker.sock'}\n")

    r = runed_factory(tmp_path / "d", args=["--config", str(cfg)], role="grpc")
    from rune.api import admin_pb2, admin_pb2_grpc

    token = admin_pb2_grpc.AdminServiceStub(r.channel()).AdminBootstrap(admin_pb2.AdminBootstrapRequest())
    auth = [("authorization", f"Bearer {token.token_secret}")]
    stub = stub_of(r)
    err = fails(
        lambda: create(stub, auth, service_pb2.Service(name="nginx", image="nginx:1", runtime="container")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "docker is not available" in (err.details() or "")
    # Process services are unaffected.
    create(stub, auth, sleeper("proc"))
    assert stub.GetService(service_pb2.GetServiceRequest(name="proc"), metadata=auth).service.runtime == "process"


def test_fields_upstream_dropped_survive_the_api(api_runed: Runed, api_auth: Auth) -> None:
    stub = stub_of(api_runed)
    svc = sleeper("web", labels={"app": "web"}, restart_policy=2, scale=0)
    svc.process.working_dir = "/tmp"
    svc.process.security_context.user = "nobody"
    svc.health.liveness.type = common_pb2.PROBE_TYPE_TCP
    svc.health.liveness.port = 8080
    svc.health.liveness.success_threshold = 2
    svc.health.liveness.failure_threshold = 7
    create(stub, api_auth, svc)
    got = stub.GetService(service_pb2.GetServiceRequest(name="web"), metadata=api_auth).service
    assert dict(got.labels) == {"app": "web"}
    assert got.restart_policy == 2
    assert got.process.command == sys.executable and got.process.working_dir == "/tmp"
    assert got.process.security_context.user == "nobody"
    assert (got.health.liveness.success_threshold, got.health.liveness.failure_threshold) == (2, 7)
    assert got.namespace == "default" and got.id and got.metadata.generation == 1
    assert got.metadata.last_non_zero_scale == 1 and got.metadata.created_at


def test_namespace_must_exist_unless_ensure_namespace(api_runed: Runed, api_auth: Auth) -> None:
    stub = stub_of(api_runed)
    err = fails(lambda: create(stub, api_auth, sleeper("web", "team-a")), grpc.StatusCode.FAILED_PRECONDITION)
    assert "team-a" in (err.details() or "")
    create(stub, api_auth, sleeper("web", "team-a"), ensure_namespace=True)
    ns = namespace_pb2_grpc.NamespaceServiceStub(api_runed.channel()).GetNamespace(
        namespace_pb2.GetNamespaceRequest(name="team-a"), metadata=api_auth
    )
    assert ns.namespace.labels["rune/auto-created"] == "true"
    got = stub.GetService(service_pb2.GetServiceRequest(name="web", namespace="team-a"), metadata=api_auth)
    assert got.service.namespace == "team-a"


def test_create_is_an_upsert_and_an_unchanged_update_is_a_no_op(api_runed: Runed, api_auth: Auth) -> None:
    stub = stub_of(api_runed)
    create(stub, api_auth, sleeper("web", scale=1))
    first = stub.GetService(service_pb2.GetServiceRequest(name="web"), metadata=api_auth).service
    same = stub.UpdateService(service_pb2.UpdateServiceRequest(service=sleeper("web", scale=1)), metadata=api_auth)
    assert same.service.metadata.generation == 1 and same.status.message == "unchanged"
    changed = sleeper("web", scale=1, env={"MODE": "fast"})
    resp = stub.CreateService(service_pb2.CreateServiceRequest(service=changed), metadata=api_auth)
    assert resp.status.message == "Service updated successfully"
    assert resp.service.metadata.generation == 2 and resp.service.id == first.id
    assert resp.service.metadata.created_at == first.metadata.created_at
    forced = stub.UpdateService(service_pb2.UpdateServiceRequest(service=changed, force=True), metadata=api_auth)
    assert forced.service.metadata.generation == 3
    fails(
        lambda: stub.UpdateService(service_pb2.UpdateServiceRequest(service=sleeper("nope")), metadata=api_auth),
        grpc.StatusCode.NOT_FOUND,
    )
    err = fails(
        lambda: stub.GetService(service_pb2.GetServiceRequest(name="nope"), metadata=api_auth),
        grpc.StatusCode.NOT_FOUND,
    )
    assert err.details() == 'service "nope" not found in namespace "default"'


def test_references_must_exist_and_dependencies_must_not_cycle(api_runed: Runed, api_auth: Auth) -> None:
    stub = stub_of(api_runed)
    missing = sleeper("api")
    missing.dependencies.add(service="db")
    missing.env_from.add(secret_name="creds")
    missing.env["PASSWORD"] = "{{secret:db-pass/password}}"
    missing.configmap_mounts.add(name="conf", mount_path="/etc/conf")
    err = fails(lambda: create(stub, api_auth, missing), grpc.StatusCode.INVALID_ARGUMENT)
    assert set(bad_request_violations(err)) == {
        "service.dependencies[0].service",
        "service.env_from[0].secret_name",
        "service.env[PASSWORD]",
        "service.configmap_mounts[0]",
    }
    self_dep = sleeper("loop")
    self_dep.dependencies.add(service="loop")
    assert "service.dependencies[0].service" in bad_request_violations(
        fails(lambda: create(stub, api_auth, self_dep), grpc.StatusCode.INVALID_ARGUMENT)
    )
    create(stub, api_auth, sleeper("a"))
    b = sleeper("b")
    b.dependencies.add(service="a")
    create(stub, api_auth, b)
    c = sleeper("c")
    c.dependencies.add(service="b")
    create(stub, api_auth, c)
    a = sleeper("a")
    a.dependencies.add(service="c")
    err = fails(
        lambda: stub.UpdateService(service_pb2.UpdateServiceRequest(service=a), metadata=api_auth),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    v = bad_request_violations(err)
    assert "default/a -> default/c -> default/b -> default/a" in v["service.dependencies[0].service"]
