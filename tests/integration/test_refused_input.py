"""Input that would be stored and fail later (in the runner, an exec, an env var) is refused up front with its field."""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx
import pytest

from rune.api import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    exec_pb2,
    exec_pb2_grpc,
    instance_pb2,
    instance_pb2_grpc,
    secret_pb2,
    secret_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)
from tests.harness import Runed
from tests.support import Metadata


@pytest.mark.parametrize(
    ("path", "body"),
    [
        # The body is the ``namespace`` message field: an array or a string in its place.
        ("/v1/namespaces", [1, 2, 3]),
        ("/v1/namespaces", "just a string"),
        ("/v1/namespaces", {"name": {"nested": True}}),
        ("/v1/namespaces", {"name": "ok", "labels": ["not", "a", "map"]}),
        ("/v1/namespaces", {"name": "ok", "labels": {"a": {"b": 1}}}),
        ("/v1/admin/users", {"name": "ok", "policies": "not-a-list"}),
        ("/v1/admin/users", {"name": 12.5}),
        ("/v1/admin/users", None),
    ],
)
def test_rest_body_of_the_wrong_shape_is_400(unthrottled: tuple[Runed, Metadata], path: str, body: Any) -> None:
    r, auth = unthrottled
    headers = {"authorization": auth[0][1]}
    resp = httpx.post(r.http_base + path, content=json.dumps(body), headers=headers, timeout=10)
    assert resp.status_code == 400, resp.text
    assert "Traceback" not in resp.text


def _probe(which: str, **fields: Any) -> common_pb2.HealthCheck:
    return common_pb2.HealthCheck(**{which: common_pb2.Probe(**fields)})


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"command": "tr\x00ue"}, "service.command"),
        ({"command": "true", "args": ["ok", "a\x00b"]}, "service.args[1]"),
        ({"command": "true", "env": {"MODE": "x\x00"}}, "service.env[MODE]"),
        ({"process": common_pb2.ProcessSpec(command="true", working_dir="/tmp/\x00")}, "service.process.working_dir"),
        ({"command": "/" + "x" * 5000}, "service.command"),
        ({"command": "true", "args": ["a"] * 5000}, "service.args"),
        (
            {"command": "true", "dependencies": [service_pb2.DependencyRef(configmap="c" * 100_000)]},
            "service.dependencies[0].configmap",
        ),
        (
            {"command": "true", "env_from": [service_pb2.EnvFromSource(secret_name="../../etc")]},
            "service.env_from[0].secret_name",
        ),
        (
            {
                "command": "true",
                "secret_mounts": [service_pb2.SecretMount(name="m", secret_name="s", mount_path="/x\x00")],
            },
            "service.secret_mounts[0].mount_path",
        ),
        (
            {"command": "true", "health": _probe("liveness", type=common_pb2.PROBE_TYPE_HTTP, port=80, path="/a b")},
            "service.health.liveness.path",
        ),
        (
            {"command": "true", "health": _probe("readiness", type=common_pb2.PROBE_TYPE_COMMAND, command=["x\x00"])},
            "service.health.readiness.command[0]",
        ),
    ],
)
def test_specs_that_cannot_be_executed_are_refused_up_front(
    unthrottled: tuple[Runed, Metadata], spec: dict[str, Any], field: str
) -> None:
    """A NUL byte or an oversized argv would be stored and fail only in the runner: refuse it with its field."""
    r, auth = unthrottled
    stub = service_pb2_grpc.ServiceServiceStub(r.channel())
    req = service_pb2.CreateServiceRequest(
        service=service_pb2.Service(name="unrunnable", namespace="default", runtime="process", **spec)
    )
    with pytest.raises(grpc.RpcError) as exc:
        stub.CreateService(req, metadata=auth, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    assert field in (exc.value.details() or "")


@pytest.mark.parametrize(
    ("init", "field"),
    [
        (
            exec_pb2.ExecInitRequest(service_name="keep-svc", namespace="keep", command=["sh", "-c\x00"]),
            "init.command[1]",
        ),
        (exec_pb2.ExecInitRequest(service_name="keep-svc", command=["env"], env={"A": "\x00"}), "init.env[A]"),
        (exec_pb2.ExecInitRequest(service_name="keep-svc", command=["pwd"], working_dir="/\x00"), "init.working_dir"),
        (exec_pb2.ExecInitRequest(service_name="Keep Svc", command=["pwd"]), "init.service_name"),
    ],
)
def test_exec_that_cannot_be_spawned_is_refused_up_front(
    unthrottled: tuple[Runed, Metadata], init: exec_pb2.ExecInitRequest, field: str
) -> None:
    r, auth = unthrottled
    stream = exec_pb2_grpc.ExecServiceStub(r.channel()).StreamExec(
        iter([exec_pb2.ExecRequest(init=init)]), metadata=auth, timeout=10
    )
    with pytest.raises(grpc.RpcError) as exc:
        list(stream)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    assert field in (exc.value.details() or "")


def test_secret_values_that_cannot_become_env_vars_are_refused(unthrottled: tuple[Runed, Metadata]) -> None:
    """A NUL in a value would be stored, then fail every instance that imports it with envFrom."""
    r, auth = unthrottled
    stub = secret_pb2_grpc.SecretServiceStub(r.channel())
    bad = secret_pb2.Secret(name="nul-value", namespace="keep", type="static", data={"A": "x\x00y", "B": "fine"})
    with pytest.raises(grpc.RpcError) as exc:
        stub.CreateSecret(secret_pb2.CreateSecretRequest(secret=bad), metadata=auth, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    details = exc.value.details() or ""
    assert "secret.data[A]" in details and "x\x00y" not in details


def test_registry_probe_of_an_oversized_image_ref_is_refused(unthrottled: tuple[Runed, Metadata]) -> None:
    """The prober would build a URL too long to request: refuse the reference itself."""
    r, auth = unthrottled
    stub = admin_pb2_grpc.AdminServiceStub(r.channel())
    with pytest.raises(grpc.RpcError) as exc:
        stub.TestRegistry(admin_pb2.TestRegistryRequest(name="hub", image_ref="x" * 100_000), metadata=auth, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    assert "image_ref" in (exc.value.details() or "")


@pytest.mark.parametrize("namespace", ["x" * 60_000, "Not A Namespace", "../../etc"])
def test_listing_in_an_impossible_namespace_is_invalid_not_empty(
    unthrottled: tuple[Runed, Metadata], namespace: str
) -> None:
    """An empty list would hide the typo; a name no namespace can have is the caller's mistake."""
    r, auth = unthrottled
    ch = r.channel()
    calls = [
        lambda: service_pb2_grpc.ServiceServiceStub(ch).ListServices(
            service_pb2.ListServicesRequest(namespace=namespace), metadata=auth, timeout=10
        ),
        lambda: instance_pb2_grpc.InstanceServiceStub(ch).ListInstances(
            instance_pb2.ListInstancesRequest(namespace=namespace), metadata=auth, timeout=10
        ),
        lambda: service_pb2_grpc.ServiceServiceStub(ch).ListDeletionOperations(
            service_pb2.ListDeletionOperationsRequest(namespace=namespace), metadata=auth, timeout=10
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
        assert "namespace" in (exc.value.details() or "")
    # "*" (every namespace) and "" (the default one) stay valid scopes: these raise if refused.
    for scope in ("*", ""):
        service_pb2_grpc.ServiceServiceStub(ch).ListServices(
            service_pb2.ListServicesRequest(namespace=scope), metadata=auth, timeout=10
        )
        instance_pb2_grpc.InstanceServiceStub(ch).ListInstances(
            instance_pb2.ListInstancesRequest(namespace=scope), metadata=auth, timeout=10
        )
