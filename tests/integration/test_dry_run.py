"""Server-side dry run of CreateService/UpdateService: full checks, the resulting service, nothing stored."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import grpc
import pytest

from rune.api import admin_pb2, admin_pb2_grpc, namespace_pb2, namespace_pb2_grpc, service_pb2, service_pb2_grpc
from runed.store.sqlite import SQLiteStore, open_store
from tests.harness import Runed
from tests.support import bad_request_violations

Auth = list[tuple[str, str]]


def _svc(name: str, ns: str = "", scale: int = 1) -> service_pb2.Service:
    svc = service_pb2.Service(name=name, namespace=ns, runtime="process", scale=scale)
    svc.process.command = sys.executable
    svc.process.args.extend(["-c", "import time; time.sleep(60)"])
    return svc


def _error(fn: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        fn()  # type: ignore[operator]
    return e.value


@pytest.fixture
def stub(api_runed: Runed) -> service_pb2_grpc.ServiceServiceStub:
    return service_pb2_grpc.ServiceServiceStub(api_runed.channel())


@pytest.fixture
def store(api_runed: Runed) -> Iterator[SQLiteStore]:
    s = open_store(api_runed.data_dir)
    yield s
    s.close()


def _writes_since(store: SQLiteStore, revision: int) -> list[tuple[str, str, str, str]]:
    # Authentication keeps a token's last use up to date: bookkeeping, not something the call changed.
    return [(c.kind, c.namespace, c.name, c.op) for c in store.changes_since(revision) if c.kind != "token"]


def _audit(r: Runed, auth: Auth) -> list[admin_pb2.AuditEvent]:
    stub = admin_pb2_grpc.AdminServiceStub(r.channel())
    return list(stub.ListAuditEvents(admin_pb2.ListAuditEventsRequest(limit=1000), metadata=auth).events)


def test_dry_run_create_returns_the_service_and_stores_nothing(
    api_runed: Runed, api_auth: Auth, stub: service_pb2_grpc.ServiceServiceStub, store: SQLiteStore
) -> None:
    before = store.current_revision()
    resp = stub.CreateService(
        service_pb2.CreateServiceRequest(service=_svc("web", "staging", scale=3), ensure_namespace=True, dry_run=True),
        metadata=api_auth,
    )
    assert resp.status.message == "dry run: would be created"
    assert (resp.service.name, resp.service.namespace, resp.service.scale) == ("web", "staging", 3)
    assert resp.service.metadata.generation == 1
    assert resp.service.process.command == sys.executable
    assert _writes_since(store, before) == []
    # Neither the service nor the namespace ensure_namespace would have created exists.
    get = _error(
        lambda: stub.GetService(service_pb2.GetServiceRequest(name="web", namespace="staging"), metadata=api_auth)
    )
    assert get.code() == grpc.StatusCode.NOT_FOUND
    ns_stub = namespace_pb2_grpc.NamespaceServiceStub(api_runed.channel())
    names = {
        n.name for n in ns_stub.ListNamespaces(namespace_pb2.ListNamespacesRequest(), metadata=api_auth).namespaces
    }
    assert "staging" not in names
    # Audited as a dry run, not as a change.
    rec = [e for e in _audit(api_runed, api_auth) if e.method.endswith("/CreateService")]
    assert [(e.name, e.outcome, e.detail) for e in rec] == [("web", "success", "dry run")]


def test_dry_run_reports_the_same_validation_errors_as_a_real_call(
    api_auth: Auth, stub: service_pb2_grpc.ServiceServiceStub, store: SQLiteStore
) -> None:
    bad = service_pb2.Service(name="Web_1", runtime="process", scale=-1, env={"1BAD": "x"})
    bad.ports.add(name="http", port=0)
    bad.dependencies.add(service="nope")
    for dry in (True, False):
        err = _error(
            lambda dry=dry: stub.CreateService(  # type: ignore[misc]
                service_pb2.CreateServiceRequest(service=bad, dry_run=dry), metadata=api_auth
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        if dry:
            dry_violations, dry_details = bad_request_violations(err), err.details()
        else:
            assert bad_request_violations(err) == dry_violations
            assert err.details() == dry_details
    assert {"service.name", "service.scale", "service.ports[0].port"} <= set(dry_violations)
    # Reference and namespace checks run too, with the same outcome as a real call.
    dangling = _svc("api")
    dangling.dependencies.add(service="db")
    missing_ns = _svc("api", "nowhere")
    for svc, code in ((dangling, grpc.StatusCode.INVALID_ARGUMENT), (missing_ns, grpc.StatusCode.FAILED_PRECONDITION)):
        errs = [
            _error(
                lambda dry=dry, svc=svc: stub.CreateService(  # type: ignore[misc]
                    service_pb2.CreateServiceRequest(service=svc, dry_run=dry), metadata=api_auth
                )
            )
            for dry in (True, False)
        ]
        assert (errs[0].code(), errs[0].details()) == (errs[1].code(), errs[1].details())
        assert errs[0].code() == code, errs[0].details()
    assert store.count("service") == 0


def test_dry_run_update_reports_whether_the_spec_would_change(
    api_auth: Auth, stub: service_pb2_grpc.ServiceServiceStub, store: SQLiteStore
) -> None:
    stub.CreateService(service_pb2.CreateServiceRequest(service=_svc("web")), metadata=api_auth)
    stored = store.get("service", "default", "web")
    assert stored is not None
    before = store.current_revision()

    same = stub.UpdateService(service_pb2.UpdateServiceRequest(service=_svc("web"), dry_run=True), metadata=api_auth)
    assert same.status.message == "dry run: unchanged"
    assert same.service.metadata.generation == 1

    changed = _svc("web", scale=4)
    resp = stub.UpdateService(service_pb2.UpdateServiceRequest(service=changed, dry_run=True), metadata=api_auth)
    assert resp.status.message == "dry run: would be updated"
    assert (resp.service.metadata.generation, resp.service.scale) == (2, 4)
    upsert = stub.CreateService(service_pb2.CreateServiceRequest(service=changed, dry_run=True), metadata=api_auth)
    assert upsert.status.message == "dry run: would be updated"
    assert upsert.service.metadata.generation == 2
    forced = stub.UpdateService(
        service_pb2.UpdateServiceRequest(service=_svc("web"), force=True, dry_run=True), metadata=api_auth
    )
    assert forced.status.message == "dry run: would be updated"

    after = store.get("service", "default", "web")
    assert after is not None and after.data == stored.data and after.revision == stored.revision
    assert _writes_since(store, before) == []
    history = stub.ListServiceRevisions(
        service_pb2.ListServiceRevisionsRequest(name="web", namespace="default"), metadata=api_auth
    )
    assert len(history.revisions) == 1
    # The real call then does what the dry run said.
    real = stub.UpdateService(service_pb2.UpdateServiceRequest(service=changed), metadata=api_auth)
    assert real.service.metadata.generation == 2


def test_dry_run_update_of_a_missing_service_is_not_found(
    api_auth: Auth, stub: service_pb2_grpc.ServiceServiceStub
) -> None:
    err = _error(
        lambda: stub.UpdateService(
            service_pb2.UpdateServiceRequest(service=_svc("ghost"), dry_run=True), metadata=api_auth
        )
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_dry_run_over_rest_is_a_query_parameter(runed: Runed, auth: Auth) -> None:
    import httpx

    headers = {"authorization": auth[0][1]}
    body = {"name": "web", "runtime": "process", "process": {"command": sys.executable}}
    url = f"{runed.http_base}/v1/namespaces/default/services"
    r = httpx.post(url, params={"dry_run": "true"}, json=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["status"]["message"] == "dry run: would be created"
    assert httpx.get(f"{url}/web", headers=headers, timeout=10).status_code == 404
    bad = httpx.post(url, params={"dry_run": "true"}, json={**body, "name": "Bad_Name"}, headers=headers, timeout=10)
    assert bad.status_code == 400 and "service.name" in bad.text


def test_dry_run_update_carries_the_diff_old_to_new(api_auth: Auth, stub: service_pb2_grpc.ServiceServiceStub) -> None:
    stub.CreateService(service_pb2.CreateServiceRequest(service=_svc("web", scale=2)), metadata=api_auth)
    changed = _svc("web", scale=4)
    changed.env["MODE"] = "fast"
    resp = stub.UpdateService(service_pb2.UpdateServiceRequest(service=changed, dry_run=True), metadata=api_auth)
    assert resp.status.message == "dry run: would be updated"
    # One line per changed spec value, ``path old -> new`` (JSON values; null when unset); no metadata.
    assert list(resp.status.details) == ['env.MODE null -> "fast"', "scale 2 -> 4"]
    upsert = stub.CreateService(service_pb2.CreateServiceRequest(service=changed, dry_run=True), metadata=api_auth)
    assert list(upsert.status.details) == list(resp.status.details)
    same = stub.UpdateService(
        service_pb2.UpdateServiceRequest(service=_svc("web", scale=2), dry_run=True), metadata=api_auth
    )
    assert list(same.status.details) == []
