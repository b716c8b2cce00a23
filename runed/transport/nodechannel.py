"""The node channel: a node's own gRPC endpoint, through which API hosts read its instances' logs and run exec.

It listens on ``node.address``:``node.port`` (over TLS with ``node.tls``) and serves two methods only,
LogService/StreamLogs and ExecService/StreamExec, with the API's own handlers over this node's
instances. Every call needs a node token minted by an API host of the cluster for this node
(:mod:`runed.auth.nodetoken`); anything else (no token, a user token, another node's, an expired
one) is UNAUTHENTICATED. Authorization ran on the API host; the node's exec audit names the caller
the token carries. Once listening, the node writes the port (and whether it serves TLS) into its
record, where API hosts look it up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_status import rpc_status

from runed.api import exec as exec_api
from runed.api import forward
from runed.api import logs as logs_api
from runed.auth import nodetoken, rbac
from runed.auth.principal import Principal
from runed.core import errors
from runed.core.config import Config, TLSConfig
from runed.core.errors import BindError
from runed.model.nodes import CHANNEL_PORT, CHANNEL_TLS, NODE, SCOPE, local_node_id
from runed.pipeline import defaults, methods
from runed.pipeline.context import CallContext, Deps
from runed.pipeline.stages import new_request_id
from runed.pipeline.status import status_proto
from runed.transport.certs import CertError, CertFiles
from runed.transport.grpc import peer_host

log = logging.getLogger("runed.nodechannel")

Handler = Callable[[AsyncIterator[Any], CallContext], AsyncIterator[Any]]
# The methods a node serves on its channel: (service, method) -> (handler, its first-message validators).
SERVED: dict[tuple[str, str], tuple[Handler, dict[str, Any]]] = {
    ("LogService", "StreamLogs"): (logs_api.StreamLogs, logs_api.VALIDATORS),
    ("ExecService", "StreamExec"): (exec_api.StreamExec, exec_api.VALIDATORS),
}


class _Refused(Exception):
    """A call that is not from the control plane."""


class Channel:
    """The node channel's handlers over this node's instances (``node`` is its id, the tokens' audience)."""

    def __init__(self, deps: Deps, node: str) -> None:
        self.deps = deps
        self.node = node

    def _context(self, method: methods.Method, context: grpc.aio.ServicerContext[Any, Any]) -> CallContext:
        md = {k.lower(): v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        ctx = CallContext(self.deps, method, forward.NODE_TRANSPORT, md, peer_host(context.peer() or ""))
        ctx.request_id = md.get("x-request-id", "")[:128] or new_request_id()
        remaining = context.time_remaining()
        if remaining is not None:
            ctx.deadline = time.monotonic() + remaining
        scheme, _, token = md.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise _Refused("no node token")
        try:
            claims = nodetoken.verify(self.deps.identity.key, self.node, token.strip())
        except nodetoken.TokenError as e:
            raise _Refused(str(e)) from None
        ctx.principal = Principal(subject=claims.subject, subject_type="user", auth_method="node")
        return ctx

    def handler(
        self, method: methods.Method, serve: Handler, validators: dict[str, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        validate = validators.get(method.name)

        async def bidi(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            peer = peer_host(context.peer() or "")
            try:
                ctx = self._context(method, context)
            except _Refused as e:
                log.warning("node channel %s refused from %s: %s", method.full_name, peer or "?", e)
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, f"node {self.node} serves the control plane only: {e}"
                )
                return
            # Until it ends by itself: a stream the API host cancels stays CANCELLED.
            code = "CANCELLED"
            try:
                first = await anext(requests)
                # The namespace defaulted as the API does (an API host sends it filled in already).
                defaults.apply(rbac.TABLE.get(method.full_name), first)
                violations = validate(first) if validate is not None else []
                if violations:
                    raise errors.invalid(*violations)

                async def chained() -> AsyncIterator[Any]:
                    yield first
                    async for req in requests:
                        yield req

                async for item in serve(chained(), ctx):
                    yield item
                code = "OK"
            except StopAsyncIteration:
                pass
            except errors.RuneError as err:
                code = err.code.name
                st = rpc_status.to_status(status_proto(err, ctx.request_id))
                await context.abort(st.code, st.details, st.trailing_metadata)
            finally:
                log.info(
                    "node channel %s for %s from %s request_id=%s: %s",
                    method.full_name,
                    ctx.principal.subject,
                    peer or "?",
                    ctx.request_id,
                    code,
                )

        return grpc.stream_stream_rpc_method_handler(
            bidi,
            request_deserializer=method.request_cls.FromString,
            response_serializer=method.response_cls.SerializeToString,
        )

    def generic_handlers(self) -> list[grpc.GenericRpcHandler[Any, Any]]:
        by_service: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
        for m in methods.all_methods():
            served = SERVED.get((m.service, m.name))
            if served is not None:
                by_service.setdefault(f"{methods.PACKAGE}.{m.service}", {})[m.name] = self.handler(m, *served)
        return [grpc.method_handlers_generic_handler(svc, h) for svc, h in by_service.items()]


def _publish(deps: Deps, node: str, port: int, tls: bool) -> None:
    def mutate(cur: dict[str, Any] | None) -> dict[str, Any]:
        data = dict(cur or {})
        data[CHANNEL_PORT] = port
        data[CHANNEL_TLS] = tls
        return data

    deps.store.update(NODE, SCOPE, node, mutate)


async def serve(config: Config, deps: Deps, stop: asyncio.Event) -> None:
    """Serve the node channel until ``stop``; BindError when its address cannot be bound."""
    node = local_node_id(config.node)
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(Channel(deps, node).generic_handlers())
    host = config.node.address
    bind = f"[{host}]:{config.node.port}" if ":" in host else f"{host}:{config.node.port}"
    tls = config.node.tls
    try:
        if tls.enabled:
            # A renewed certificate is served from the next handshake on (runed/transport/certs.py).
            pair = TLSConfig(enabled=True, cert_file=tls.cert_file, key_file=tls.key_file)
            port = server.add_secure_port(bind, CertFiles(pair, "node.tls").grpc_credentials(False))
        else:
            port = server.add_insecure_port(bind)
    except CertError as e:
        raise BindError(f"node channel: node.tls: {e}") from None
    except RuntimeError:
        port = 0
    if not port:
        also = " or node.tls.cert_file and key_file are not a certificate and its key" if tls.enabled else ""
        raise BindError(
            f"node channel: cannot listen on {bind} (node.address, node.port): in use or not permitted{also}"
        )
    await server.start()
    try:
        await deps.store.run(_publish, deps, node, port, tls.enabled)
        log.info("node %s: node channel on %s:%d%s", node, host, port, " (TLS)" if tls.enabled else "")
        await stop.wait()
    finally:
        await server.stop(config.server.shutdown_grace_seconds)
