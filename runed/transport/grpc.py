"""The gRPC adapter: generic handlers built from the descriptors, feeding the shared pipeline."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, NamedTuple
from urllib.parse import unquote

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from runed.core import errors
from runed.core.config import ServerConfig, TLSConfig, parse_address
from runed.core.errors import BindError
from runed.pipeline import methods
from runed.pipeline.context import CallContext, Deps
from runed.pipeline.methods import Method
from runed.pipeline.stages import Pipeline, new_request_id
from runed.pipeline.status import status_proto
from runed.transport import metrics, reflection
from runed.transport.certs import CertError, CertFiles
from runed.transport.tls import TLSFront, needs_front

log = logging.getLogger("runed.grpc")


def peer_host(peer: str) -> str:
    """``ipv4:127.0.0.1:5555`` / ``ipv6:[::1]:5555`` -> the address; "" for unix sockets.

    gRPC writes a peer as a URI, so an IPv6 one comes percent-encoded (``ipv6:%5B::1%5D:5555``, a
    zone ``%25eth0``): decoded first, or ``localhost`` (::1 first) would not be the server host."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "ipv6":
        return unquote(rest).rpartition(":")[0].strip("[]")
    return ""


class _Status(NamedTuple):
    """A grpc.Status carrying our trailing metadata (request id) next to the rich details."""

    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...]


class _Malformed(NamedTuple):
    """What the deserializer hands on for bytes that are not the request message (see :func:`_deserializer`)."""

    type_name: str


def _deserializer(cls: Any) -> Callable[[bytes], Any]:
    """``cls.FromString`` that never raises: undecodable bytes become a :class:`_Malformed`.

    grpc.aio calls the deserializer before the handler; an exception there ends the call as
    UNKNOWN and logs a traceback per call. The handler answers INVALID_ARGUMENT instead.
    """
    parse = cls.FromString
    type_name = cls.DESCRIPTOR.full_name

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # whatever the parser raises, the bytes came from the client
            return _Malformed(type_name)

    return deserialize


def _encode(serialize: Callable[[Any], bytes], response: Any) -> bytes:
    """A unary response's bytes: those a handler returned already encoded go as they are."""
    return response if type(response) is bytes else serialize(response)


def _malformed_error(bad: _Malformed) -> errors.InvalidArgument:
    return errors.InvalidArgument(f"malformed request: the message is not a valid {bad.type_name}")


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """A request stream in which a malformed message ends the call with INVALID_ARGUMENT."""
    async for item in requests:
        if isinstance(item, _Malformed):
            raise _malformed_error(item)
        yield item


class _Adapter:
    def __init__(self, pipeline: Pipeline, deps: Deps, front: TLSFront | None = None) -> None:
        self.pipeline = pipeline
        self.deps = deps
        self.front = front

    def _ctx(self, method: Method, context: grpc.aio.ServicerContext[Any, Any]) -> CallContext:
        md = {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        ctx = CallContext(
            deps=self.deps,
            method=method,
            transport="grpc",
            metadata=md,
            peer=peer_host(context.peer() or ""),
        )
        remaining = context.time_remaining()
        if remaining is not None:
            ctx.deadline = time.monotonic() + remaining
        # grpcio only fills x509 fields for a certificate it verified: it either requires and verifies
        # one or never asks (runed/transport/tls.py), so a CN here is always a verified one.
        auth = context.auth_context() or {}
        cn = auth.get("x509_common_name")
        if cn:
            ctx.tls_client_cn = cn[0].decode() if isinstance(cn[0], bytes) else str(cn[0])
        if self.front is not None:
            # Optional client certificates: the TLS front verified it and knows the real client.
            down = self.front.lookup(context.peer() or "")
            if down is not None:
                ctx.peer, ctx.tls_client_cn = down.peer, down.cn
        return ctx

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext[Any, Any], ctx: CallContext, err: errors.RuneError) -> None:
        st = rpc_status.to_status(status_proto(err, ctx.request_id))
        await context.abort_with_status(
            _Status(st.code, st.details, (*st.trailing_metadata, ("x-request-id", ctx.request_id)))
        )

    async def _reject(self, method: Method, context: grpc.aio.ServicerContext[Any, Any], bad: _Malformed) -> None:
        """Refuse a request whose bytes did not decode: one log line, counted, before any pipeline stage.

        Like a REST body that does not parse, it never reaches authentication: the answer is the
        same with or without credentials.
        """
        started = time.monotonic()
        ctx = self._ctx(method, context)
        supplied = ctx.metadata.get("x-request-id", "")
        ctx.request_id = supplied[:128] if supplied else new_request_id()
        err = _malformed_error(bad)
        log.info(
            "grpc %s %s peer=%s request_id=%s error=%r",
            method.full_name,
            err.code.name,
            ctx.peer,
            ctx.request_id,
            err.message,
        )
        metrics.record("grpc", method.full_name, err.code.name, time.monotonic() - started)
        await self._abort(context, ctx, err)

    def handler(self, method: Method) -> grpc.RpcMethodHandler[Any, Any]:
        kind = method.kind
        deser = _deserializer(method.request_cls)
        ser = method.response_cls.SerializeToString

        if kind == "unary":

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                if isinstance(request, _Malformed):
                    await self._reject(method, context, request)
                ctx = self._ctx(method, context)
                try:
                    response = await self.pipeline.unary_wire(ctx, request)
                except errors.RuneError as err:
                    await self._abort(context, ctx, err)
                context.set_trailing_metadata((("x-request-id", ctx.request_id),))
                return response

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=deser, response_serializer=functools.partial(_encode, ser)
            )

        if kind == "server_stream":

            async def server_stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                if isinstance(request, _Malformed):
                    await self._reject(method, context, request)
                ctx = self._ctx(method, context)
                metrics.stream_opened("grpc")
                try:
                    async for item in self.pipeline.server_stream(ctx, request):
                        yield item
                except errors.RuneError as err:
                    await self._abort(context, ctx, err)
                finally:
                    metrics.stream_opened("grpc", -1)

            return grpc.unary_stream_rpc_method_handler(
                server_stream, request_deserializer=deser, response_serializer=ser
            )

        async def bidi(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            ctx = self._ctx(method, context)
            metrics.stream_opened("grpc")
            try:
                async for item in self.pipeline.bidi(ctx, _checked(requests)):
                    yield item
            except errors.RuneError as err:
                await self._abort(context, ctx, err)
            finally:
                metrics.stream_opened("grpc", -1)

        return grpc.stream_stream_rpc_method_handler(bidi, request_deserializer=deser, response_serializer=ser)


def generic_handlers(
    pipeline: Pipeline, deps: Deps, front: TLSFront | None = None
) -> list[grpc.GenericRpcHandler[Any, Any]]:
    adapter = _Adapter(pipeline, deps, front)
    by_service: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
    for m in methods.all_methods():
        by_service.setdefault(f"{methods.PACKAGE}.{m.service}", {})[m.name] = adapter.handler(m)
    return [grpc.method_handlers_generic_handler(svc, handlers) for svc, handlers in by_service.items()]


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials | None:
    """grpcio's own TLS: no client certificates, or required and verified ones (optional ones need the
    front); a rotated certificate is served from the next handshake on (:mod:`runed.transport.certs`)."""
    if not tls.enabled or needs_front(tls):
        return None
    try:
        return CertFiles(tls).grpc_credentials(bool(tls.client_ca_file and tls.require_client_cert))
    except CertError as e:
        raise BindError(f"server.tls: {e}") from None


async def serve(
    server_config: ServerConfig, pipeline: Pipeline, deps: Deps, stop: asyncio.Event, on_ready: Callable[[str], None]
) -> None:
    """Run the gRPC server until ``stop`` is set, then drain within the configured grace.

    Args:
        server_config: addresses, TLS and the shutdown grace.
        pipeline: every call goes through it.
        deps: what the handlers get in their call context.
        stop: set when the role should stop.
        on_ready: called with the bound address once the server accepts calls.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
    )
    # Optional client certificates: TLS is terminated by the front, gRPC listens on loopback behind it.
    front = TLSFront(server_config.tls) if needs_front(server_config.tls) else None
    server.add_generic_rpc_handlers(generic_handlers(pipeline, deps, front))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # Reflection v1 and v1alpha (runed/transport/reflection.py).
    reflection.enable([*methods.services(), health_pb2.DESCRIPTOR.services_by_name["Health"].full_name], server)

    host, port = parse_address(server_config.grpc_address)
    bind = f"[{host or '::'}]:{port}" if ":" in (host or "::") else f"{host}:{port}"
    creds = server_credentials(server_config.tls)
    if front is not None:
        bind = "127.0.0.1:0"
    try:
        bound = server.add_secure_port(bind, creds) if creds else server.add_insecure_port(bind)
    except RuntimeError:
        bound = 0
    if not bound:
        raise BindError(f"cannot listen on {server_config.grpc_address}: address already in use or not permitted")
    await server.start()
    try:
        if front is not None:
            front.upstream_port = bound
            bound = await front.start(server_config.grpc_address)
        for name in ["", *methods.services()]:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        shown = host or "0.0.0.0"
        on_ready(f"{shown}:{bound}")
        await stop.wait()
        await health_servicer.enter_graceful_shutdown()
        if front is not None:
            front.close()  # no new connections; open ones carry the drain
        await server.stop(server_config.shutdown_grace_seconds)
    finally:
        if front is not None:
            await front.aclose()
