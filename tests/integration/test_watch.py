"""Watches over real gRPC: snapshot or resume from a revision, every change in order, explicit errors, churn."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rune.api import admin_pb2, admin_pb2_grpc, common_pb2, service_pb2, service_pb2_grpc
from runed.model import objects
from runed.store.core import SQLCore
from runed.store.open import open_url
from tests.harness import Runed, RunedFactory
from tests.support import error_info

Auth = list[tuple[str, str]]
ADDED, MODIFIED, DELETED = common_pb2.EVENT_TYPE_ADDED, common_pb2.EVENT_TYPE_MODIFIED, common_pb2.EVENT_TYPE_DELETED


def _svc(
    name: str, ns: str = "", env: dict[str, str] | None = None, labels: dict[str, str] | None = None
) -> service_pb2.Service:
    svc = service_pb2.Service(name=name, namespace=ns, runtime="process", env=env or {}, labels=labels or {})
    svc.process.command = sys.executable
    return svc


def _take(call: Iterator[service_pb2.WatchServicesResponse], n: int) -> list[service_pb2.WatchServicesResponse]:
    out = []
    for ev in call:
        out.append(ev)
        if len(out) == n:
            break
    return out


def _api_only(runed_factory: RunedFactory, tmp_path: Path, config: str) -> tuple[Runed, Auth]:
    cfg = tmp_path / "runefile.yaml"
    cfg.write_text(config)

    r = runed_factory(tmp_path / "d", args=["--config", str(cfg)], role="grpc")
    token = admin_pb2_grpc.AdminServiceStub(r.channel()).AdminBootstrap(admin_pb2.AdminBootstrapRequest())
    return r, [("authorization", f"Bearer {token.token_secret}")]


def test_snapshot_then_live_changes_with_selectors(api_runed: Runed, api_auth: Auth) -> None:
    stub = service_pb2_grpc.ServiceServiceStub(api_runed.channel())
    for name in ("a", "b", "c"):
        stub.CreateService(
            service_pb2.CreateServiceRequest(service=_svc(name, labels={"w": "yes" if name != "b" else "no"})),
            metadata=api_auth,
        )
    call = stub.WatchServices(
        service_pb2.WatchServicesRequest(label_selector_expr="w=yes"), metadata=api_auth, timeout=30
    )
    snap = _take(call, 2)
    assert [(e.event_type, e.service.name) for e in snap] == [(ADDED, "a"), (ADDED, "c")]
    stub.CreateService(service_pb2.CreateServiceRequest(service=_svc("d", labels={"w": "yes"})), metadata=api_auth)
    stub.CreateService(service_pb2.CreateServiceRequest(service=_svc("e", labels={"w": "no"})), metadata=api_auth)
    stub.UpdateService(
        service_pb2.UpdateServiceRequest(service=_svc("a", env={"X": "1"}, labels={"w": "yes"})), metadata=api_auth
    )
    # The record's removal is the controller's last deletion step; the store is shared, so do it here.
    store = open_url(api_runed.store_url)
    try:
        store.delete(objects.SERVICE, "default", "c")
    finally:
        store.close()
    live = _take(call, 3)
    call.cancel()
    assert [(e.event_type, e.service.name) for e in live] == [(ADDED, "d"), (MODIFIED, "a"), (DELETED, "c")]
    assert live[1].service.env["X"] == "1" and live[1].service.metadata.generation == 2
    revs = [e.revision for e in snap + live]
    assert revs[0] == revs[1] and revs[1:] == sorted(set(revs[1:]))


def test_all_namespaces_watch_gets_live_events(api_runed: Runed, api_auth: Auth) -> None:
    stub = service_pb2_grpc.ServiceServiceStub(api_runed.channel())
    call = stub.WatchServices(service_pb2.WatchServicesRequest(namespace="*"), metadata=api_auth, timeout=30)
    for ns in ("one", "two", "default"):
        stub.CreateService(
            service_pb2.CreateServiceRequest(service=_svc("web", ns), ensure_namespace=True), metadata=api_auth
        )
    got = _take(call, 3)
    call.cancel()
    assert [(e.service.namespace, e.event_type) for e in got] == [("one", ADDED), ("two", ADDED), ("default", ADDED)]


def test_resume_from_a_revision_has_no_gaps_under_churn(api_runed: Runed, api_auth: Auth) -> None:
    stub = service_pb2_grpc.ServiceServiceStub(api_runed.channel())
    start = stub.ListServices(service_pb2.ListServicesRequest(), metadata=api_auth).revision
    expected: list[tuple[int, str]] = []
    full = stub.WatchServices(service_pb2.WatchServicesRequest(since_revision=start), metadata=api_auth, timeout=60)

    def churn() -> None:
        # 300 changes while the watcher reads: create, then update each service twice.
        for i in range(100):
            stub.CreateService(service_pb2.CreateServiceRequest(service=_svc(f"s{i:03d}")), metadata=api_auth)
            expected.append((ADDED, f"s{i:03d}"))
        for rnd in range(2):
            for i in range(100):
                stub.UpdateService(
                    service_pb2.UpdateServiceRequest(service=_svc(f"s{i:03d}", env={"R": str(rnd)})),
                    metadata=api_auth,
                )
                expected.append((MODIFIED, f"s{i:03d}"))

    t = threading.Thread(target=churn)
    t.start()
    events = _take(full, 300)
    t.join()
    full.cancel()
    assert [(e.event_type, e.service.name) for e in events] == expected
    revs = [e.revision for e in events]
    assert revs == sorted(revs) and len(set(revs)) == 300
    # A watcher that disconnects after 120 events and resumes from the last revision it saw
    # gets exactly the rest: no gap, no duplicate.
    first = stub.WatchServices(service_pb2.WatchServicesRequest(since_revision=start), metadata=api_auth, timeout=60)
    part1 = _take(first, 120)
    first.cancel()
    second = stub.WatchServices(
        service_pb2.WatchServicesRequest(since_revision=part1[-1].revision), metadata=api_auth, timeout=60
    )
    part2 = _take(second, 180)
    second.cancel()
    assert [e.revision for e in part1 + part2] == revs
    assert [e.service.env.get("R", "") for e in part1 + part2] == [e.service.env.get("R", "") for e in events]


def test_too_far_behind_is_told_to_relist(api_runed: Runed, api_auth: Auth) -> None:
    stub = service_pb2_grpc.ServiceServiceStub(api_runed.channel())
    for i in range(20):
        stub.CreateService(service_pb2.CreateServiceRequest(service=_svc(f"s{i}")), metadata=api_auth)
    store = open_url(api_runed.store_url, changelog_keep=5)
    assert isinstance(store, SQLCore)  # either backend: pruning is the core's
    try:
        store.prune_changelog()
    finally:
        store.close()
    call = stub.WatchServices(service_pb2.WatchServicesRequest(since_revision=1), metadata=api_auth, timeout=30)
    with pytest.raises(grpc.RpcError) as e:
        next(call)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "list again" in (e.value.details() or "")
    info = error_info(e.value)
    assert info.reason == "REVISION_COMPACTED" and info.metadata["revision"] == "1", info


def test_too_slow_watcher_gets_an_explicit_error_after_what_was_queued(
    runed_factory: RunedFactory, tmp_path: Path
) -> None:
    r, auth = _api_only(runed_factory, tmp_path, "history:\n  watch_queue_events: 20\n")
    # A small receive window, so the server's writes block while this client does not read.
    ch = grpc.insecure_channel(
        r.grpc_target, options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
    )
    try:
        stub = service_pb2_grpc.ServiceServiceStub(ch)
        stub.CreateService(service_pb2.CreateServiceRequest(service=_svc("big")), metadata=auth)
        call = stub.WatchServices(service_pb2.WatchServicesRequest(), metadata=auth, timeout=60)
        assert next(call).service.name == "big"
        blob = "x" * 8192
        for i in range(300):
            stub.UpdateService(
                service_pb2.UpdateServiceRequest(service=_svc("big", env={"BLOB": blob, "I": str(i)})), metadata=auth
            )
        received: list[int] = []
        with pytest.raises(grpc.RpcError) as e:
            for ev in call:
                received.append(int(ev.service.env["I"]))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "too slow" in (e.value.details() or "")
        # Everything delivered before the error is complete and in order.
        assert received == list(range(len(received))) and len(received) < 300
    finally:
        ch.close()


def test_status_changes_are_modifications_of_the_service(api_runed: Runed, api_auth: Auth) -> None:
    stub = service_pb2_grpc.ServiceServiceStub(api_runed.channel())
    stub.CreateService(service_pb2.CreateServiceRequest(service=_svc("web")), metadata=api_auth)
    start = stub.ListServices(service_pb2.ListServicesRequest(), metadata=api_auth).revision
    call = stub.WatchServices(
        service_pb2.WatchServicesRequest(since_revision=start, field_selector_expr="status=running"),
        metadata=api_auth,
        timeout=30,
    )
    store = open_url(api_runed.store_url)
    try:
        # The controller reports status in its own record; watchers see the merged service.
        store.put(objects.SERVICE_STATUS, "default", "web", {"status": "Pending", "observed_generation": 1})
        store.put(objects.SERVICE_STATUS, "default", "web", {"status": "Running", "observed_generation": 1})
    finally:
        store.close()
    ev = next(call)
    call.cancel()
    assert ev.event_type == MODIFIED and ev.service.status == service_pb2.SERVICE_STATUS_RUNNING
    assert ev.revision > start + 1  # the Pending change was filtered out by the field selector
