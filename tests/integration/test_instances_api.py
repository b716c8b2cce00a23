"""InstanceService over real gRPC against the API role alone; instance records are written to the shared
store exactly as the controller writes them (the store is the only channel between the roles)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from rune.api import common_pb2, instance_pb2, instance_pb2_grpc, service_pb2, service_pb2_grpc
from runed.model import objects
from runed.store.sqlite import SQLiteStore, open_store
from tests.harness import Runed

Auth = list[tuple[str, str]]


def _instance(service: str, index: int, state: str = "RUNNING", **extra: Any) -> dict[str, Any]:
    name = f"{service}-{index}"
    return {
        "instance": {"id": name, "name": name, "runner": "process", "service_name": service},
        "service": service,
        "index": index,
        "generation": 1,
        "spec_hash": "h",
        "state": state,
        "pid": 1000 + index,
        "env": {"TOKEN": "{{secret:api/token}}"},
        "restart_count": 0,
        **extra,
    }


@pytest.fixture
def store(api_runed: Runed) -> Iterator[SQLiteStore]:
    s = open_store(api_runed.data_dir)
    yield s
    s.close()


@pytest.fixture
def cast(api_runed: Runed, api_auth: Auth, store: SQLiteStore) -> None:
    """Services web (2 instances) and worker (1, crash-looping) in default, web in ns "other"."""
    stub = service_pb2_grpc.ServiceServiceStub(api_runed.channel())
    for name, ns, labels in (("web", "", {"tier": "front"}), ("worker", "", {"tier": "back"}), ("web", "other", {})):
        svc = service_pb2.Service(name=name, namespace=ns, runtime="process", labels=labels)
        svc.process.command = sys.executable
        stub.CreateService(service_pb2.CreateServiceRequest(service=svc, ensure_namespace=True), metadata=api_auth)
    store.put(objects.INSTANCE, "default", "web-0", _instance("web", 0))
    store.put(objects.INSTANCE, "default", "web-1", _instance("web", 1, "STARTING"))
    store.put(
        objects.INSTANCE,
        "default",
        "worker-0",
        _instance("worker", 0, "BACKOFF", restart_count=4, reason="CrashLoopBackOff"),
    )
    store.put(objects.INSTANCE, "other", "web-0", _instance("web", 0))


def _ids(resp: instance_pb2.ListInstancesResponse) -> list[str]:
    return [f"{i.namespace}/{i.id}" for i in resp.instances]


def test_get_instance_honours_namespace_and_reports_not_found(api_runed: Runed, api_auth: Auth, cast: None) -> None:
    stub = instance_pb2_grpc.InstanceServiceStub(api_runed.channel())
    got = stub.GetInstance(instance_pb2.GetInstanceRequest(id="worker-0"), metadata=api_auth).instance
    assert got.status == instance_pb2.INSTANCE_STATUS_FAILED and got.status_message == "CrashLoopBackOff"
    assert got.metadata.restart_count == 4 and got.service_name == "worker" and got.pid == 1000
    # Secret references stay references: the API never shows resolved secret values.
    assert got.environment["TOKEN"] == "{{secret:api/token}}"
    with pytest.raises(grpc.RpcError) as e:
        stub.GetInstance(instance_pb2.GetInstanceRequest(id="worker-0", namespace="other"), metadata=api_auth)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert e.value.details() == 'instance "worker-0" not found in namespace "other"'


def test_list_instances_filters_selectors_and_pages(api_runed: Runed, api_auth: Auth, cast: None) -> None:
    stub = instance_pb2_grpc.InstanceServiceStub(api_runed.channel())

    def ls(**kw: Any) -> list[str]:
        return _ids(stub.ListInstances(instance_pb2.ListInstancesRequest(**kw), metadata=api_auth))

    assert ls() == ["default/web-0", "default/web-1", "default/worker-0"]
    assert ls(service_name="web") == ["default/web-0", "default/web-1"]
    assert ls(namespace="*", service_name="web") == ["default/web-0", "default/web-1", "other/web-0"]
    assert ls(namespace="other") == ["other/web-0"]
    assert ls(status=instance_pb2.INSTANCE_STATUS_RUNNING) == ["default/web-0"]
    assert ls(label_selector={"tier": "back"}) == ["default/worker-0"]
    assert ls(label_selector_expr="tier in (front)") == ["default/web-0", "default/web-1"]
    assert ls(field_selector_expr="status!=running,service=web") == ["default/web-1"]
    assert ls(field_selector={"name": "worker-0"}) == ["default/worker-0"]
    page1 = stub.ListInstances(instance_pb2.ListInstancesRequest(namespace="*", page_size=2), metadata=api_auth)
    page2 = stub.ListInstances(
        instance_pb2.ListInstancesRequest(namespace="*", page_size=2, page_token=page1.next_page_token),
        metadata=api_auth,
    )
    assert _ids(page1) + _ids(page2) == ["default/web-0", "default/web-1", "default/worker-0", "other/web-0"]
    assert page2.next_page_token == ""
    # ServiceService.ListInstances is the same call.
    svc_stub = service_pb2_grpc.ServiceServiceStub(api_runed.channel())
    same = svc_stub.ListInstances(instance_pb2.ListInstancesRequest(service_name="worker"), metadata=api_auth)
    assert _ids(same) == ["default/worker-0"]
    with pytest.raises(grpc.RpcError) as e:
        ls(field_selector_expr="colour=red")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_start_stop_restart_write_requests_in_the_right_namespace(
    api_runed: Runed, api_auth: Auth, cast: None, store: SQLiteStore
) -> None:
    stub = instance_pb2_grpc.InstanceServiceStub(api_runed.channel())
    resp = stub.StopInstance(
        instance_pb2.InstanceActionRequest(id="web-0", namespace="other", timeout_seconds=3), metadata=api_auth
    )
    assert resp.instance.namespace == "other" and resp.status.message == "stop requested"
    action = store.get(objects.INSTANCE_ACTION, "other", "web-0")
    assert action is not None and action.data["desired"] == "stopped" and action.data["timeout_seconds"] == 3
    assert store.get(objects.INSTANCE_ACTION, "default", "web-0") is None
    stub.RestartInstance(instance_pb2.InstanceActionRequest(id="web-0", namespace="other"), metadata=api_auth)
    stub.RestartInstance(instance_pb2.InstanceActionRequest(id="web-0", namespace="other"), metadata=api_auth)
    action = store.get(objects.INSTANCE_ACTION, "other", "web-0")
    assert action is not None and action.data["desired"] == "running" and action.data["restart_seq"] == 2
    stub.StopInstance(instance_pb2.InstanceActionRequest(id="web-0", namespace="other"), metadata=api_auth)
    stub.StartInstance(instance_pb2.InstanceActionRequest(id="web-0", namespace="other"), metadata=api_auth)
    action = store.get(objects.INSTANCE_ACTION, "other", "web-0")
    assert action is not None and action.data["desired"] == "running" and action.data["restart_seq"] == 2
    with pytest.raises(grpc.RpcError) as e:
        stub.StartInstance(instance_pb2.InstanceActionRequest(id="worker-0", namespace="other"), metadata=api_auth)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as e:
        stub.StartInstance(instance_pb2.InstanceActionRequest(), metadata=api_auth)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_instances_snapshot_then_changes(
    api_runed: Runed, api_auth: Auth, cast: None, store: SQLiteStore
) -> None:
    stub = instance_pb2_grpc.InstanceServiceStub(api_runed.channel())
    call = stub.WatchInstances(instance_pb2.WatchInstancesRequest(service_name="web"), metadata=api_auth, timeout=30)
    got = []
    for ev in call:
        got.append((ev.event_type, ev.instance.id, ev.instance.status))
        if len(got) == 2:
            break
    store.put(objects.INSTANCE, "default", "worker-0", _instance("worker", 0, "RUNNING"))
    store.put(objects.INSTANCE, "default", "web-1", _instance("web", 1, "RUNNING"))
    store.delete(objects.INSTANCE, "default", "web-0")
    for ev in call:
        got.append((ev.event_type, ev.instance.id, ev.instance.status))
        if len(got) == 4:
            break
    call.cancel()
    running, starting = instance_pb2.INSTANCE_STATUS_RUNNING, instance_pb2.INSTANCE_STATUS_STARTING
    assert got == [
        (common_pb2.EVENT_TYPE_ADDED, "web-0", running),
        (common_pb2.EVENT_TYPE_ADDED, "web-1", starting),
        (common_pb2.EVENT_TYPE_MODIFIED, "web-1", running),
        (common_pb2.EVENT_TYPE_DELETED, "web-0", running),
    ]


def test_a_list_shows_each_instance_write_right_away(
    api_runed: Runed, api_auth: Auth, cast: None, store: SQLiteStore
) -> None:
    """Pages are built from protos kept by record revision: a rewritten instance is never shown as it was."""
    stub = instance_pb2_grpc.InstanceServiceStub(api_runed.channel())

    def page(**kw: Any) -> dict[str, instance_pb2.Instance]:
        resp = stub.ListInstances(instance_pb2.ListInstancesRequest(page_size=2, **kw), metadata=api_auth)
        return {i.id: i for i in resp.instances}

    def get(iid: str) -> instance_pb2.Instance:
        got: instance_pb2.Instance = stub.GetInstance(
            instance_pb2.GetInstanceRequest(id=iid), metadata=api_auth
        ).instance
        return got

    running, failed = instance_pb2.INSTANCE_STATUS_RUNNING, instance_pb2.INSTANCE_STATUS_FAILED
    assert page() == page() == {"web-0": get("web-0"), "web-1": get("web-1")}
    assert page()["web-0"].status == running
    # A new revision of web-0 (what the controller writes when it crashes), and one of web-1 with the same data.
    store.put(objects.INSTANCE, "default", "web-0", _instance("web", 0, "BACKOFF", restart_count=1, reason="Crash"))
    store.put(objects.INSTANCE, "default", "web-1", _instance("web", 1, "STARTING"))
    now = page()
    assert now == {"web-0": get("web-0"), "web-1": get("web-1")}
    assert (now["web-0"].status, now["web-0"].status_message, now["web-0"].metadata.restart_count) == (
        failed,
        "Crash",
        1,
    )
    assert list(page(status=running)) == []
    assert list(page(field_selector_expr="status=failed")) == ["web-0", "worker-0"]
    # Deleted and made again: a new instance at a new revision, never the old one's proto.
    store.delete(objects.INSTANCE, "default", "web-0")
    assert list(page()) == ["web-1", "worker-0"]
    store.put(objects.INSTANCE, "default", "web-0", _instance("web", 0, pid=4242))
    again = page()
    assert (again["web-0"].status, again["web-0"].pid, again["web-0"].status_message) == (running, 4242, "")
    assert again["web-0"] == get("web-0")
