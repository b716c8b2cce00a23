"""Hostile input over gRPC, built from the descriptors: never INTERNAL/UNKNOWN, never a traceback, data intact."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import descriptor, message

from rune.api import (
    admin_pb2,
    admin_pb2_grpc,
    common_pb2,
    configmap_pb2,
    configmap_pb2_grpc,
    exec_pb2,
    exec_pb2_grpc,
    instance_pb2,
    instance_pb2_grpc,
    namespace_pb2,
    namespace_pb2_grpc,
    secret_pb2,
    secret_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)
from runed.pipeline import methods
from tests.harness import Runed, run_runed

REQUESTS_PER_METHOD = 24
STREAM_REQUESTS_PER_METHOD = 6
FD = descriptor.FieldDescriptor
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
TRACEBACK_MARKERS = ("Traceback", 'File "', '.py", line')

HOSTILE_STRINGS: tuple[str, ...] = (
    "",
    "x" * 100 * 1024,
    "a" * 300,
    "\x00",
    "nul\x00inside",
    "\x01\x07\x1b[31m\x7f",
    "line\nbreak\r\n",
    "ünïcødé-☃-\U0001d518-\u202e",
    "../../etc/passwd",
    "..",
    ".",
    "/",
    "a/b",
    "UPPER",
    "has space",
    " ",
    "-leading",
    "trailing-",
    "*",
    "%00%2e%2e",
    "${HOME}$(id)`id`",
    "' OR 1=1 --",
    '{"json": [1, 2]}',
    "default",
    "9" * 40,
    "-1",
)
INT_LIMITS: dict[int, tuple[int, ...]] = {
    FD.TYPE_INT32: (-1, -(2**31), 2**31 - 1, 0),
    FD.TYPE_SINT32: (-1, -(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-1, -(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-1, -(2**63), 2**63 - 1, 0),
    FD.TYPE_SINT64: (-1, -(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-1, -(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1, 2**31),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1, 2**63),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}
FLOATS = (float("nan"), float("inf"), float("-inf"), -1.0, 1e308, -0.0)
MAX_DEPTH = 4


def _scalar(rng: random.Random, fd: descriptor.FieldDescriptor, short: bool) -> Any:
    t = fd.type
    if t == FD.TYPE_STRING:
        value = rng.choice(HOSTILE_STRINGS)
        return value[:300] if short else value
    if t == FD.TYPE_BYTES:
        return rng.choice((b"", b"\xff\xfe\x00", b"\x00" * (300 if short else 100 * 1024)))
    if t == FD.TYPE_BOOL:
        return rng.choice((True, False))
    if t in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return rng.choice(FLOATS)
    if t == FD.TYPE_ENUM:
        # Numbers the enum does not define (proto3 enums are open, so they reach the server).
        return rng.choice((-1, 999, 2**31 - 1, len(fd.enum_type.values)))
    return rng.choice(INT_LIMITS[t])


def _fill(rng: random.Random, msg: message.Message, depth: int = 0, short: bool = False) -> None:
    """Set a random subset (sometimes all) of ``msg``'s fields to hostile values, recursively.

    Inside repeated fields and maps strings stay short, so a request stays under the server's
    receive limit and reaches the handler (the oversized case has its own test).
    """
    fields = list(msg.DESCRIPTOR.fields)
    everything = rng.random() < 0.4
    for fd in fields:
        if not everything and rng.random() < 0.4:
            continue
        is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
        if is_map:
            _fill_map(rng, getattr(msg, fd.name), fd.message_type, depth)
        elif fd.is_repeated:
            items = rng.choice((1, 3, 200))
            container = getattr(msg, fd.name)
            for _ in range(items if depth < 2 else 1):
                if fd.message_type is not None:
                    if depth < MAX_DEPTH:
                        _fill(rng, container.add(), depth + 1, short=True)
                else:
                    container.append(_scalar(rng, fd, short=True))
        elif fd.message_type is not None:
            if depth < MAX_DEPTH:
                _fill(rng, getattr(msg, fd.name), depth + 1, short)
        else:
            setattr(msg, fd.name, _scalar(rng, fd, short))


def _fill_map(rng: random.Random, target: Any, entry: descriptor.Descriptor, depth: int) -> None:
    key_fd, value_fd = entry.fields_by_name["key"], entry.fields_by_name["value"]
    for i in range(rng.choice((1, 5, 100))):
        key = _scalar(rng, key_fd, short=True)
        if isinstance(key, str) and rng.random() < 0.5:
            key = f"{key}{i}"
        if value_fd.message_type is not None:
            if depth < MAX_DEPTH:
                _fill(rng, target[key], depth + 1, short=True)
        else:
            target[key] = _scalar(rng, value_fd, short=True)


def _plausible(msg: message.Message, depth: int = 0) -> None:
    """Set only the identifying fields (names, namespaces, ids) to ordinary values.

    Other fields stay empty, so the one poisoned field is what a validator or handler has to face.
    """
    for fd in msg.DESCRIPTOR.fields:
        # Only the first member of a oneof: setting the others would replace it.
        if fd.containing_oneof is not None and fd.containing_oneof.fields[0] is not fd:
            continue
        if fd.message_type is not None:
            if not fd.is_repeated and depth < 2:
                _plausible(getattr(msg, fd.name), depth + 1)
        elif fd.type == FD.TYPE_STRING and fd.is_repeated:
            if fd.name == "command":
                getattr(msg, fd.name).append("true")
        elif fd.type == FD.TYPE_STRING:
            if fd.name == "namespace":
                setattr(msg, fd.name, "default")
            elif fd.name in ("name", "id", "resource_target") or fd.name.endswith(("_name", "_id")):
                setattr(msg, fd.name, "fuzz-a")
            elif fd.name == "command":
                # A service spec needs something to run; ``true`` exits at once and harms nothing.
                setattr(msg, fd.name, "true")
            elif fd.name == "runtime":
                setattr(msg, fd.name, "process")


def _poison(rng: random.Random, msg: message.Message, depth: int = 0) -> None:
    """Replace one field, somewhere down the tree, with a hostile value."""
    fields = list(msg.DESCRIPTOR.fields)
    nested = [f for f in fields if f.message_type is not None and not f.message_type.GetOptions().map_entry]
    # Specs live in nested messages: aim there more often than at the flat options beside them.
    fd = rng.choice(nested if nested and rng.random() < 0.7 else fields)
    is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
    if fd.message_type is not None and not is_map and depth < MAX_DEPTH and rng.random() < 0.7:
        child = getattr(msg, fd.name)
        if fd.is_repeated:
            child = child[0] if len(child) else child.add()
        if child.DESCRIPTOR.fields:
            _poison(rng, child, depth + 1)
            return
    msg.ClearField(fd.name)
    # A random fill of the same message type until it happens to set this field.
    for _ in range(50):
        shell = type(msg)()
        _fill(rng, shell, depth)
        if _set_in(shell, fd):
            break
    if fd.is_repeated or is_map:
        getattr(msg, fd.name).MergeFrom(getattr(shell, fd.name))
    elif fd.message_type is not None:
        getattr(msg, fd.name).CopyFrom(getattr(shell, fd.name))
    else:
        setattr(msg, fd.name, getattr(shell, fd.name))


def _set_in(msg: message.Message, fd: descriptor.FieldDescriptor) -> bool:
    return any(f is fd for f, _ in msg.ListFields())


def hostile_requests(method: methods.Method, count: int) -> Iterator[message.Message]:
    """The empty message, then ``count - 1`` seeded hostile ones (same seed, same requests).

    Half are garbage throughout; half are ordinary but for one poisoned field, which reaches
    deeper into the handlers than a request every check rejects at its first field.
    """
    rng = random.Random(f"bad-input:{method.full_name}")
    yield method.request_cls()
    for i in range(count - 1):
        req = method.request_cls()
        if i % 2 and req.DESCRIPTOR.fields:
            _plausible(req)
            _poison(rng, req)
        else:
            _fill(rng, req)
        yield req


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, list[tuple[str, str]]]]:
    """One runed for the module, without the per-token rate limit so every request reaches its handler."""
    tmp = tmp_path_factory.mktemp("bad-input")
    with run_runed(tmp / "data", env={"RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "0"}) as r:
        resp = admin_pb2_grpc.AdminServiceStub(r.channel()).AdminBootstrap(admin_pb2.AdminBootstrapRequest())
        yield r, [("authorization", f"Bearer {resp.token_secret}")]


def _describe(method: methods.Method, req: message.Message) -> str:
    text = str(req)
    return f"{method.full_name} with {text[:600]}{'…' if len(text) > 600 else ''}"


def _check(method: methods.Method, req: message.Message, err: grpc.RpcError, failures: list[str]) -> None:
    code, details = err.code(), err.details() or ""
    if code in BAD_CODES:
        failures.append(f"{code.name}: {_describe(method, req)}: {details[:300]}")
    elif "metadata size exceeds" in details:
        # The client dropped an error too large for its trailer limit: the caller never learns why.
        failures.append(f"undeliverable error: {_describe(method, req)}: {details[:300]}")
    elif any(marker in details for marker in TRACEBACK_MARKERS):
        failures.append(f"traceback text in {code.name}: {_describe(method, req)}: {details[:300]}")


def _snapshot(ch: grpc.Channel, auth: list[tuple[str, str]]) -> dict[str, Any]:
    ns = namespace_pb2_grpc.NamespaceServiceStub(ch).GetNamespace(
        namespace_pb2.GetNamespaceRequest(name="keep"), metadata=auth
    )
    sec = secret_pb2_grpc.SecretServiceStub(ch).GetSecret(
        secret_pb2.GetSecretRequest(name="keep-secret", namespace="keep"), metadata=auth
    )
    cm = configmap_pb2_grpc.ConfigmapServiceStub(ch).GetConfigmap(
        configmap_pb2.GetConfigmapRequest(name="keep-config", namespace="keep"), metadata=auth
    )
    svc = (
        service_pb2_grpc.ServiceServiceStub(ch)
        .GetService(service_pb2.GetServiceRequest(name="keep-svc", namespace="keep"), metadata=auth)
        .service
    )
    # The controller updates a service's status; its spec is what the barrage must not touch.
    spec = (svc.name, svc.namespace, dict(svc.labels), svc.command, list(svc.args), dict(svc.env), svc.scale)
    return {"namespace": str(ns), "secret": str(sec), "configmap": str(cm), "service": spec}


def _seed(ch: grpc.Channel, auth: list[tuple[str, str]]) -> None:
    namespace_pb2_grpc.NamespaceServiceStub(ch).CreateNamespace(
        namespace_pb2.CreateNamespaceRequest(namespace=namespace_pb2.Namespace(name="keep", labels={"team": "core"})),
        metadata=auth,
    )
    secret_pb2_grpc.SecretServiceStub(ch).CreateSecret(
        secret_pb2.CreateSecretRequest(
            secret=secret_pb2.Secret(name="keep-secret", namespace="keep", type="static", data={"password": "s3cr3t"})
        ),
        metadata=auth,
    )
    configmap_pb2_grpc.ConfigmapServiceStub(ch).CreateConfigmap(
        configmap_pb2.CreateConfigmapRequest(
            configmap=configmap_pb2.Configmap(name="keep-config", namespace="keep", data={"mode": "fast"})
        ),
        metadata=auth,
    )
    service_pb2_grpc.ServiceServiceStub(ch).CreateService(
        service_pb2.CreateServiceRequest(
            service=service_pb2.Service(
                name="keep-svc",
                namespace="keep",
                runtime="process",
                command="true",
                args=["--flag"],
                env={"MODE": "fast"},
                labels={"app": "keep"},
                scale=0,
            )
        ),
        metadata=auth,
    )


def _call_unary(ch: grpc.Channel, method: methods.Method, auth: list[tuple[str, str]], failures: list[str]) -> None:
    call = ch.unary_unary(
        method.full_name,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=method.response_cls.FromString,
    )
    for req in hostile_requests(method, REQUESTS_PER_METHOD):
        try:
            call(req, metadata=auth, timeout=10)
        except grpc.RpcError as err:
            _check(method, req, err, failures)


def _call_stream(ch: grpc.Channel, method: methods.Method, auth: list[tuple[str, str]], failures: list[str]) -> None:
    for req in hostile_requests(method, STREAM_REQUESTS_PER_METHOD):
        if method.client_streaming:
            call: Any = ch.stream_stream(
                method.full_name,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=method.response_cls.FromString,
            )
            responses = call(iter([req]), metadata=auth, timeout=1.5)
        else:
            call = ch.unary_stream(
                method.full_name,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=method.response_cls.FromString,
            )
            responses = call(req, metadata=auth, timeout=1.5)
        try:
            # An accepted stream stays open until the deadline: only how it starts matters here.
            for _ in responses:
                break
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                _check(method, req, err, failures)
        finally:
            responses.cancel()


def test_no_method_answers_hostile_input_with_internal(target: tuple[Runed, list[tuple[str, str]]]) -> None:
    r, auth = target
    ch = r.channel()
    _seed(ch, auth)
    before = _snapshot(ch, auth)
    failures: list[str] = []
    started = time.monotonic()
    for method in methods.all_methods():
        if method.kind == "unary":
            _call_unary(ch, method, auth, failures)
        else:
            _call_stream(ch, method, auth, failures)
    elapsed = time.monotonic() - started
    assert not failures, f"{len(failures)} hostile requests got INTERNAL/UNKNOWN:\n" + "\n".join(failures[:40])
    assert "Traceback" not in r.output(), r.output()[-4000:]
    # The barrage neither lost nor changed what was stored before it, and the root token still works.
    assert _snapshot(ch, auth) == before
    assert elapsed < 120, f"the barrage took {elapsed:.0f}s"


def test_oversized_grpc_message_is_resource_exhausted(target: tuple[Runed, list[tuple[str, str]]]) -> None:
    r, auth = target
    stub = namespace_pb2_grpc.NamespaceServiceStub(r.channel())
    huge = namespace_pb2.CreateNamespaceRequest(
        namespace=namespace_pb2.Namespace(name="huge", labels={"k": "v" * (20 * 1024 * 1024)})
    )
    with pytest.raises(grpc.RpcError) as exc:
        stub.CreateNamespace(huge, metadata=auth, timeout=30)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.value.details()


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
def test_rest_body_of_the_wrong_shape_is_400(target: tuple[Runed, list[tuple[str, str]]], path: str, body: Any) -> None:
    r, auth = target
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
    target: tuple[Runed, list[tuple[str, str]]], spec: dict[str, Any], field: str
) -> None:
    """A NUL byte or an oversized argv would be stored and fail only in the runner: refuse it with its field."""
    r, auth = target
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
    target: tuple[Runed, list[tuple[str, str]]], init: exec_pb2.ExecInitRequest, field: str
) -> None:
    r, auth = target
    stream = exec_pb2_grpc.ExecServiceStub(r.channel()).StreamExec(
        iter([exec_pb2.ExecRequest(init=init)]), metadata=auth, timeout=10
    )
    with pytest.raises(grpc.RpcError) as exc:
        list(stream)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    assert field in (exc.value.details() or "")


def test_secret_values_that_cannot_become_env_vars_are_refused(target: tuple[Runed, list[tuple[str, str]]]) -> None:
    """A NUL in a value would be stored, then fail every instance that imports it with envFrom."""
    r, auth = target
    stub = secret_pb2_grpc.SecretServiceStub(r.channel())
    bad = secret_pb2.Secret(name="nul-value", namespace="keep", type="static", data={"A": "x\x00y", "B": "fine"})
    with pytest.raises(grpc.RpcError) as exc:
        stub.CreateSecret(secret_pb2.CreateSecretRequest(secret=bad), metadata=auth, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    details = exc.value.details() or ""
    assert "secret.data[A]" in details and "x\x00y" not in details


def test_registry_probe_of_an_oversized_image_ref_is_refused(target: tuple[Runed, list[tuple[str, str]]]) -> None:
    """The prober would build a URL too long to request: refuse the reference itself."""
    r, auth = target
    stub = admin_pb2_grpc.AdminServiceStub(r.channel())
    with pytest.raises(grpc.RpcError) as exc:
        stub.TestRegistry(admin_pb2.TestRegistryRequest(name="hub", image_ref="x" * 100_000), metadata=auth, timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    assert "image_ref" in (exc.value.details() or "")


@pytest.mark.parametrize("namespace", ["x" * 60_000, "Not A Namespace", "../../etc"])
def test_listing_in_an_impossible_namespace_is_invalid_not_empty(
    target: tuple[Runed, list[tuple[str, str]]], namespace: str
) -> None:
    """An empty list would hide the typo; a name no namespace can have is the caller's mistake."""
    r, auth = target
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
