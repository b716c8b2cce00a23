"""ConfigmapService over real gRPC: lifecycle, versions, namespaces, validation."""

from __future__ import annotations

import grpc
import pytest

from rune.api import configmap_pb2, configmap_pb2_grpc
from tests.harness import Runed
from tests.support import bad_request_fields

Metadata = list[tuple[str, str]]


def _cm(name: str, data: dict[str, str], ns: str = "") -> configmap_pb2.Configmap:
    return configmap_pb2.Configmap(name=name, namespace=ns, data=data)


def test_lifecycle_and_versions(runed: Runed, auth: Metadata) -> None:
    stub = configmap_pb2_grpc.ConfigmapServiceStub(runed.channel())
    created = stub.CreateConfigmap(
        configmap_pb2.CreateConfigmapRequest(configmap=_cm("app", {"config.yaml": "a: 1", "LEVEL": "info"})),
        metadata=auth,
    ).configmap
    assert created.version == 1 and created.namespace == "default"
    assert dict(created.data) == {"config.yaml": "a: 1", "LEVEL": "info"}

    got = stub.GetConfigmap(configmap_pb2.GetConfigmapRequest(name="app"), metadata=auth).configmap
    assert got == created
    same = stub.UpdateConfigmap(
        configmap_pb2.UpdateConfigmapRequest(configmap=_cm("app", {"config.yaml": "a: 1", "LEVEL": "info"})),
        metadata=auth,
    ).configmap
    assert same.version == 1 and same.updated_at == created.updated_at
    changed = stub.UpdateConfigmap(
        configmap_pb2.UpdateConfigmapRequest(configmap=_cm("app", {"LEVEL": "debug"})), metadata=auth
    ).configmap
    assert changed.version == 2 and dict(changed.data) == {"LEVEL": "debug"}
    assert changed.created_at == created.created_at

    stub.CreateConfigmap(
        configmap_pb2.CreateConfigmapRequest(configmap=_cm("other", {"k": "v"}, "team"), ensure_namespace=True),
        metadata=auth,
    )
    in_default = stub.ListConfigmaps(configmap_pb2.ListConfigmapsRequest(), metadata=auth).configmaps
    assert [c.name for c in in_default] == ["app"]
    everywhere = stub.ListConfigmaps(configmap_pb2.ListConfigmapsRequest(namespace="*"), metadata=auth).configmaps
    assert sorted((c.namespace, c.name) for c in everywhere) == [("default", "app"), ("team", "other")]
    by_name = stub.ListConfigmaps(
        configmap_pb2.ListConfigmapsRequest(namespace="*", field_selector={"name": "other"}), metadata=auth
    ).configmaps
    assert [c.name for c in by_name] == ["other"]

    stub.DeleteConfigmap(configmap_pb2.DeleteConfigmapRequest(name="app"), metadata=auth)
    with pytest.raises(grpc.RpcError) as e:
        stub.GetConfigmap(configmap_pb2.GetConfigmapRequest(name="app"), metadata=auth)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert 'configmap "app" not found in namespace "default"' in (e.value.details() or "")
    with pytest.raises(grpc.RpcError) as e:
        stub.UpdateConfigmap(configmap_pb2.UpdateConfigmapRequest(configmap=_cm("app", {"k": "v"})), metadata=auth)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_missing_namespace_and_validation(runed: Runed, auth: Metadata) -> None:
    stub = configmap_pb2_grpc.ConfigmapServiceStub(runed.channel())
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateConfigmap(configmap_pb2.CreateConfigmapRequest(configmap=_cm("c", {}, "ghost")), metadata=auth)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    with pytest.raises(grpc.RpcError) as e:
        stub.CreateConfigmap(
            configmap_pb2.CreateConfigmapRequest(
                configmap=_cm("no_underscores", {"..": "x", "a b": "y", "fine": "z"}, "Caps")
            ),
            metadata=auth,
        )
    assert set(bad_request_fields(e.value)) == {
        "configmap.name",
        "configmap.namespace",
        "configmap.data[..]",
        "configmap.data[a b]",
    }
    with pytest.raises(grpc.RpcError) as e:
        stub.CreateConfigmap(
            configmap_pb2.CreateConfigmapRequest(configmap=_cm("big", {"a": "x" * (1024 * 1024)})), metadata=auth
        )
    assert bad_request_fields(e.value) == ["configmap.data"]
    with pytest.raises(grpc.RpcError) as e:
        stub.ListConfigmaps(
            configmap_pb2.ListConfigmapsRequest(label_selector={"a": "b"}, field_selector={"owner": "x"}),
            metadata=auth,
        )
    assert set(bad_request_fields(e.value)) == {"label_selector", "field_selector[owner]"}
