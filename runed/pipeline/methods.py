"""The RPC catalogue, read from the compiled proto descriptors: every adapter and table is built from it."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from types import ModuleType

from google.protobuf import descriptor, message, message_factory
from google.protobuf import descriptor_pool as _pool

from rune.api import (
    admin_pb2,
    auth_pb2,
    common_pb2,
    configmap_pb2,
    exec_pb2,
    health_pb2,
    instance_pb2,
    logs_pb2,
    namespace_pb2,
    node_pb2,
    secret_pb2,
    service_pb2,
)

PACKAGE = "rune.api"
# Every compiled rune.api file: the services (and the messages they use) come from these.
PB2_MODULES: dict[str, ModuleType] = {
    "admin": admin_pb2,
    "auth": auth_pb2,
    "common": common_pb2,
    "configmap": configmap_pb2,
    "exec": exec_pb2,
    "health": health_pb2,
    "instance": instance_pb2,
    "logs": logs_pb2,
    "namespace": namespace_pb2,
    "node": node_pb2,
    "secret": secret_pb2,
    "service": service_pb2,
}


@dataclass(frozen=True)
class Method:
    """One RPC of the contract."""

    service: str  # e.g. "ServiceService"
    name: str  # e.g. "GetService"
    request_cls: type[message.Message]
    response_cls: type[message.Message]
    client_streaming: bool
    server_streaming: bool
    descriptor: descriptor.MethodDescriptor

    @functools.cached_property
    def full_name(self) -> str:
        """The gRPC path: ``/rune.api.ServiceService/GetService`` (cached: it is read on every call)."""
        return f"/{PACKAGE}.{self.service}/{self.name}"

    @property
    def kind(self) -> str:
        if self.client_streaming and self.server_streaming:
            return "bidi"
        if self.server_streaming:
            return "server_stream"
        if self.client_streaming:
            return "client_stream"
        return "unary"


def _message_class(desc: descriptor.Descriptor) -> type[message.Message]:
    cls: type[message.Message] = message_factory.GetMessageClass(desc)
    return cls


def pb2_modules() -> dict[str, ModuleType]:
    return PB2_MODULES


@functools.cache
def all_methods() -> tuple[Method, ...]:
    """Every RPC of every rune.api service, in declaration order."""
    out: list[Method] = []
    for mod in pb2_modules().values():
        fd: descriptor.FileDescriptor = mod.DESCRIPTOR
        for svc in fd.services_by_name.values():
            for m in svc.methods:
                out.append(
                    Method(
                        service=svc.name,
                        name=m.name,
                        request_cls=_message_class(m.input_type),
                        response_cls=_message_class(m.output_type),
                        client_streaming=m.client_streaming,
                        server_streaming=m.server_streaming,
                        descriptor=m,
                    )
                )
    return tuple(out)


@functools.cache
def by_full_name() -> dict[str, Method]:
    return {m.full_name: m for m in all_methods()}


def services() -> list[str]:
    """Fully qualified service names (for reflection and health)."""
    return sorted({f"{PACKAGE}.{m.service}" for m in all_methods()})


def pool() -> _pool.DescriptorPool:
    pb2_modules()
    return _pool.Default()
