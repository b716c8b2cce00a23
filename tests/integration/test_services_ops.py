"""ServiceService over real gRPC against the API role alone: deletion and scaling operations, lists and paging."""

from __future__ import annotations

import grpc

from rune.api import service_pb2
from tests.harness import Runed
from tests.integration.services import create, fails, sleeper, stub_of
from tests.support import Metadata as Auth
from tests.support import bad_request_violations, eventually


def test_delete_honours_dependents_dry_run_and_records_an_operation(api_runed: Runed, api_auth: Auth) -> None:
    stub = stub_of(api_runed)
    create(stub, api_auth, sleeper("db"))
    app = sleeper("app")
    app.dependencies.add(service="db")
    create(stub, api_auth, app)
    err = fails(
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
    fails(
        lambda: stub.UpdateService(service_pb2.UpdateServiceRequest(service=sleeper("db", scale=2)), metadata=api_auth),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    fails(
        lambda: stub.GetDeletionStatus(service_pb2.GetDeletionStatusRequest(name="nope"), metadata=api_auth),
        grpc.StatusCode.NOT_FOUND,
    )
    fails(
        lambda: stub.DeleteService(service_pb2.DeleteServiceRequest(name="ghost"), metadata=api_auth),
        grpc.StatusCode.NOT_FOUND,
    )
    ok = stub.DeleteService(service_pb2.DeleteServiceRequest(name="ghost", ignore_not_found=True), metadata=api_auth)
    assert ok.deletion_id == ""
    fails(
        lambda: stub.DeleteService(
            service_pb2.DeleteServiceRequest(name="app", finalizers=["bogus"]), metadata=api_auth
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_delete_with_an_unknown_finalizer_names_it_and_keeps_the_service(api_runed: Runed, api_auth: Auth) -> None:
    stub = stub_of(api_runed)
    create(stub, api_auth, sleeper("keep"))
    req = service_pb2.DeleteServiceRequest(name="keep", finalizers=["instance-cleanup", "wipe-disk"])
    err = fails(lambda: stub.DeleteService(req, metadata=api_auth), grpc.StatusCode.INVALID_ARGUMENT)
    violations = bad_request_violations(err)
    assert list(violations) == ["finalizers[1]"]
    assert (
        "'wipe-disk'" in violations["finalizers[1]"]
        and "instance-cleanup, service-deregister" in violations["finalizers[1]"]
    )
    assert stub.GetService(service_pb2.GetServiceRequest(name="keep"), metadata=api_auth).service.name == "keep"
    ops = stub.ListDeletionOperations(service_pb2.ListDeletionOperationsRequest(), metadata=api_auth).operations
    assert list(ops) == []


def test_scale_records_an_operation_and_scale_zero_keeps_last_non_zero(api_runed: Runed, api_auth: Auth) -> None:
    from runed.model import objects
    from runed.store.open import open_url

    stub = stub_of(api_runed)
    create(stub, api_auth, sleeper("web", scale=3))
    same = stub.ScaleService(service_pb2.ScaleServiceRequest(name="web", scale=3), metadata=api_auth)
    assert same.status.message == "Service already at scale 3"
    resp = stub.ScaleService(service_pb2.ScaleServiceRequest(name="web", scale=0), metadata=api_auth)
    assert resp.status.message == "Scaling operation initiated to 0"
    assert resp.service.metadata.last_non_zero_scale == 3
    gradual = stub.ScaleService(
        service_pb2.ScaleServiceRequest(
            name="web", scale=5, mode=service_pb2.SCALING_MODE_GRADUAL, step_size=2, interval_seconds=1
        ),
        metadata=api_auth,
    )
    assert gradual.service.metadata.last_non_zero_scale == 5
    store = open_url(api_runed.store_url)
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
    fails(
        lambda: stub.ScaleService(service_pb2.ScaleServiceRequest(name="web", scale=-1), metadata=api_auth),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    fails(
        lambda: stub.ScaleService(service_pb2.ScaleServiceRequest(name="nope", scale=1), metadata=api_auth),
        grpc.StatusCode.NOT_FOUND,
    )


def _names(resp: service_pb2.ListServicesResponse) -> list[str]:
    return [f"{s.namespace}/{s.name}" for s in resp.services]


def test_list_selectors_and_namespace_isolation(api_runed: Runed, api_auth: Auth) -> None:
    stub = stub_of(api_runed)
    create(stub, api_auth, sleeper("web", labels={"app": "web", "tier": "front"}))
    create(stub, api_auth, sleeper("api", labels={"app": "api", "tier": "back"}))
    create(stub, api_auth, sleeper("db", labels={"app": "db"}))
    # "team" must not see "team2" (no prefix matching).
    create(stub, api_auth, sleeper("t1", "team"), ensure_namespace=True)
    create(stub, api_auth, sleeper("t2", "team2"), ensure_namespace=True)

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
    err = fails(lambda: ls(field_selector_expr="colour=red"), grpc.StatusCode.INVALID_ARGUMENT)
    assert "field_selector_expr" in bad_request_violations(err)
    fails(lambda: ls(label_selector_expr="app in (x"), grpc.StatusCode.INVALID_ARGUMENT)


def test_list_pages_with_opaque_tokens(api_runed: Runed, api_auth: Auth) -> None:
    stub = stub_of(api_runed)
    for i in range(25):
        create(stub, api_auth, sleeper(f"s{i:02d}", labels={"parity": "even" if i % 2 == 0 else "odd"}))
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
    err = fails(
        lambda: stub.ListServices(
            service_pb2.ListServicesRequest(page_size=10, page_token=other, label_selector_expr="parity=odd"),
            metadata=api_auth,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert "page_token" in bad_request_violations(err)
    fails(
        lambda: stub.ListServices(service_pb2.ListServicesRequest(page_size=5000), metadata=api_auth),
        grpc.StatusCode.INVALID_ARGUMENT,
    )


def test_watch_scaling_reports_stored_progress_and_ends_when_done(api_runed: Runed, api_auth: Auth) -> None:
    from runed.model import objects
    from runed.store.open import open_url

    stub = stub_of(api_runed)
    create(stub, api_auth, sleeper("web", scale=1))
    stub.ScaleService(service_pb2.ScaleServiceRequest(name="web", scale=2), metadata=api_auth)
    call = stub.WatchScaling(
        service_pb2.WatchScalingRequest(service_name="web", target_scale=2), metadata=api_auth, timeout=30
    )
    first = next(call)
    assert (first.current_scale, first.target_scale, first.running_instances, first.complete) == (1, 2, 0, False)
    # Play the controller's part through the shared store: scale applied, instances come up.
    store = open_url(api_runed.store_url)
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
    fails(
        lambda: next(
            stub.WatchScaling(service_pb2.WatchScalingRequest(service_name="nope", target_scale=1), metadata=api_auth)
        ),
        grpc.StatusCode.NOT_FOUND,
    )


def test_delete_without_detach_waits_for_the_operation_result(api_runed: Runed, api_auth: Auth) -> None:
    import threading

    from runed.model import objects
    from runed.store.open import open_url

    stub = stub_of(api_runed)
    create(stub, api_auth, sleeper("web"))
    result: list[service_pb2.DeleteServiceResponse] = []
    t = threading.Thread(
        target=lambda: result.append(
            stub.DeleteService(service_pb2.DeleteServiceRequest(name="web", timeout_seconds=20), metadata=api_auth)
        )
    )
    t.start()
    store = open_url(api_runed.store_url)
    try:
        # The controller's part: finish the operation it was handed.
        op = eventually(lambda: store.list(objects.DELETION_OPERATION, "default").items, what="deletion operation")[0]
        store.put(objects.DELETION_OPERATION, "default", op.name, dict(op.data, status="completed"))
    finally:
        store.close()
    t.join(20)
    assert result and result[0].deletion_id == op.name and result[0].status.message == "completed"


def test_a_deletion_not_yet_taken_up_counts_its_instances(api_runed: Runed, api_auth: Auth) -> None:
    """Before the controller counts a deletion's instances, its status reads them from the store:
    a total of 0 would say there is nothing to delete while there is."""
    from runed.model import objects
    from runed.store.open import open_url

    stub = stub_of(api_runed)
    create(stub, api_auth, sleeper("web", scale=2))
    create(stub, api_auth, sleeper("api"))
    store = open_url(api_runed.store_url)
    try:
        # The controller's records of the instances it started (the API role alone starts none).
        for name, service in (("web-0", "web"), ("web-1", "web"), ("api-0", "api")):
            store.put(
                objects.INSTANCE, "default", name, {"service": service, "state": "RUNNING", "instance": {"id": name}}
            )
    finally:
        store.close()
    resp = stub.DeleteService(service_pb2.DeleteServiceRequest(name="web"), metadata=api_auth)
    op = stub.GetDeletionStatus(
        service_pb2.GetDeletionStatusRequest(name=resp.deletion_id), metadata=api_auth
    ).operation
    assert op.status == "initializing" and op.total_instances == 2
    listed = stub.ListDeletionOperations(service_pb2.ListDeletionOperationsRequest(), metadata=api_auth).operations
    assert [(o.id, o.total_instances) for o in listed] == [(resp.deletion_id, 2)]
