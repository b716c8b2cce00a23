"""gRPC server reflection in both versions: ``grpc.reflection.v1`` and the older ``v1alpha``.

Current grpcurl, ``buf curl`` and Postman ask ``grpc.reflection.v1.ServerReflection`` first, and
some of them never fall back. grpcio-reflection (1.85) ships only ``v1alpha``. The two protocols
are the same messages with the same field numbers under another package name, so the v1 service
is v1alpha's servicer behind a second method path, and the v1 file (v1alpha's descriptor renamed)
joins the default pool so reflection can describe the v1 service itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

V1ALPHA_PACKAGE = "grpc.reflection.v1alpha"
V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
V1ALPHA_SERVICE: str = reflection.SERVICE_NAME


def _rename(type_name: str) -> str:
    old = f".{V1ALPHA_PACKAGE}."
    return f".{V1_PACKAGE}." + type_name[len(old) :] if type_name.startswith(old) else type_name


def _rename_messages(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for msg in messages:
        for field in msg.field:
            if field.HasField("type_name"):  # assigning "" would mark a scalar field as typed
                field.type_name = _rename(field.type_name)
        _rename_messages(msg.nested_type)


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """``grpc/reflection/v1/reflection.proto``, built from the v1alpha descriptor."""
    fdp = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(fdp)
    fdp.name = V1_FILE
    fdp.package = V1_PACKAGE
    fdp.options.Clear()  # v1alpha's file is marked deprecated and names v1alpha's Java/Go packages
    fdp.options.java_package = "io.grpc.reflection.v1"
    fdp.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    _rename_messages(fdp.message_type)
    for svc in fdp.service:
        for m in svc.method:
            m.input_type = _rename(m.input_type)
            m.output_type = _rename(m.output_type)
    return fdp


def _register_v1_file(pool: descriptor_pool.DescriptorPool) -> None:
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.Add(v1_file())


def enable(service_names: Iterable[str], server: grpc.aio.Server) -> list[str]:
    """Serve reflection v1 and v1alpha on ``server`` for ``service_names`` (plus both reflection services).

    Returns:
        The service names reflection lists.
    """
    pool = descriptor_pool.Default()
    _register_v1_file(pool)
    names = sorted({*service_names, V1_SERVICE, V1ALPHA_SERVICE})
    reflection.enable_server_reflection(names, server, pool=pool)
    servicer: Any = reflection.aio.ReflectionServicer(names, pool=pool)
    # Same messages on the wire: v1alpha's classes read and write v1's requests and responses.
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": handler}),)
    )
    return names
