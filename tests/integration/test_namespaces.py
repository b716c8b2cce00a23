"""NamespaceService over real gRPC: CRUD, built-ins, emptiness on delete, watch."""

from __future__ import annotations

import queue
import threading
from typing import Any

import grpc
import pytest

from rune.api import (
    common_pb2,
    configmap_pb2,
    configmap_pb2_grpc,
    namespace_pb2,
    namespace_pb2_grpc,
    secret_pb2,
    secret_pb2_grpc,
)
from tests.harness import Runed
from tests.integration.orch import EXITER, Orch
from tests.support import alive, bad_request_fields, eventually

Metadata = list[tuple[str, str]]


def _ns(runed: Runed) -> namespace_pb2_grpc.NamespaceServiceStub:
    return namespace_pb2_grpc.NamespaceServiceStub(runed.channel())


def test_builtins_exist_and_cannot_be_deleted(runed: Runed, auth: Metadata) -> None:
    stub = _ns(runed)
    names = [n.name for n in stub.ListNamespaces(namespace_pb2.ListNamespacesRequest(), metadata=auth).namespaces]
    assert {"default", "system"} <= set(names)
    for name in ("default", "system"):
        with pytest.raises(grpc.RpcError) as e:
            stub.DeleteNamespace(namespace_pb2.DeleteNamespaceRequest(name=name, force=True), metadata=auth)
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "cannot be deleted" in (e.value.details() or "")


def test_crud(runed: Runed, auth: Metadata) -> None:
    stub = _ns(runed)
    created = stub.CreateNamespace(
        namespace_pb2.CreateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name="team-a", description="A team", labels={"tier": "gold"})
        ),
        metadata=auth,
    ).namespace
    assert created.name == "team-a" and created.id and created.created_at > 0
    got = stub.GetNamespace(namespace_pb2.GetNamespaceRequest(name="team-a"), metadata=auth).namespace
    assert got == created
    stub.CreateNamespace(
        namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="team-b")), metadata=auth
    )
    by_label = stub.ListNamespaces(namespace_pb2.ListNamespacesRequest(label_selector={"tier": "gold"}), metadata=auth)
    assert [n.name for n in by_label.namespaces] == ["team-a"]
    by_name = stub.ListNamespaces(namespace_pb2.ListNamespacesRequest(field_selector={"name": "team-b"}), metadata=auth)
    assert [n.name for n in by_name.namespaces] == ["team-b"]

    with pytest.raises(grpc.RpcError) as e:
        stub.CreateNamespace(
            namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="team-a")), metadata=auth
        )
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert 'namespace "team-a" already exists' in (e.value.details() or "")

    stub.DeleteNamespace(namespace_pb2.DeleteNamespaceRequest(name="team-a"), metadata=auth)
    with pytest.raises(grpc.RpcError) as e:
        stub.GetNamespace(namespace_pb2.GetNamespaceRequest(name="team-a"), metadata=auth)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.DeleteNamespace(namespace_pb2.DeleteNamespaceRequest(name="team-a"), metadata=auth)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    stub.DeleteNamespace(namespace_pb2.DeleteNamespaceRequest(name="team-a", ignore_not_found=True), metadata=auth)


def test_invalid_requests_list_every_field(runed: Runed, auth: Metadata) -> None:
    stub = _ns(runed)
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateNamespace(
            namespace_pb2.CreateNamespaceRequest(
                namespace=namespace_pb2.Namespace(name="Bad_Name", labels={"-x": "ok", "k": "-bad-"})
            ),
            metadata=auth,
        )
    fields = bad_request_fields(e.value)
    assert set(fields) == {"namespace.name", "namespace.labels[-x]", "namespace.labels[k]"}
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateNamespace(namespace_pb2.CreateNamespaceRequest(), metadata=auth)
    assert bad_request_fields(e.value) == ["namespace"]
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateNamespace(
            namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="x" * 64)), metadata=auth
        )
    assert bad_request_fields(e.value) == ["namespace.name"]
    with pytest.raises(grpc.RpcError) as e:
        stub.ListNamespaces(namespace_pb2.ListNamespacesRequest(field_selector={"status": "x"}), metadata=auth)
    assert bad_request_fields(e.value) == ["field_selector[status]"]


def test_non_empty_delete_is_refused_then_forced(runed: Runed, auth: Metadata) -> None:
    ch = runed.channel()
    ns_stub = namespace_pb2_grpc.NamespaceServiceStub(ch)
    secrets = secret_pb2_grpc.SecretServiceStub(ch)
    configmaps = configmap_pb2_grpc.ConfigmapServiceStub(ch)
    ns_stub.CreateNamespace(
        namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="full")), metadata=auth
    )
    for n in ("s1", "s2"):
        secrets.CreateSecret(
            secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(name=n, namespace="full", data={"k": "v"})),
            metadata=auth,
        )
    configmaps.CreateConfigmap(
        configmap_pb2.CreateConfigmapRequest(configmap=configmap_pb2.Configmap(name="c1", namespace="full")),
        metadata=auth,
    )
    with pytest.raises(grpc.RpcError) as e:
        ns_stub.DeleteNamespace(namespace_pb2.DeleteNamespaceRequest(name="full"), metadata=auth)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "2 secrets" in (e.value.details() or "") and "1 configmap" in (e.value.details() or "")
    ns_stub.GetNamespace(namespace_pb2.GetNamespaceRequest(name="full"), metadata=auth)

    ns_stub.DeleteNamespace(namespace_pb2.DeleteNamespaceRequest(name="full", force=True), metadata=auth)
    with pytest.raises(grpc.RpcError) as e:
        secrets.GetSecret(secret_pb2.GetSecretRequest(name="s1", namespace="full"), metadata=auth)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    listed = configmaps.ListConfigmaps(configmap_pb2.ListConfigmapsRequest(namespace="full"), metadata=auth)
    assert list(listed.configmaps) == []


def test_watch_snapshot_then_live_changes(runed: Runed, auth: Metadata) -> None:
    stub = _ns(runed)
    stub.CreateNamespace(
        namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="w1", labels={"w": "yes"})),
        metadata=auth,
    )
    call = stub.WatchNamespaces(namespace_pb2.WatchNamespacesRequest(label_selector={"w": "yes"}), metadata=auth)
    events: queue.Queue[Any] = queue.Queue()

    def pump() -> None:
        try:
            for ev in call:
                events.put(ev)
        except grpc.RpcError as e:
            events.put(e)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        first = events.get(timeout=10)
        assert first.event_type == common_pb2.EVENT_TYPE_ADDED and first.namespace.name == "w1"
        assert first.revision > 0
        # Not matching the selector: must not show up.
        stub.CreateNamespace(
            namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="other")), metadata=auth
        )
        stub.CreateNamespace(
            namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="w2", labels={"w": "yes"})),
            metadata=auth,
        )
        added = events.get(timeout=10)
        assert added.event_type == common_pb2.EVENT_TYPE_ADDED and added.namespace.name == "w2"
        assert added.revision > first.revision
        stub.DeleteNamespace(namespace_pb2.DeleteNamespaceRequest(name="w1"), metadata=auth)
        deleted = events.get(timeout=10)
        assert deleted.event_type == common_pb2.EVENT_TYPE_DELETED and deleted.namespace.name == "w1"
        assert deleted.revision > added.revision
    finally:
        call.cancel()
        t.join(5)

    # Resuming from a revision replays exactly what came after it.
    resumed = stub.WatchNamespaces(
        namespace_pb2.WatchNamespacesRequest(since_revision=added.revision, label_selector={"w": "yes"}), metadata=auth
    )
    try:
        ev = next(iter(resumed))
        assert ev.event_type == common_pb2.EVENT_TYPE_DELETED and ev.namespace.name == "w1"
    finally:
        resumed.cancel()


def test_auto_created_namespace_and_missing_namespace(runed: Runed, auth: Metadata) -> None:
    ch = runed.channel()
    secrets = secret_pb2_grpc.SecretServiceStub(ch)
    with pytest.raises(grpc.RpcError) as e:
        secrets.CreateSecret(
            secret_pb2.CreateSecretRequest(secret=secret_pb2.Secret(name="s", namespace="nowhere", data={"k": "v"})),
            metadata=auth,
        )
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert 'namespace "nowhere" does not exist' in (e.value.details() or "")
    secrets.CreateSecret(
        secret_pb2.CreateSecretRequest(
            secret=secret_pb2.Secret(name="s", namespace="nowhere", data={"k": "v"}), ensure_namespace=True
        ),
        metadata=auth,
    )
    ns = _ns(runed).GetNamespace(namespace_pb2.GetNamespaceRequest(name="nowhere"), metadata=auth).namespace
    assert ns.labels["rune/auto-created"] == "true"


def test_forced_delete_stops_what_runs_in_the_namespace(own_orch: Orch) -> None:
    ns_stub = namespace_pb2_grpc.NamespaceServiceStub(own_orch.runed.channel())
    ns_stub.CreateNamespace(
        namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="apps")), metadata=own_orch.auth
    )
    own_orch.cast("sleeper", own_orch.program("sleeper", EXITER), "0", "120", namespace="apps")
    insts = eventually(lambda: own_orch.running("sleeper", 1, "apps"), timeout=20, what="instance running")
    pid = insts[0]["pid"]
    assert alive(pid)

    with pytest.raises(grpc.RpcError) as e:
        ns_stub.DeleteNamespace(namespace_pb2.DeleteNamespaceRequest(name="apps"), metadata=own_orch.auth)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "1 service" in (e.value.details() or "") and "1 instance" in (e.value.details() or "")
    assert alive(pid)

    ns_stub.DeleteNamespace(namespace_pb2.DeleteNamespaceRequest(name="apps", force=True), metadata=own_orch.auth)
    eventually(lambda: not alive(pid), timeout=20, what="instance process stopped")
    eventually(lambda: own_orch.instances("sleeper", "apps") == [], timeout=20, what="instance records removed")
