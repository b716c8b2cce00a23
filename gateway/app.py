"""The Starlette application: generated resource routes, RPC-style routes, SSE, and operations endpoints."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.message import Message
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from rune.gateway import codec, connect, exec_http, exec_sessions, exec_ws, logs_http, middleware, ops, routes, sse, ui
from rune.gateway.backend import Backend
from rune.gateway.http import (
    BodyTimeout,
    ClientDisconnected,
    PayloadTooLarge,
    UnsupportedMediaType,
    call_context,
    check_json_type,
    connect_error_response,
    error_response,
    log_disconnect,
    read_body,
    request_id_of,
)
from runed.core import errors
from runed.pipeline.methods import Method
from runed.transport import metrics

log = logging.getLogger("runed.gateway")

ALL_VERBS = ["GET", "POST", "PUT", "DELETE", "PATCH"]


class MethodNotAllowed(errors.Unimplemented, http=405):
    """The path exists with other verbs (HTTP 405)."""

    reason = "METHOD_NOT_ALLOWED"

    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed


class NoSuchProcedure(errors.Unimplemented, http=404, connect_http=404):
    """An RPC-style path that names no method: UNIMPLEMENTED as over gRPC, HTTP 404 on both route kinds
    (what the Connect protocol answers for an unknown procedure)."""

    reason = "METHOD_NOT_FOUND"


class JSONBytes(Response):
    """A 200 JSON response with its headers built directly (Starlette's generic header handling
    showed up in the hot-path profile)."""

    def __init__(self, body: bytes, request_id: str) -> None:
        self.status_code = 200
        self.body = body
        self.background = None
        self.raw_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
        ]


class Gateway:
    """Routes REST requests into the shared pipeline, in-process."""

    def __init__(self, backend: Backend, keepalive: float = 15.0) -> None:
        self.backend = backend
        self.pipeline = backend.pipeline
        self.keepalive = keepalive
        self.max_body = backend.config.server.max_body_bytes
        self.body_timeout = backend.config.server.body_timeout_seconds
        self.connect = connect.Connect(backend, self._body)

    async def _body(self, request: Request) -> bytes:
        return await read_body(request, self.max_body, self.body_timeout)

    def _finish(self, method: str, code: str, started: float) -> None:
        metrics.record("rest", method, code, time.monotonic() - started)

    async def _call(self, request: Request, method: Method, msg: Message) -> Response:
        ctx = call_context(self.backend, method, request)
        if method.kind in ("server_stream", "bidi"):
            sse.apply_last_event_id(request, msg)
        if method.kind == "server_stream":
            return await sse.stream_response(ctx, self.pipeline.server_stream(ctx, msg), self.keepalive)
        if method.kind == "bidi":
            # One request message in, the responses out as SSE (enough for non-interactive use; the
            # interactive forms live under /v1/namespaces/{ns}/logs and /exec).
            return await sse.stream_response(ctx, self.pipeline.bidi(ctx, _one(msg)), self.keepalive)
        response = await self.pipeline.unary(ctx, msg)
        return JSONBytes(codec.dumps(response), ctx.request_id)

    async def resource(self, request: Request, found: tuple[routes.HttpRule, dict[str, str]] | None = None) -> Response:
        """``/v1/...`` routes from the google.api.http options."""
        started = time.monotonic()
        rid = request_id_of(request)
        verb = "GET" if request.method == "HEAD" else request.method
        path = request.scope["path"]
        if found is None:
            found = routes.resolve(verb, path)
        label = "unmatched"
        try:
            if found is None:
                allowed = routes.path_allows(path)
                if allowed:
                    raise MethodNotAllowed(
                        f"{request.method} is not allowed on {path} (use {', '.join(allowed)})", allowed
                    )
                raise errors.NotFound(_no_route(request.method, verb, path))
            rule, path_vars = found
            label = rule.method.full_name
            body: Any = None
            if rule.body:
                check_json_type(request)
                body = codec.parse_body(await self._body(request))
            msg = codec.build_request(
                rule.method.request_cls,
                body=body,
                body_field=rule.body,
                path=path_vars,
                query=request.query_params.multi_items() if request.scope["query_string"] else (),
                query_allowed=rule.body != "*",
            )
            return await self._call(request, rule.method, msg)
        except errors.RuneError as err:
            if not isinstance(err, _GATEWAY_ERRORS) and found is not None:
                # The pipeline counted it already.
                return self._error(err, rid)
            self._finish(label, err.code.name, started)
            return self._error(err, rid)

    @staticmethod
    def _error(err: errors.RuneError, rid: str) -> Response:
        resp = error_response(err, rid)
        if isinstance(err, MethodNotAllowed):
            resp.headers["allow"] = ", ".join(err.allowed)
        return resp

    async def rpc(self, request: Request) -> Response:
        """``/rune.api.<Service>/<Method>``: the Connect protocol (rune.gateway.connect), or plain JSON in
        and out (server streams as Server-Sent Events) for a POST that is not a Connect call."""
        started = time.monotonic()
        rid = request_id_of(request)
        is_connect = connect.is_connect(request)
        render = connect_error_response if is_connect else error_response
        full_name = request.url.path
        method = routes.rpc_methods().get(full_name)
        try:
            if method is None:
                raise NoSuchProcedure(f"no such method {full_name.lstrip('/')}")
            if is_connect:
                return await self.connect(request, method)
            check_json_type(request)
            raw = await self._body(request)
            msg = codec.build_request(method.request_cls, body=codec.parse_body(raw), body_field="*")
            return await self._call(request, method, msg)
        except errors.RuneError as err:
            if method is None or isinstance(err, _GATEWAY_ERRORS):
                self._finish(method.full_name if method else "unmatched", err.code.name, started)
            return render(err, rid)


async def _one(msg: Message) -> AsyncIterator[Message]:
    """The request side of a bidi call made over plain HTTP: one message, then end of input."""
    yield msg


# Errors the gateway raises before the pipeline sees the call (so the pipeline did not count them).
_GATEWAY_ERRORS = (
    codec.BadRequest,
    PayloadTooLarge,
    BodyTimeout,
    UnsupportedMediaType,
    ClientDisconnected,
    MethodNotAllowed,
)


class FastPath:
    """ASGI entry: generated unary/stream routes go straight to the gateway; everything else
    (operations, logs/exec, RPC-style, errors) through Starlette's router. Routing a hot GET
    through a dozen Starlette routes and two middlewares cost more than the handler."""

    def __init__(self, gw: Gateway, fallback: Starlette) -> None:
        self.gw = gw
        self.fallback = fallback

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            method = scope["method"]
            found = routes.resolve("GET" if method == "HEAD" else method, scope["path"])
            if found is not None and found[0].method.kind != "bidi":
                request = Request(scope, receive)
                try:
                    response = await self.gw.resource(request, found)
                except Exception:
                    rid = request_id_of(request)
                    log.exception("gateway error on %s %s (request %s)", method, scope["path"], rid)
                    response = error_response(errors.Internal(f"internal error (request id {rid})"), rid)
                await response(scope, receive, send)
                return
        try:
            await self.fallback(scope, receive, send)
        except ClientDisconnect:
            # A route that read the body itself; Starlette re-raises after its handler answered.
            log_disconnect(Request(scope))


def build(backend: Backend) -> ASGIApp:
    """The ASGI app for one rest role process (behind the layers of rune.gateway.middleware)."""
    pipeline = backend.pipeline
    gw = Gateway(backend, backend.config.server.sse_keepalive_seconds)
    operations = ops.Operations(backend.config, backend.store, pipeline)
    route_list: list[BaseRoute] = [
        *operations.routes(),
        *logs_http.routes(pipeline),
        # REST exec sessions live in this process, in a registry of this app (not a module global).
        *exec_http.routes(pipeline, pipeline.authenticator, exec_sessions.Sessions()),
        *exec_ws.routes(pipeline),
        Route("/v1/namespaces/{ns}/exec/{target:path}/ws", _upgrade_required, methods=["GET"]),
        Route("/rune.api.{service}/{method}", gw.rpc, methods=["GET", "POST"]),
        Route("/v1/{rest:path}", gw.resource, methods=[*ALL_VERBS, "HEAD"]),
        Route("/v1:{verb}", gw.resource, methods=ALL_VERBS),
        # The web dashboard: static files, a client of the routes above like any other.
        *ui.routes(),
    ]
    starlette = Starlette(routes=route_list)
    # Read by rune.gateway.bidi.context: the call contexts of the logs and exec routes.
    starlette.state.runed = backend
    starlette.add_exception_handler(404, _not_found)  # type: ignore[arg-type]
    starlette.add_exception_handler(405, _method_not_allowed)  # type: ignore[arg-type]
    starlette.add_exception_handler(Exception, _internal)
    return middleware.wrap(FastPath(gw, starlette), backend.config)


async def _upgrade_required(request: Request) -> Response:
    """A plain GET on the exec WebSocket path: 426, naming the upgrade it needs."""
    err = errors.FailedPrecondition("this path speaks WebSocket only: send the GET with Upgrade: websocket")
    resp = error_response(err, request_id_of(request))
    resp.status_code = 426
    resp.headers["upgrade"] = "websocket"
    return resp


async def _not_found(request: Request, exc: Exception) -> Response:
    verb = "GET" if request.method == "HEAD" else request.method
    return error_response(errors.NotFound(_no_route(request.method, verb, request.url.path)), request_id_of(request))


def _no_route(method: str, verb: str, path: str) -> str:
    """The 404 of a ``method`` request on a path no route matches, naming the routes of its verb
    (GET for a HEAD) that share its words."""
    close = routes.nearest(verb, path)
    hint = (
        f" (routes of {verb} like it: {', '.join(close)}; all in /openapi.json)"
        if close
        else " (routes: /openapi.json)"
    )
    return f"no route for {method} {path}{hint}"


async def _internal(request: Request, exc: Exception) -> Response:
    # Handlers' errors are mapped by the pipeline; this only catches a fault in the gateway itself.
    rid = request_id_of(request)
    if isinstance(exc, ClientDisconnect):
        # Not a fault: FastPath logs it once, without a traceback (Starlette re-raises it there).
        return error_response(ClientDisconnected("the client disconnected mid-request"), rid)
    log.error("gateway error on %s %s (request %s)", request.method, request.url.path, rid, exc_info=exc)
    return error_response(errors.Internal(f"internal error (request id {rid})"), rid)


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    path = request.url.path
    method = routes.rpc_methods().get(path)
    allowed = connect.allowed_verbs(method) if method is not None else routes.path_allows(path)
    err = MethodNotAllowed(f"{request.method} is not allowed on {path}", allowed)
    resp = error_response(err, request_id_of(request))
    if allowed:
        resp.headers["allow"] = ", ".join(allowed)
    return resp
