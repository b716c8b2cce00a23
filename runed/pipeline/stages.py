"""The transport-neutral request pipeline every RPC goes through, on every transport.

Stages, outermost first: error mapping -> request id and logging -> defaults (namespace) ->
authentication -> authorization -> validation -> handler. Adapters (gRPC, REST) build a CallContext and call
:meth:`Pipeline.unary`, :meth:`Pipeline.server_stream` or :meth:`Pipeline.bidi`; whatever goes
wrong comes out as a :class:`runed.core.errors.RuneError` for the adapter to render.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from runed.auth import rbac
from runed.auth.authn import Authenticator
from runed.auth.authz import Authorizer
from runed.core import errors, validation
from runed.pipeline import audit, defaults
from runed.pipeline.authfail import AuthFailureLog
from runed.pipeline.context import CallContext, current_call
from runed.pipeline.encoded import Encoded
from runed.pipeline.methods import Method, all_methods
from runed.store import faults
from runed.store.base import AuditEntry

log = logging.getLogger("runed.pipeline")

Validator = Callable[[Any], list[errors.FieldViolation]]
UnaryHandler = Callable[[Any, CallContext], Awaitable[Message | Encoded[Any]]]
StreamHandler = Callable[[Any, CallContext], AsyncIterator[Message]]
# A handler of any call shape: ``async def`` for unary calls, an async generator for streams.
Handler = Callable[..., Any]
# Called after every call with (ctx, code name, elapsed ms): the metrics hook of a role process.
CallHook = Callable[[CallContext, str, float], None]


@dataclass(frozen=True)
class Route:
    """A method with everything the pipeline needs to serve it."""

    method: Method
    access: rbac.Access | None
    handler: Callable[..., Any] | None
    validator: Validator | None


def _unimplemented(method: Method) -> errors.Unimplemented:
    return errors.Unimplemented(f"{method.full_name} is not implemented by this server")


def build_routes(handlers: Mapping[str, Handler], validators: Mapping[str, Validator | None]) -> dict[str, Route]:
    """Join every method of the descriptors with its handler, validator and RBAC entry.

    Args:
        handlers: gRPC path -> handler (the API layer's table, handed over by the composition root).
        validators: gRPC path -> validator, or None for "nothing to validate".

    A method missing from ``handlers`` is served as UNIMPLEMENTED; one missing from the RBAC
    table is never served (deny by default).
    """
    return {
        m.full_name: Route(m, rbac.TABLE.get(m.full_name), handlers.get(m.full_name), validators.get(m.full_name))
        for m in all_methods()
    }


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class Pipeline:
    """Runs one call through the stages. Shared by all adapters of a role process."""

    def __init__(
        self,
        routes: dict[str, Route],
        authenticator: Authenticator,
        authorizer: Authorizer,
        audit_write: Callable[[AuditEntry], None],
        on_call_finished: CallHook | None = None,
    ) -> None:
        """Args:
        routes: every method with its handler, validator and RBAC entry (:func:`build_routes`).
        authenticator: the authentication stage.
        authorizer: the authorization stage.
        audit_write: where audit records go (the store's ``audit``).
        on_call_finished: called after every call (metrics), if set.

        Store work of the stages (credential and policy look-ups on a cache miss, audit records)
        goes through the authenticator's store's ``run``: off the event loop where the store waits
        on the network (:mod:`runed.store.offload`).
        """
        self.routes = routes
        self.authenticator = authenticator
        self.authorizer = authorizer
        self.audit_write = audit_write
        self._store_run = authenticator.store.run
        # Audit writes in flight; the call that started one waits for it before it answers.
        self._audit_tasks: set[asyncio.Task[None]] = set()
        # Failed authentications are audited too, aggregated past a budget per minute (see authfail).
        self.auth_failures = AuthFailureLog(self._audit_soon)
        self.on_call_finished = on_call_finished

    def route(self, full_name: str) -> Route:
        r = self.routes.get(full_name)
        if r is None:
            raise errors.Unimplemented(f"unknown method {full_name}")
        return r

    # -- stages ---------------------------------------------------------------------------------
    async def _admit(self, ctx: CallContext, route: Route, request: Message) -> None:
        """Authentication, authorization, validation: the same for every transport."""
        access = route.access
        if access is None:
            # Deny by default: a method without a table entry is never served.
            raise errors.PermissionDenied(f"{route.method.full_name} has no authorization entry")
        # Normalise and default once (the namespace): authorization, validation and the handler read final values.
        defaults.apply(access, request)
        if access is not rbac.PUBLIC:
            ctx.principal = await self.authenticator.authenticate(ctx.metadata, ctx.tls_client_cn, ctx.set_quota)
            if self.authorizer.cached(ctx.principal):
                ctx.namespace = self.authorizer.authorize(ctx.principal, access, request)
            else:
                ctx.namespace = await self._store_run(self.authorizer.authorize, ctx.principal, access, request)
        if route.validator is not None:
            violations = route.validator(request)
            if violations:
                raise errors.invalid(*validation.bounded(violations))
        if ctx.on_admitted is not None:
            ctx.on_admitted()

    def _begin(self, ctx: CallContext) -> None:
        if not ctx.request_id:
            supplied = ctx.metadata.get("x-request-id", "")
            ctx.request_id = supplied[:128] if supplied else new_request_id()
        current_call.set(ctx)

    def _map_error(self, ctx: CallContext, exc: BaseException) -> errors.RuneError:
        """Outermost stage: domain errors pass through, anything else becomes a generic INTERNAL."""
        if isinstance(exc, errors.RuneError):
            return exc
        if faults.is_unavailable(exc):
            # The database is down or restarting: UNAVAILABLE with retry information, never INTERNAL.
            return faults.unavailable(exc)
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
            audit.record(self._audit_soon, ctx, route.access, request, code, err.message if err is not None else "")
        if isinstance(err, errors.Unauthenticated):
            self.auth_failures.record(ctx, err)
        hook = self.on_call_finished
        if hook is not None:
            hook(ctx, code, elapsed_ms)

    def _audit_soon(self, entry: AuditEntry) -> None:
        """Start writing ``entry`` off the event loop; :meth:`_audited` waits for it."""
        task = asyncio.get_running_loop().create_task(self._write_audit(entry))
        self._audit_tasks.add(task)
        task.add_done_callback(self._audit_tasks.discard)

    async def _write_audit(self, entry: AuditEntry) -> None:
        try:
            await self._store_run(self.audit_write, entry)
        except errors.StorageFull as e:
            # Expected while the disk is full (reads of secrets are audited too): one line, no traceback.
            log.warning("cannot write audit record for %s (request %s): %s", entry.method, entry.request_id, e)
        except Exception:
            # Losing an audit record must be visible, but must not turn a done change into an error.
            log.exception("cannot write audit record for %s (request %s)", entry.method, entry.request_id)

    async def _audited(self, before: set[asyncio.Task[None]]) -> None:
        """Wait for the audit writes started since ``before``: a call answers after its record is stored."""
        if self._audit_tasks:
            started = self._audit_tasks - before
            if started:
                await asyncio.gather(*started)

    # -- entry points ---------------------------------------------------------------------------
    async def unary(self, ctx: CallContext, request: Message) -> Message:
        """The response as a message (one a handler returned encoded is decoded)."""
        response = await self._unary(ctx, request)
        return response.message() if isinstance(response, Encoded) else response

    async def unary_wire(self, ctx: CallContext, request: Message) -> Message | bytes:
        """The response as a message, or as its encoding when the handler returned that (for gRPC)."""
        response = await self._unary(ctx, request)
        return response.data if isinstance(response, Encoded) else response

    async def _unary(self, ctx: CallContext, request: Message) -> Message | Encoded[Message]:
        self._begin(ctx)
        route = self.route(ctx.method.full_name)
        try:
            await self._admit(ctx, route, request)
            if route.handler is None:
                raise _unimplemented(route.method)
            response: Message | Encoded[Message] = await route.handler(request, ctx)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            if _is_cancel(exc):
                self._finish(ctx, CANCELLED, route, request)
                raise
            err = self._map_error(ctx, exc)
            before = set(self._audit_tasks)
            self._finish(ctx, err, route, request)
            await self._audited(before)
            raise err from None
        before = set(self._audit_tasks)
        self._finish(ctx, None, route, request)
        await self._audited(before)
        return response

    def server_stream(self, ctx: CallContext, request: Message) -> AsyncIterator[Message]:
        async def opening() -> tuple[Message, Any]:
            return request, request

        return self._stream(ctx, opening)

    def bidi(self, ctx: CallContext, requests: AsyncIterator[Message]) -> AsyncIterator[Message]:
        """Bidirectional streams are admitted on their first message (it names the target)."""

        async def opening() -> tuple[Message, Any]:
            try:
                first = await anext(requests)
            except StopAsyncIteration:
                raise errors.InvalidArgument("the stream ended before its first message") from None
            return first, _prepend(first, requests)

        return self._stream(ctx, opening)

    async def _stream(
        self, ctx: CallContext, opening: Callable[[], Awaitable[tuple[Message, Any]]]
    ) -> AsyncIterator[Message]:
        """A streaming call: ``opening`` gives the message it is admitted on and the handler's input."""
        self._begin(ctx)
        route = self.route(ctx.method.full_name)
        err: errors.RuneError | None = None
        target: Message | None = None
        try:
            target, given = await opening()
            await self._admit(ctx, route, target)
            if route.handler is None:
                raise _unimplemented(route.method)
            async for item in route.handler(given, ctx):
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
            before = set(self._audit_tasks)
            self._finish(ctx, err, route, target)
            await self._audited(before)


CANCELLED = errors.Cancelled("cancelled by the client")


def _is_cancel(exc: BaseException) -> bool:
    return isinstance(exc, asyncio.CancelledError)


async def _prepend(first: Message, rest: AsyncIterator[Message]) -> AsyncIterator[Message]:
    yield first
    async for item in rest:
        yield item
