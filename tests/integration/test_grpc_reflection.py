"""gRPC server reflection v1 (what current grpcurl, buf and Postman ask first) beside v1alpha."""

from __future__ import annotations

import json

from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from runed.pipeline import methods
from tests.harness import Runed
from tests.integration.bufcli import buf
from tests.support import Metadata

V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def _v1_call(
    runed: Runed, *requests: reflection_pb2.ServerReflectionRequest
) -> list[reflection_pb2.ServerReflectionResponse]:
    # v1's messages are v1alpha's with the same field numbers: v1alpha's classes speak v1 on the wire.
    call = runed.channel().stream_stream(
        V1,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return list(call(iter(requests), timeout=10))


def test_raw_v1_request_lists_services_and_describes_them(api_runed: Runed) -> None:
    listed, described, v1_itself = _v1_call(
        api_runed,
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="rune.api.NamespaceService"),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection"),
    )
    names = {s.name for s in listed.list_services_response.service}
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= names
    assert set(methods.services()) <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in described.file_descriptor_response.file_descriptor_proto
    ]
    assert any(f.package == "rune.api" and any(s.name == "NamespaceService" for s in f.service) for f in files)
    (v1_file,) = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in v1_itself.file_descriptor_response.file_descriptor_proto
    ]
    assert v1_file.package == "grpc.reflection.v1"
    assert v1_file.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"


def test_v1alpha_still_answers(api_runed: Runed) -> None:
    call = api_runed.channel().stream_stream(
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (resp,) = call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    assert "rune.api.ServiceService" in {s.name for s in resp.list_services_response.service}


def test_buf_curl_lists_and_calls_through_reflection_v1(api_runed: Runed, api_auth: Metadata) -> None:
    base = f"http://{api_runed.grpc_target}"
    # --reflect-protocol grpc-v1: no silent fallback to v1alpha.
    common = ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", "grpc-v1"]
    listed = buf(*common, "--list-services", base)
    assert listed.returncode == 0, listed.stderr.decode()
    assert {"grpc.reflection.v1.ServerReflection", *methods.services()} <= set(listed.stdout.decode().split())

    token = api_auth[0][1]
    called = buf(
        *common,
        "-H",
        f"authorization: {token}",
        "-d",
        '{"name": "default"}',
        base + "/rune.api.NamespaceService/GetNamespace",
    )
    assert called.returncode == 0, called.stderr.decode()
    assert json.loads(called.stdout)["namespace"]["name"] == "default"
