"""Domain errors and the one table that maps them to gRPC codes and HTTP statuses."""

from __future__ import annotations

from dataclasses import dataclass

import grpc

# gRPC code -> HTTP status. The only place this mapping lives (REST renders with it, the CLI
# uses the gRPC code for its exit status).
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


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: its path in the request (e.g. ``service.ports[0].port``) and why."""

    field: str
    description: str


class RuneError(Exception):
    """Base domain error. Handlers raise these; only the pipeline turns them into a status."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self, message: str, violations: list[FieldViolation] | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.violations = violations or []
        self.retry_after = retry_after

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)


class InvalidArgument(RuneError):
    """Bad input: carries every field violation at once."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(RuneError):
    """Missing or bad credentials; never says which tokens exist."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(RuneError):
    """The caller is known but lacks ``resource:verb@namespace``."""

    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(RuneError):
    """The named object does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RuneError):
    """An object with that name exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class Conflict(RuneError):
    """A concurrent change won (optimistic concurrency)."""

    code = grpc.StatusCode.ABORTED


class FailedPrecondition(RuneError):
    """The system is not in a state where the request can run."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(RuneError):
    """A rate or size limit was hit; ``retry_after`` says when to come back."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class StorageFull(ResourceExhausted):
    """The data dir's filesystem is full: writes are refused, reads still work, until space is freed."""


def storage_full(data_dir: object) -> StorageFull:
    """The one message for a write refused by a full disk (SQLITE_FULL, ENOSPC, EDQUOT), naming the data dir."""
    return StorageFull(
        f"data dir {data_dir} is out of space: writes are refused until space is freed there (reads still work)"
    )


class Unavailable(RuneError):
    """A dependency (store, engine, role) is not reachable right now."""

    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(RuneError):
    """The method exists in the contract but this server does not serve it."""

    code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(RuneError):
    """The operation did not finish in time."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(RuneError):
    """The client cancelled or went away before the call finished (recorded, never sent)."""

    code = grpc.StatusCode.CANCELLED


class Internal(RuneError):
    """Something unexpected; the message is generic, the traceback is in the log."""

    code = grpc.StatusCode.INTERNAL


def not_found(kind: str, name: str, namespace: str | None = None) -> NotFound:
    """Kubernetes-style message: ``service "web" not found in namespace "default"``."""
    where = f' in namespace "{namespace}"' if namespace else ""
    return NotFound(f'{kind} "{name}" not found{where}')


def already_exists(kind: str, name: str, namespace: str | None = None) -> AlreadyExists:
    where = f' in namespace "{namespace}"' if namespace else ""
    return AlreadyExists(f'{kind} "{name}" already exists{where}')


def invalid(*violations: FieldViolation | tuple[str, str]) -> InvalidArgument:
    """Build an InvalidArgument whose message lists every violation with its field path."""
    vs = [v if isinstance(v, FieldViolation) else FieldViolation(*v) for v in violations]
    msg = "invalid request: " + "; ".join(f"{v.field}: {v.description}" for v in vs)
    return InvalidArgument(msg, violations=vs)


class FatalStartError(Exception):
    """A role cannot start because of its configuration or environment: restarting it cannot help.

    Not a :class:`RuneError`: it never reaches a client. The role exits with EX_CONFIG and the
    supervisor stops instead of restarting it. Subclasses name the cause.
    """


class BindError(FatalStartError):
    """A listening address cannot be bound (in use, not permitted) or its TLS files cannot be read."""
