"""StreamExec over plain HTTP: a session created by POST, output read as SSE, input POSTed.

``POST /v1/namespaces/{ns}/exec/{target}`` (target ``service/<n>``, ``svc/<n>``, ``instance/<id>``,
``inst/<id>`` or a bare service name; body = ExecInitRequest JSON) starts a session and answers
``201 {"sessionId": ...}``. ``GET .../exec/sessions/{id}/output`` streams its output as SSE (events
``status``, ``stdout``, ``stderr``, ``exit``; data = ExecResponse JSON, bytes in base64).
``POST .../exec/sessions/{id}/input`` takes one ExecRequest JSON (``stdin`` base64, ``resize``,
``signal``) or ``{"close": true}`` for end of input. Only the principal that created a session can
read or feed it; idle sessions end (``exec_sessions``). The JSON forms of the exec messages are
parsed here for the WebSocket form too.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

import orjson
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from rune.api import exec_pb2
from rune.gateway import codec, fromjson
from rune.gateway.bidi import Feed, context
from rune.gateway.exec_sessions import ErrorFrame, ExecSession, Sessions, pump
from rune.gateway.http import error_response, json_body, no_query, sse_event, sse_response, status_dict
from runed.auth.authn import Authenticator
from runed.core import errors
from runed.pipeline.context import CallContext
from runed.pipeline.stages import Pipeline

EXEC_METHOD = "/rune.api.ExecService/StreamExec"
# How long a new exec session may take to be admitted and spawned before POST gives up.
START_TIMEOUT_SECONDS = 15.0
KEEPALIVE_SECONDS = 15.0


def init_from(body: bytes, target: str, ns: str) -> exec_pb2.ExecInitRequest:
    """The ExecInitRequest of a JSON body, with the target and namespace of the URL."""
    init = exec_pb2.ExecInitRequest()
    if body.strip():
        # Through the codec: bytes that are not UTF-8 JSON are a 400 naming the body, not a crash.
        fromjson.parse(codec.parse_body(body), init)
    kind, sep, name = target.partition("/")
    if not sep:
        kind, name = "service", kind
    if kind in ("service", "svc"):
        init.service_name = name
    elif kind in ("instance", "inst"):
        init.instance_id = name
    else:
        raise errors.invalid(("target", f"invalid exec target {target!r}: use service/<name> or instance/<id>"))
    init.namespace = ns
    return init


def as_body_paths(err: errors.RuneError) -> errors.RuneError:
    """``err`` with its fields named as the exec body spells them: the body is the init message
    itself, which StreamExec's checks name under ``init.`` (as the decoder of the body does not)."""
    if not isinstance(err, errors.InvalidArgument) or not any(v.field.startswith("init.") for v in err.violations):
        return err
    return errors.invalid(*((v.field.removeprefix("init."), v.description) for v in err.violations))


def input_from(body: bytes) -> exec_pb2.ExecRequest:
    """One ExecRequest (stdin, resize or signal) of a JSON body; ``{"close": true}`` is end of input."""
    data = codec.parse_body(body)
    if data.pop("close", False) is True:
        return exec_pb2.ExecRequest(stdin=b"")
    req = fromjson.parse(data, exec_pb2.ExecRequest())
    if req.WhichOneof("request") in (None, "init"):
        raise errors.invalid(("body", "expected one of stdin, resize, signal or close"))
    return req


def _owner(ctx: CallContext) -> str:
    return ctx.principal.key


class ExecSessionRoutes:
    """The session endpoints: StreamExec through ``pipeline``, sessions kept in ``sessions``."""

    def __init__(self, pipeline: Pipeline, authenticator: Authenticator, sessions: Sessions) -> None:
        self.pipeline = pipeline
        self.authenticator = authenticator
        self.sessions = sessions

    async def create(self, request: Request) -> Response:
        ctx = context(request, EXEC_METHOD)
        try:
            no_query(request)
            init = init_from(await json_body(request), request.path_params["target"], request.path_params["ns"])
        except errors.RuneError as err:
            return error_response(err, ctx.request_id)
        feed = Feed(exec_pb2.ExecRequest(init=init))
        source = self.pipeline.bidi(ctx, feed)
        first: asyncio.Task[Message] = asyncio.ensure_future(anext(source))  # type: ignore[arg-type]
        done, _ = await asyncio.wait({first}, timeout=START_TIMEOUT_SECONDS)
        if not done:
            first.cancel()
            with contextlib.suppress(BaseException):
                await source.aclose()  # type: ignore[attr-defined]
            return error_response(errors.DeadlineExceeded("the exec session did not start in time"), ctx.request_id)
        exc = first.exception()
        if isinstance(exc, errors.RuneError):
            return error_response(as_body_paths(exc), ctx.request_id)
        session = ExecSession(id=secrets.token_urlsafe(16), owner=_owner(ctx), feed=feed)
        session.pump = asyncio.ensure_future(pump(session, first, source, ctx.request_id))
        self.sessions.add(session)
        return JSONResponse({"sessionId": session.id}, status_code=201, headers={"x-request-id": ctx.request_id})

    async def _session_for(self, request: Request) -> tuple[ExecSession, CallContext]:
        """The caller's session; authentication is the pipeline's own stage, and only the owner matches."""
        ctx = context(request, EXEC_METHOD)
        try:
            ctx.principal = await self.authenticator.authenticate(ctx.metadata, ctx.tls_client_cn)
        except errors.Unauthenticated as err:
            # Not through a pipeline entry point: its failed-authentication audit is applied here.
            self.pipeline.auth_failures.record(ctx, err)
            raise
        no_query(request)
        s = self.sessions.by_id.get(request.path_params["id"])
        if s is None or s.owner != _owner(ctx):
            missing = errors.not_found("exec session", request.path_params["id"], request.path_params["ns"])
            # Sessions live in the process that created them: behind a load balancer, say so.
            raise errors.NotFound(
                f"{missing.message} on this host (exec sessions are per host: send a session's output and "
                "input requests to the host that created it)",
                reason=missing.reason,
                metadata=missing.metadata,
            )
        return s, ctx

    async def _output_frames(self, s: ExecSession) -> AsyncIterator[bytes]:
        try:
            while True:
                msg = await s.output.get()
                if msg is None:
                    self.sessions.end(s)
                    return
                if isinstance(msg, ErrorFrame):
                    yield sse_event(orjson.dumps(status_dict(msg.err, msg.request_id)), event="error")
                    continue
                assert isinstance(msg, exec_pb2.ExecResponse)
                yield sse_event(codec.dumps(msg), event=msg.WhichOneof("response") or "message")
        finally:
            s.attached = False
            s.idle_since = time.monotonic()

    async def output(self, request: Request) -> Response:
        try:
            s, ctx = await self._session_for(request)
        except errors.RuneError as err:
            return error_response(err, request.headers.get("x-request-id", ""))
        if s.attached:
            return error_response(errors.Conflict("the session's output is already being read"), ctx.request_id)
        s.attached = True
        return sse_response(self._output_frames(s), ctx.request_id, KEEPALIVE_SECONDS)

    async def input(self, request: Request) -> Response:
        try:
            s, ctx = await self._session_for(request)
            msg = input_from(await json_body(request))
        except errors.RuneError as err:
            return error_response(err, request.headers.get("x-request-id", ""))
        s.feed.put(msg)
        return Response(status_code=204, headers={"x-request-id": ctx.request_id})


def routes(pipeline: Pipeline, authenticator: Authenticator, sessions: Sessions) -> list[BaseRoute]:
    """Mounted by the gateway app ahead of its generated ``/v1`` routes (session paths before targets)."""
    base = "/v1/namespaces/{ns}/exec"
    h = ExecSessionRoutes(pipeline, authenticator, sessions)
    return [
        Route(base + "/sessions/{id}/output", h.output, methods=["GET"]),
        Route(base + "/sessions/{id}/input", h.input, methods=["POST"]),
        Route(base + "/{target:path}", h.create, methods=["POST"]),
    ]
