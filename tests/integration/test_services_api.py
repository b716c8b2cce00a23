"""ServiceService over real gRPC against the API role alone: validation, upsert, references, deletion, lists."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from rune.api import namespace_pb2, namespace_pb2_grpc, service_pb2, service_pb2_grpc
from tests.harness import Runed, RunedFactory
from tests.support import eventually

Auth = list[tuple[str, str]]


def _stub(r: Runed) -> service_pb2_grpc.ServiceServiceStub:
    return service_pb2_grpc.ServiceServiceStub(r.channel())


def _svc(name: str, ns: str = "", labels: dict[str, str] | None = None, **kw: object) -> service_pb2.Service:
    svc = service_pb2.Service(name=name, namespace=ns, runtime="process", labels=labels or {}, **kw)  # type: ignore[arg-type]
    svc.process.command = sys.executable
    svc.process.args.extend(["-c", "import time; time.sleep(60)"])
    return svc


def _create(stub: service_pb2_grpc.ServiceServiceStub, auth: Auth, svc: service_pb2.Service, **kw: object) -> None:
    stub.CreateService(service_pb2.CreateServiceRequest(service=svc, **kw), metadata=auth)  # type: ignore[arg-type]


def _violations(err: grpc.RpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    out: dict[str, str] = {}
    for detail in status.details:
        br = error_details_pb2.BadRequest()
        if detail.Unpack(br):
            out.update({v.field: v.description for v in br.field_violations})
    return out


def _fails(fn: object, code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn()  # type: ignore[operator]
    assert e.value.code() == code, e.value.details()
    return e.value


def test_create_reports_every_invalid_field_with_its_path(api_runed: Runed, api_auth: Auth) -> None:
    stub = _stub(api_runed)
    bad = service_pb2.Service(name="Web_1", runtime="process", scale=-1, env={"1BAD": "x"})
    bad.ports.add(name="http", port=0)
    bad.ports.add(name="http", port=70000)
    bad.resources.cpu.request = "2"
    bad.resources.cpu.limit = "500m"
    bad.resources.memory.limit = "lots"
    bad.health.liveness.type = 1  # HTTP without a port
    bad.health.readiness.type = 3  # COMMAND without a command
    bad.dependencies.add(service="db", secret="s")
    bad.secret_mounts.add(name="creds", mount_path="relative")
    bad.expose.port = "grpc"
    err = _fails(
        lambda: stub.CreateService(service_pb2.CreateServiceRequest(service=bad), metadata=api_auth),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    fields = set(_violations(err))
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
    _fails(
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
    stub = _stub(r)
    err = _fails(
        lambda: _create(stub, auth, service_pb2.Service(name="nginx", image="nginx:1", runtime="container")),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "docker is not available" in (err.details() or "")
    # Process services are unaffected.
    _create(stub, auth, _svc("proc"))
    assert stub.GetService(service_pb2.GetServiceRequest(name="proc"), metadata=auth).service.runtime == "process"


def test_fields_upstream_dropped_survive_the_api(api_runed: Runed, api_auth: Auth) -> None:
    stub = _stub(api_runed)
    svc = _svc("web", labels={"app": "web"}, restart_policy=2, scale=0)
    svc.process.working_dir = "/tmp"
    svc.process.security_context.user = "nobody"
    svc.health.liveness.type = 2
    svc.health.liveness.port = 8080
    svc.health.liveness.success_threshold = 2
    svc.health.liveness.failure_threshold = 7
    _create(stub, api_auth, svc)
    got = stub.GetService(service_pb2.GetServiceRequest(name="web"), metadata=api_auth).service
    assert dict(got.labels) == {"app": "web"}
    assert got.restart_policy == 2
    assert got.process.command == sys.executable and got.process.working_dir == "/tmp"
    assert got.process.security_context.user == "nobody"
    assert (got.health.liveness.success_threshold, got.health.liveness.failure_threshold) == (2, 7)
    assert got.namespace == "default" and got.id and got.metadata.generation == 1
    assert got.metadata.last_non_zero_scale == 1 and got.metadata.created_at


def test_namespace_must_exist_unless_ensure_namespace(api_runed: Runed, api_auth: Auth) -> None:
    stub = _stub(api_runed)
    err = _fails(lambda: _create(stub, api_auth, _svc("web", "team-a")), grpc.StatusCode.FAILED_PRECONDITION)
    assert "team-a" in (err.details() or "")
    _create(stub, api_auth, _svc("web", "team-a"), ensure_namespace=True)
    ns = namespace_pb2_grpc.NamespaceServiceStub(api_runed.channel()).GetNamespace(
        namespace_pb2.GetNamespaceRequest(name="team-a"), metadata=api_auth
    )
    assert ns.namespace.labels["rune/auto-created"] == "true"
    got = stub.GetService(service_pb2.GetServiceRequest(name="web", namespace="team-a"), metadata=api_auth)
    assert got.service.namespace == "team-a"


def test_create_is_an_upsert_and_an_unchanged_update_is_a_no_op(api_runed: Runed, api_auth: Auth) -> None:
    stub = _stub(api_runed)
    _create(stub, api_auth, _svc("web", scale=1))
    first = stub.GetService(service_pb2.GetServiceRequest(name="web"), metadata=api_auth).service
    same = stub.UpdateService(service_pb2.UpdateServiceRequest(service=_svc("web", scale=1)), metadata=api_auth)
    assert same.service.metadata.generation == 1 and same.status.message == "unchanged"
    changed = _svc("web", scale=1, env={"MODE": "fast"})
    resp = stub.CreateService(service_pb2.CreateServiceRequest(service=changed), metadata=api_auth)
    assert resp.status.message == "Service updated successfully"
    assert resp.service.metadata.generation == 2 and resp.service.id == first.id
    assert resp.service.metadata.created_at == first.metadata.created_at
    forced = stub.UpdateService(service_pb2.UpdateServiceRequest(service=changed, force=True), metadata=api_auth)
    assert forced.service.metadata.generation == 3
    _fails(
        lambda: stub.UpdateService(service_pb2.UpdateServiceRequest(service=_svc("nope")), metadata=api_auth),
        grpc.StatusCode.NOT_FOUND,
    )
    err = _fails(
        lambda: stub.GetService(service_pb2.GetServiceRequest(name="nope"), metadata=api_auth),
        grpc.StatusCode.NOT_FOUND,
    )
    assert err.details() == 'service "nope" not found in namespace "default"'


def test_references_must_exist_and_dependencies_must_not_cycle(api_runed: Runed, api_auth: Auth) -> None:
    stub = _stub(api_runed)
    missing = _svc("api")
    missing.dependencies.add(service="db")
    missing.env_from.add(secret_name="creds")
    missing.env["PASSWORD"] = "{{secret:db-pass/password}}"
    missing.configmap_mounts.add(name="conf", mount_path="/etc/conf")
    err = _fails(lambda: _create(stub, api_auth, missing), grpc.StatusCode.INVALID_ARGUMENT)
    assert set(_violations(err)) == {
        "service.dependencies[0].service",
        "service.env_from[0].secret_name",
        "service.env[PASSWORD]",
        "service.configmap_mounts[0]",
    }
    self_dep = _svc("loop")
    self_dep.dependencies.add(service="loop")
    assert "service.dependencies[0].service" in _violations(
        _fails(lambda: _create(stub, api_auth, self_dep), grpc.StatusCode.INVALID_ARGUMENT)
    )
    _create(stub, api_auth, _svc("a"))
    b = _svc("b")
    b.dependencies.add(service="a")
    _create(stub, api_auth, b)
    c = _svc("c")
    c.dependencies.add(service="b")
    _create(stub, api_auth, c)
    a = _svc("a")
    a.dependencies.add(service="c")
    err = _fails(
        lambda: stub.UpdateService(service_pb2.UpdateServiceRequest(service=a), metadata=api_auth),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    v = _violations(err)
    assert "default/a -> default/c -> default/b -> default/a" in v["service.dependencies[0].service"]


def test_delete_honours_dependents_dry_run_and_records_an_operation(api_runed: Runed, api_auth: Auth) -> None:
    stub = _stub(api_runed)
    _create(stub, api_auth, _svc("db"))
    app = _svc("app")
    app.dependencies.add(service="db")
    _create(stub, api_auth, app)
    err = _fails(
        lambda: stub.DeleteService(service_pb2.DeleteServiceRequest(name="db"), metadata=api_auth),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "default/app" in (err.details() or "")
    dry = stub.DeleteService(service_pb2.DeleteServiceRequest(name="db", dry_run=True, force=True), metadata=api_auth)
    assert dry.deletion_id == "dry-run" and [f.type for f in dry.finalizers] == [
        "instance-cleanup",
        "service-deregister",
    ]
    assert stub.GetService(service_pb2.GetServiceRequest(name="db"), metadata=api_auth).service.name == "db"
    resp = stub.DeleteService(
        service_pb2.DeleteServiceRequest(name="db", force=True, grace_period=3), metadata=api_auth
    )
    assert resp.deletion_id.startswith("delete-default-db-") and resp.status.message == "in_progress"
    again = stub.DeleteService(service_pb2.DeleteServiceRequest(name="db", force=True), metadata=api_auth)
    assert again.deletion_id == resp.deletion_id
    op = stub.GetDeletionStatus(service_pb2.GetDeletionStatusRequest(name=resp.deletion_id), metadata=api_auth)
    assert op.operation.service_name == "db" and op.operation.status == "initializing"
    assert [f.id for f in op.operation.finalizers] == ["instance-cleanup", "service-deregister"]
    ops = stub.ListDeletionOperations(service_pb2.ListDeletionOperationsRequest(), metadata=api_auth).operations
    assert [o.id for o in ops] == [resp.deletion_id]
    none = stub.ListDeletionOperations(
        service_pb2.ListDeletionOperationsRequest(status="completed"), metadata=api_auth
    ).operations
    assert list(none) == []
    # Updating a service that is being deleted is refused.
    _fails(
        lambda: stub.UpdateService(service_pb2.UpdateServiceRequest(service=_svc("db", scale=2)), metadata=api_auth),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    _fails(
        lambda: stub.GetDeletionStatus(service_pb2.GetDeletionStatusRequest(name="nope"), metadata=api_auth),
        grpc.StatusCode.NOT_FOUND,
    )
    _fails(
        lambda: stub.DeleteService(service_pb2.DeleteServiceRequest(name="ghost"), metadata=api_auth),
        grpc.StatusCode.NOT_FOUND,
    )
    ok = stub.DeleteService(service_pb2.DeleteServiceRequest(name="ghost", ignore_not_found=True), metadata=api_auth)
    assert ok.deletion_id == ""
    _fails(
        lambda: stub.DeleteService(
            service_pb2.DeleteServiceRequest(name="app", finalizers=["bogus"]), metadata=api_auth
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_scale_records_an_operation_and_scale_zero_keeps_last_non_zero(api_runed: Runed, api_auth: Auth) -> None:
    from runed.model import objects
    from runed.store.sqlite import open_store

    stub = _stub(api_runed)
    _create(stub, api_auth, _svc("web", scale=3))
    same = stub.ScaleService(service_pb2.ScaleServiceRequest(name="web", scale=3), metadata=api_auth)
    assert same.status.message == "Service already at scale 3"
    resp = stub.ScaleService(service_pb2.ScaleServiceRequest(name="web", scale=0), metadata=api_auth)
    assert resp.status.message == "Scaling operation initiated to 0"
    assert resp.service.metadata.last_non_zero_scale == 3
    gradual = stub.ScaleService(
        service_pb2.ScaleServiceRequest(name="web", scale=5, mode=2, step_size=2, interval_seconds=1), metadata=api_auth
    )
    assert gradual.service.metadata.last_non_zero_scale == 5
    store = open_store(api_runed.data_dir)
    try:
        ops = sorted(
            (r.data for r in store.list(objects.SCALING_OPERATION, "default").items), key=lambda d: d["started_at"]
        )
    finally:
        store.close()
    assert [(o["target"], o["mode"], o["status"]) for o in ops] == [
        (0, "immediate", "cancelled"),
        (5, "gradual", "pending"),
    ]
    assert ops[1]["step"] == 2 and ops[1]["interval_seconds"] == 1
    _fails(
        lambda: stub.ScaleService(service_pb2.ScaleServiceRequest(name="web", scale=-1), metadata=api_auth),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    _fails(
        lambda: stub.ScaleService(service_pb2.ScaleServiceRequest(name="nope", scale=1), metadata=api_auth),
        grpc.StatusCode.NOT_FOUND,
    )


def _names(resp: service_pb2.ListServicesResponse) -> list[str]:
    return [f"{s.namespace}/{s.name}" for s in resp.services]


def test_list_selectors_and_namespace_isolation(api_runed: Runed, api_auth: Auth) -> None:
    stub = _stub(api_runed)
    _create(stub, api_auth, _svc("web", labels={"app": "web", "tier": "front"}))
    _create(stub, api_auth, _svc("api", labels={"app": "api", "tier": "back"}))
    _create(stub, api_auth, _svc("db", labels={"app": "db"}))
    # "team" must not see "team2" (no prefix matching).
    _create(stub, api_auth, _svc("t1", "team"), ensure_namespace=True)
    _create(stub, api_auth, _svc("t2", "team2"), ensure_namespace=True)

    def ls(**kw: object) -> list[str]:
        return _names(stub.ListServices(service_pb2.ListServicesRequest(**kw), metadata=api_auth))  # type: ignore[arg-type]

    assert ls() == ["default/api", "default/db", "default/web"]
    assert ls(label_selector={"app": "web"}) == ["default/web"]
    assert ls(label_selector_expr="app!=web") == ["default/api", "default/db"]
    assert ls(label_selector_expr="app in (web, api)") == ["default/api", "default/web"]
    assert ls(label_selector_expr="app notin (web)") == ["default/api", "default/db"]
    assert ls(label_selector_expr="tier") == ["default/api", "default/web"]
    assert ls(label_selector_expr="!tier") == ["default/db"]
    assert ls(label_selector_expr="tier,app!=api", label_selector={"app": "web"}) == ["default/web"]
    assert ls(field_selector={"name": "db"}) == ["default/db"]
    assert ls(field_selector_expr="status=pending,runtime=process,name!=db") == ["default/api", "default/web"]
    assert ls(field_selector_expr="status=running") == []
    assert ls(namespace="team") == ["team/t1"]
    assert ls(namespace="*", label_selector_expr="!app") == ["team/t1", "team2/t2"]
    err = _fails(lambda: ls(field_selector_expr="colour=red"), grpc.StatusCode.INVALID_ARGUMENT)
    assert "field_selector_expr" in _violations(err)
    _fails(lambda: ls(label_selector_expr="app in (x"), grpc.StatusCode.INVALID_ARGUMENT)


def test_list_pages_with_opaque_tokens(api_runed: Runed, api_auth: Auth) -> None:
    stub = _stub(api_runed)
    for i in range(25):
        _create(stub, api_auth, _svc(f"s{i:02d}", labels={"parity": "even" if i % 2 == 0 else "odd"}))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        resp = stub.ListServices(service_pb2.ListServicesRequest(page_size=10, page_token=token), metadata=api_auth)
        pages += 1
        assert len(resp.services) <= 10
        seen += [s.name for s in resp.services]
        token = resp.next_page_token
        assert resp.paging.continuation_token == token
        if not token:
            break
    assert pages == 3 and seen == [f"s{i:02d}" for i in range(25)]
    # Filtered pages: every page is full until the last, and nothing is repeated.
    odd: list[str] = []
    token = ""
    while True:
        resp = stub.ListServices(
            service_pb2.ListServicesRequest(page_size=5, page_token=token, label_selector_expr="parity=odd"),
            metadata=api_auth,
        )
        odd += [s.name for s in resp.services]
        token = resp.next_page_token
        if not token:
            break
        assert len(resp.services) == 5
    assert odd == [f"s{i:02d}" for i in range(1, 25, 2)]
    # The upstream paging fields work the same way.
    first = stub.ListServices(service_pb2.ListServicesRequest(paging={"limit": 4}), metadata=api_auth)
    assert [s.name for s in first.services] == ["s00", "s01", "s02", "s03"]
    nxt = stub.ListServices(
        service_pb2.ListServicesRequest(paging={"limit": 4, "continuation_token": first.paging.continuation_token}),
        metadata=api_auth,
    )
    assert [s.name for s in nxt.services] == ["s04", "s05", "s06", "s07"]
    offset = stub.ListServices(service_pb2.ListServicesRequest(paging={"limit": 2, "offset": 10}), metadata=api_auth)
    assert [s.name for s in offset.services] == ["s10", "s11"]
    # A token only works for the query that issued it.
    other = stub.ListServices(service_pb2.ListServicesRequest(page_size=10), metadata=api_auth).next_page_token
    err = _fails(
        lambda: stub.ListServices(
            service_pb2.ListServicesRequest(page_size=10, page_token=other, label_selector_expr="parity=odd"),
            metadata=api_auth,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_token" in _violations(err)
    _fails(
        lambda: stub.ListServices(service_pb2.ListServicesRequest(page_size=5000), metadata=api_auth),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_watch_scaling_reports_stored_progress_and_ends_when_done(api_runed: Runed, api_auth: Auth) -> None:
    from runed.model import objects
    from runed.store.sqlite import open_store

    stub = _stub(api_runed)
    _create(stub, api_auth, _svc("web", scale=1))
    stub.ScaleService(service_pb2.ScaleServiceRequest(name="web", scale=2), metadata=api_auth)
    call = stub.WatchScaling(
        service_pb2.WatchScalingRequest(service_name="web", target_scale=2), metadata=api_auth, timeout=30
    )
    first = next(call)
    assert (first.current_scale, first.target_scale, first.running_instances, first.complete) == (1, 2, 0, False)
    # Play the controller's part through the shared store: scale applied, instances come up.
    store = open_store(api_runed.data_dir)
    try:

        def apply_scale(cur: dict[str, object] | None) -> dict[str, object] | None:
            assert cur is not None
            cur["spec"]["scale"] = 2  # type: ignore[index]
            return cur

        store.update(objects.SERVICE, "default", "web", apply_scale)
        for i, state in ((0, "RUNNING"), (1, "STARTING")):
            store.put(objects.INSTANCE, "default", f"web-{i}", {"service": "web", "index": i, "state": state})
        progress = next(call)
        while progress.pending_instances != 1:
            progress = next(call)
        assert (progress.current_scale, progress.running_instances, progress.complete) == (2, 1, False)
        store.put(objects.INSTANCE, "default", "web-1", {"service": "web", "index": 1, "state": "RUNNING"})
        rest = list(call)  # the stream ends by itself once complete
    finally:
        store.close()
    assert rest[-1].complete and rest[-1].running_instances == 2 and rest[-1].pending_instances == 0
    _fails(
        lambda: next(
            stub.WatchScaling(service_pb2.WatchScalingRequest(service_name="nope", target_scale=1), metadata=api_auth)
        ),
        grpc.StatusCode.NOT_FOUND,
    )


def test_delete_without_detach_waits_for_the_operation_result(api_runed: Runed, api_auth: Auth) -> None:
    import threading

    from runed.model import objects
    from runed.store.sqlite import open_store

    stub = _stub(api_runed)
    _create(stub, api_auth, _svc("web"))
    result: list[service_pb2.DeleteServiceResponse] = []
    t = threading.Thread(
        target=lambda: result.append(
            stub.DeleteService(service_pb2.DeleteServiceRequest(name="web", timeout_seconds=20), metadata=api_auth)
        )
    )
    t.start()
    store = open_store(api_runed.data_dir)
    try:
        # The controller's part: finish the operation it was handed.
        op = eventually(lambda: store.list(objects.DELETION_OPERATION, "default").items, what="deletion operation")[0]
        store.put(objects.DELETION_OPERATION, "default", op.name, dict(op.data, status="completed"))
    finally:
        store.close()
    t.join(20)
    assert result and result[0].deletion_id == op.name and result[0].status.message == "completed"
