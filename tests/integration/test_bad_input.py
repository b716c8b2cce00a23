"""Hostile input over gRPC, built from the descriptors: never INTERNAL/UNKNOWN, never a traceback, data intact."""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest
from google.protobuf import message

from rune.api import (
    configmap_pb2,
    configmap_pb2_grpc,
    namespace_pb2,
    namespace_pb2_grpc,
    secret_pb2,
    secret_pb2_grpc,
    service_pb2,
    service_pb2_grpc,
)
from runed.pipeline import methods
from tests.harness import Runed
from tests.integration.hostile import hostile_requests
from tests.support import Metadata

REQUESTS_PER_METHOD = 24
STREAM_REQUESTS_PER_METHOD = 6
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
TRACEBACK_MARKERS = ("Traceback", 'File "', '.py", line')


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


def _snapshot(ch: grpc.Channel, auth: Metadata) -> dict[str, Any]:
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


def _seed(ch: grpc.Channel, auth: Metadata) -> None:
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


def _call_unary(ch: grpc.Channel, method: methods.Method, auth: Metadata, failures: list[str]) -> None:
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


def _call_stream(ch: grpc.Channel, method: methods.Method, auth: Metadata, failures: list[str]) -> None:
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


def test_no_method_answers_hostile_input_with_internal(unthrottled: tuple[Runed, Metadata]) -> None:
    r, auth = unthrottled
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


def test_oversized_grpc_message_is_resource_exhausted(unthrottled: tuple[Runed, Metadata]) -> None:
    r, auth = unthrottled
    stub = namespace_pb2_grpc.NamespaceServiceStub(r.channel())
    huge = namespace_pb2.CreateNamespaceRequest(
        namespace=namespace_pb2.Namespace(name="huge", labels={"k": "v" * (20 * 1024 * 1024)})
    )
    with pytest.raises(grpc.RpcError) as exc:
        stub.CreateNamespace(huge, metadata=auth, timeout=30)
    assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc.value.details()
