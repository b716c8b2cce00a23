"""The transport-neutral request pipeline every RPC goes through, on every transport.

Stages, outermost first: error mapping -> request id and logging -> authentication ->
authorization -> validation -> handler. Adapters (gRPC, REST) build a CallContext and call
:meth:`Pipeline.unary`, :meth:`Pipeline.server_stream` or :meth:`Pipeline.bidi`; whatever goes
wrong comes out as a :class:`runed.core.errors.RuneError` for the adapter to render.
"""

from __future__ import annotations

import importlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from runed.auth import rbac
from runed.core import errors, validation
from runed.pipeline import audit
from runed.pipeline.context import CallContext, current_call
from runed.pipeline.methods import SERVICE_MODULES, Method, all_methods

log = logging.getLogger("runed.pipeline")

Validator = Callable[[Any], list[errors.FieldViolation]]
UnaryHandler = Callable[[Any, CallContext], Awaitable[Message]]
StreamHandler = Callable[[Any, CallContext], AsyncIterator[Message]]


@dataclass(frozen=True)
class Route:
    """A method with everything the pipeline needs to serve it."""

    method: Method
    access: rbac.Access | None
    handler: Callable[..., Any] | None
    validator: Validator | None


def _unimplemented(method: Method) -> errors.Unimplemented:
    return errors.Unimplemented(f"{method.full_name} is not implemented by this server")


def load_routes() -> dict[str, Route]:
    """Bind every method to its handler (``runed.api.<module>.<Method>``), validator and RBAC entry."""
    routes: dict[str, Route] = {}
    modules: dict[str, Any] = {}
    for m in all_methods():
        modname = SERVICE_MODULES[m.service]
        if modname not in modules:
            try:
                modules[modname] = importlib.import_module(f"runed.api.{modname}")
            except ModuleNotFoundError as e:
                if e.name != f"runed.api.{modname}":
                    raise
                modules[modname] = None
        mod = modules[modname]
        handler = getattr(mod, m.name, None) if mod is not None else None
        validators: dict[str, Validator | None] = getattr(mod, "VALIDATORS", {}) if mod is not None else {}
        routes[m.full_name] = Route(m, rbac.TABLE.get(m.full_name), handler, validators.get(m.name))
    return routes


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class Pipeline:
    """Runs one call through the stages. Shared by all adapters of a role process."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes

    def route(self, full_name: str) -> Route:
        r = self.routes.get(full_name)
        if r is None:
            raise errors.Unimplemented(f"unknown method {full_name}")
        return r

    # -- stages ---------------------------------------------------------------------------------
    async def _admit(self, ctx: CallContext, route: Route, request: Message) -> None:
        """Authentication, authorization, validation: the same for every transport."""
        app = ctx.deps
        access = route.access
        if access is None:
            # Deny by default: a method without a table entry is never served.
            raise errors.PermissionDenied(f"{route.method.full_name} has no authorization entry")
        if access is not rbac.PUBLIC:
            ctx.principal = await app.authenticator.authenticate(ctx)
            await app.authorizer.authorize(ctx, access, request)
        if route.validator is not None:
            violations = route.validator(request)
            if violations:
                raise errors.invalid(*validation.bounded(violations))

    def _begin(self, ctx: CallContext) -> None:
        if not ctx.request_id:
            supplied = ctx.metadata.get("x-request-id", "")
            ctx.request_id = supplied[:128] if supplied else new_request_id()
        current_call.set(ctx)

    def _map_error(self, ctx: CallContext, exc: BaseException) -> errors.RuneError:
        """Outermost stage: domain errors pass through, anything else becomes a generic INTERNAL."""
        if isinstance(exc, errors.RuneError):
            return exc
        log.error(
            "internal error in %s (request %s)",
            ctx.method.full_name,
            ctx.request_id,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        return errors.Internal(f"internal error (request id {ctx.request_id})")

    def _finish(
        self, ctx: CallContext, err: errors.RuneError | None, route: Route | None = None, request: Message | None = None
    ) -> None:
        elapsed_ms = (time.monotonic() - ctx.started) * 1000
        code = "OK" if err is None else err.code.name
        level = logging.DEBUG if err is None else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "%s %s %s %.1fms subject=%s peer=%s request_id=%s%s",
                ctx.transport,
                ctx.method.full_name,
                code,
                elapsed_ms,
                ctx.principal.subject,
                ctx.peer,
                ctx.request_id,
                f" error={err.message!r}" if err is not None else "",
            )
        if route is not None:
            # Mutations and secret reads leave an audit record, whatever their outcome.
            audit.record(ctx, route.access, request, code, err.message if err is not None else "")
        hook = ctx.deps.on_call_finished
        if hook is not None:
            hook(ctx, code, elapsed_ms)

    # -- entry points ---------------------------------------------------------------------------
    async def unary(self, ctx: CallContext, request: Message) -> Message:
        self._begin(ctx)
        route = self.route(ctx.method.full_name)
        try:
            await self._admit(ctx, route, request)
            if route.handler is None:
                raise _unimplemented(route.method)
            response: Message = await route.handler(request, ctx)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            if _is_cancel(exc):
                self._finish(ctx, CANCELLED, route, request)
                raise
            err = self._map_error(ctx, exc)
            self._finish(ctx, err, route, request)
            raise err from None
        self._finish(ctx, None, route, request)
        return response

    async def server_stream(self, ctx: CallContext, request: Message) -> AsyncIterator[Message]:
        self._begin(ctx)
        route = self.route(ctx.method.full_name)
        err: errors.RuneError | None = None
        try:
            await self._admit(ctx, route, request)
            if route.handler is None:
                raise _unimplemented(route.method)
            async for item in route.handler(request, ctx):
                yield item
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            if isinstance(exc, GeneratorExit) or _is_cancel(exc):
                # The client went away: logged, counted and audited as CANCELLED, not OK.
                err = CANCELLED
                raise
            err = self._map_error(ctx, exc)
            raise err from None
        finally:
            self._finish(ctx, err, route, request)

    async def bidi(self, ctx: CallContext, requests: AsyncIterator[Message]) -> AsyncIterator[Message]:
        """Bidirectional streams are admitted on their first message (it names the target)."""
        self._begin(ctx)
        route = self.route(ctx.method.full_name)
        err: errors.RuneError | None = None
        first: Message | None = None
        try:
            try:
                first = await anext(requests)
            except StopAsyncIteration:
                raise errors.InvalidArgument("the stream ended before its first message") from None
            await self._admit(ctx, route, first)
            if route.handler is None:
                raise _unimplemented(route.method)
            async for item in route.handler(_prepend(first, requests), ctx):
                yield item
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            if isinstance(exc, GeneratorExit) or _is_cancel(exc):
                # The client went away: logged, counted and audited as CANCELLED, not OK.
                err = CANCELLED
                raise
            err = self._map_error(ctx, exc)
            raise err from None
        finally:
            self._finish(ctx, err, route, first)


CANCELLED = errors.Cancelled("cancelled by the client")


def _is_cancel(exc: BaseException) -> bool:
    import asyncio

    return isinstance(exc, asyncio.CancelledError)


async def _prepend(first: Message, rest: AsyncIterator[Message]) -> AsyncIterator[Message]:
    yield first
    async for item in rest:
        yield item
