"""Domain errors and the one table that maps them to gRPC codes and HTTP statuses."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import grpc

# The google.rpc.ErrorInfo domain of every reason below.
DOMAIN = "rune.api"

# gRPC code -> HTTP status on the REST resource routes (and the RPC-style routes outside Connect).
# The only place this mapping lives (REST renders with it, the CLI uses the gRPC code for its exit status).
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}

# gRPC code -> HTTP status on the Connect routes: the Connect protocol's own table
# (connectrpc.com/docs/protocol#error-codes), which differs from ours for failed_precondition (400,
# not 412) and has no HTTP-only statuses (413, 405): Connect clients read the code from the body.
CONNECT_HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def connect_code(code: grpc.StatusCode) -> str:
    """The Connect protocol's name of a code: the gRPC name in lower case, CANCELLED spelled ``canceled``."""
    name = code.name.lower()
    return "canceled" if name == "cancelled" else name


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: its path in the request (e.g. ``service.ports[0].port``) and why."""

    field: str
    description: str


class RuneError(Exception):
    """Base domain error. Handlers raise these; only the pipeline turns them into a status.

    Besides its code and message an error has a ``reason``: a stable UPPER_SNAKE name of its cause
    that clients may branch on (the message is for people and may change), sent as
    ``google.rpc.ErrorInfo`` (domain :data:`DOMAIN`) with ``metadata`` naming what it is about
    (kind, name, namespace, field, ...). Each error class has a default reason; the constructors
    below (:func:`not_found`, :func:`invalid`, ...) refine it. The README lists them all.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    reason: str = "UNKNOWN"
    # An HTTP-only status (413, 415, 405, ...) that replaces the tables' one on the REST / Connect routes.
    _http: ClassVar[int | None] = None
    _connect_http: ClassVar[int | None] = None

    def __init_subclass__(
        cls,
        code: grpc.StatusCode | None = None,
        http: int | None = None,
        connect_http: int | None = None,
        **kwargs: object,
    ) -> None:
        """``class NotFound(RuneError, code=NOT_FOUND)``: sets the code, and the default reason to its name;
        ``http=413`` (REST routes) and ``connect_http=415`` (Connect routes) set an HTTP-only status."""
        super().__init_subclass__(**kwargs)
        if code is not None:
            cls.code = code
            if "reason" not in cls.__dict__:
                cls.reason = code.name
        if http is not None:
            cls._http = http
        if connect_http is not None:
            cls._connect_http = connect_http

    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        retry_after: float | None = None,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.violations = violations or []
        self.retry_after = retry_after
        if reason:
            self.reason = reason
        self.metadata: dict[str, str] = dict(metadata or {})

    @property
    def http_status(self) -> int:
        """The status on the REST routes (a subclass's ``http=`` for HTTP-only cases such as 413)."""
        return self._http or HTTP_STATUS.get(self.code, 500)

    @property
    def connect_status(self) -> int:
        """The status on the Connect routes: the Connect protocol's table unless the subclass set ``connect_http=``."""
        return self._connect_http or CONNECT_HTTP_STATUS.get(self.code, 500)


class InvalidArgument(RuneError, code=grpc.StatusCode.INVALID_ARGUMENT):
    """Bad input: carries every field violation at once (reason INVALID_FIELD when it names fields)."""

    def __init__(
        self,
        message: str,
        violations: list[FieldViolation] | None = None,
        retry_after: float | None = None,
        *,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if violations and not reason:
            reason = "INVALID_FIELD"
            metadata = {"fields": ",".join(dict.fromkeys(v.field for v in violations)), **(metadata or {})}
        super().__init__(message, violations, retry_after, reason=reason, metadata=metadata)


class Unauthenticated(RuneError, code=grpc.StatusCode.UNAUTHENTICATED):
    """Missing or bad credentials; never says which tokens exist."""


class PermissionDenied(RuneError, code=grpc.StatusCode.PERMISSION_DENIED):
    """The caller is known but lacks ``resource:verb@namespace``."""


class NotFound(RuneError, code=grpc.StatusCode.NOT_FOUND):
    """The named object does not exist (reason ``<KIND>_NOT_FOUND`` from :func:`not_found`)."""


class AlreadyExists(RuneError, code=grpc.StatusCode.ALREADY_EXISTS):
    """An object with that name exists (reason ``<KIND>_ALREADY_EXISTS`` from :func:`already_exists`)."""


class Conflict(RuneError, code=grpc.StatusCode.ABORTED):
    """A concurrent change won (optimistic concurrency)."""

    reason = "CONFLICT"


class FailedPrecondition(RuneError, code=grpc.StatusCode.FAILED_PRECONDITION):
    """The system is not in a state where the request can run."""


class ResourceExhausted(RuneError, code=grpc.StatusCode.RESOURCE_EXHAUSTED):
    """A rate or size limit was hit; ``retry_after`` says when to come back."""


class StorageFull(ResourceExhausted):
    """The data dir's filesystem is full: writes are refused, reads still work, until space is freed."""

    reason = "STORAGE_FULL"


def storage_full(data_dir: object) -> StorageFull:
    """The one message for a write refused by a full disk (SQLITE_FULL, ENOSPC, EDQUOT), naming the data dir."""
    return StorageFull(
        f"data dir {data_dir} is out of space: writes are refused until space is freed there (reads still work)"
    )


class Unavailable(RuneError, code=grpc.StatusCode.UNAVAILABLE):
    """A dependency (store, engine, role) is not reachable right now."""


class StoreUnavailable(Unavailable):
    """The database cannot be reached (restarting, down, unreachable): nothing was acknowledged, retry."""

    reason = "STORE_UNAVAILABLE"


# How long a client is told to wait before retrying a call the store could not serve.
STORE_RETRY_SECONDS = 1.0


def store_unavailable() -> StoreUnavailable:
    """The one error for a call the store could not serve; the cause goes to the log, not the client."""
    return StoreUnavailable(
        f"the store is unavailable; retry in {math.ceil(STORE_RETRY_SECONDS)}s",
        retry_after=STORE_RETRY_SECONDS,
        metadata={"dependency": "store"},
    )


class Unimplemented(RuneError, code=grpc.StatusCode.UNIMPLEMENTED):
    """The method exists in the contract but this server does not serve it."""


class DeadlineExceeded(RuneError, code=grpc.StatusCode.DEADLINE_EXCEEDED):
    """The operation did not finish in time."""


class Cancelled(RuneError, code=grpc.StatusCode.CANCELLED):
    """The client cancelled or went away before the call finished (recorded, never sent)."""


class Internal(RuneError, code=grpc.StatusCode.INTERNAL):
    """Something unexpected; the message is generic, the traceback is in the log."""


_E = TypeVar("_E", bound=RuneError)


def kind_reason(kind: str, what: str) -> str:
    """``service``, ``NOT_FOUND`` -> ``SERVICE_NOT_FOUND``; ``exec session`` -> ``EXEC_SESSION_...``."""
    return re.sub(r"[^A-Z0-9]+", "_", kind.upper()).strip("_") + "_" + what


def _about(kind: str, name: str, namespace: str | None) -> dict[str, str]:
    out = {"kind": kind, "name": name}
    if namespace:
        out["namespace"] = namespace
    return out


def _about_object(cls: type[_E], what: str, kind: str, name: str, namespace: str | None) -> _E:
    """``<kind> "<name>" <what, in words>[ in namespace "<ns>"]`` with reason ``<KIND>_<WHAT>``."""
    where = f' in namespace "{namespace}"' if namespace else ""
    return cls(
        f'{kind} "{name}" {what.lower().replace("_", " ")}{where}',
        reason=kind_reason(kind, what),
        metadata=_about(kind, name, namespace),
    )


def not_found(kind: str, name: str, namespace: str | None = None) -> NotFound:
    """Kubernetes-style message: ``service "web" not found in namespace "default"``; reason SERVICE_NOT_FOUND."""
    return _about_object(NotFound, "NOT_FOUND", kind, name, namespace)


def already_exists(kind: str, name: str, namespace: str | None = None) -> AlreadyExists:
    """``service "web" already exists in namespace "default"``; reason SERVICE_ALREADY_EXISTS."""
    return _about_object(AlreadyExists, "ALREADY_EXISTS", kind, name, namespace)


def permission_denied(message: str, resource: str, verb: str, namespace: str) -> PermissionDenied:
    """The caller lacks ``resource:verb@namespace``; reason PERMISSION_DENIED with those three as metadata."""
    return PermissionDenied(message, metadata={"resource": resource, "verb": verb, "namespace": namespace})


def no_running_instance(service: str, namespace: str) -> NotFound:
    """A service with no running instance to exec into; reason NO_RUNNING_INSTANCE."""
    return NotFound(
        f'service "{service}" has no running instance in namespace "{namespace}"',
        reason="NO_RUNNING_INSTANCE",
        metadata=_about("service", service, namespace),
    )


def being_deleted(service: str, namespace: str) -> FailedPrecondition:
    """A change to a service whose deletion has begun; reason SERVICE_BEING_DELETED."""
    return FailedPrecondition(
        f'service "{service}" in namespace "{namespace}" is being deleted',
        reason="SERVICE_BEING_DELETED",
        metadata=_about("service", service, namespace),
    )


def revision_compacted(revision: int, oldest: int, then: str) -> FailedPrecondition:
    """A watch from a revision the change log no longer holds (``then``: what the caller does next);
    reason REVISION_COMPACTED."""
    return FailedPrecondition(
        f"revision {revision} is older than the retained change log (oldest {oldest}); {then}",
        reason="REVISION_COMPACTED",
        metadata={"revision": str(revision), "oldest": str(oldest)},
    )


def on_other_node(instance: str, node: str) -> FailedPrecondition:
    """A node asked for an instance another node runs (calls through the node channel are never passed
    on); reason INSTANCE_ON_OTHER_NODE."""
    where = f"node {node}" if node else "another node"
    return FailedPrecondition(
        f"instance {instance} runs on {where}, not on this one",
        reason="INSTANCE_ON_OTHER_NODE",
        metadata={"instance": instance, "node": node} if node else {"instance": instance},
    )


def invalid(*violations: FieldViolation | tuple[str, str]) -> InvalidArgument:
    """Build an InvalidArgument whose message lists every violation with its field path (reason INVALID_FIELD)."""
    vs = [v if isinstance(v, FieldViolation) else FieldViolation(*v) for v in violations]
    msg = "invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in vs)
    return InvalidArgument(msg, violations=vs)


def scale_limit(field: str, cap: int, got: int) -> InvalidArgument:
    """A scale over ``limits.max_scale``: the field and the cap; reason SCALE_LIMIT."""
    why = f"must be at most {cap} (limits.max_scale), got {got}"
    return InvalidArgument(
        f"invalid request: {field}: {why}",
        violations=[FieldViolation(field, why)],
        reason="SCALE_LIMIT",
        metadata={"field": field, "limit": "limits.max_scale", "max": str(cap)},
    )


def rate_limited(retry_after: float) -> ResourceExhausted:
    """The per-credential request rate was exceeded; reason RATE_LIMITED, ``retry_after`` seconds."""
    retry = max(1, math.ceil(retry_after))
    return ResourceExhausted(
        f"rate limit exceeded for this credential; retry in {retry}s", retry_after=retry_after, reason="RATE_LIMITED"
    )


def exec_session_limit(instance: str, namespace: str, limit: int) -> ResourceExhausted:
    """An instance already has ``exec.max_sessions_per_instance`` sessions; reason EXEC_SESSION_LIMIT."""
    return ResourceExhausted(
        f"too many exec sessions on instance {instance} (limit {limit})",
        retry_after=1.0,
        reason="EXEC_SESSION_LIMIT",
        metadata={**_about("instance", instance, namespace), "limit": str(limit)},
    )


# The class an error received with a code is rebuilt as (see :func:`received`).
BY_CODE: dict[grpc.StatusCode, type[RuneError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        Conflict,
        FailedPrecondition,
        ResourceExhausted,
        Unavailable,
        Unimplemented,
        DeadlineExceeded,
        Cancelled,
        Internal,
    )
}


def received(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str = "",
    metadata: Mapping[str, str] | None = None,
    violations: list[FieldViolation] | None = None,
    retry_after: float | None = None,
) -> RuneError:
    """An error another runed answered (a node, over the node channel), as that runed's client would see it.

    The class of its code, with its reason, metadata and violations exactly as sent: no default of
    this host's replaces them (an InvalidArgument keeps the ``fields`` the sender listed).
    """
    cls = BY_CODE.get(code, Internal)
    err = cls(message, retry_after=retry_after, reason=reason or cls.reason, metadata=metadata)
    err.violations = list(violations or [])
    if cls is Internal and code != grpc.StatusCode.INTERNAL:
        # A code no class carries (OUT_OF_RANGE, DATA_LOSS, ...) keeps it.
        err.code = code
    return err


class FatalStartError(Exception):
    """A role cannot start because of its configuration or environment: restarting it cannot help.

    Not a :class:`RuneError`: it never reaches a client. The role exits with EX_CONFIG and the
    supervisor stops instead of restarting it. Subclasses name the cause.
    """


class BindError(FatalStartError):
    """A listening address cannot be bound (in use, not permitted) or its TLS files cannot be read."""
