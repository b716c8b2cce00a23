"""Exit codes and one-line rendering of every error the CLI can meet.

The exit code is chosen from the gRPC status code only (never the message), so scripts can
branch on the kind of failure.
"""

from __future__ import annotations

import sys
from typing import Any

# Documented in `rune --help` and the README.
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_UNAUTHENTICATED = 4
EXIT_PERMISSION = 5
EXIT_CONFLICT = 6
EXIT_PRECONDITION = 7
EXIT_INVALID = 8
EXIT_UNAVAILABLE = 9
EXIT_TIMEOUT = 10
EXIT_UNIMPLEMENTED = 11
EXIT_EXHAUSTED = 12

EXIT_TABLE: list[tuple[int, str]] = [
    (EXIT_OK, "success"),
    (EXIT_ERROR, "other error (internal, unknown)"),
    (EXIT_USAGE, "bad command line (unknown flag, missing argument)"),
    (EXIT_NOT_FOUND, "not found"),
    (EXIT_UNAUTHENTICATED, "not logged in / bad token"),
    (EXIT_PERMISSION, "permission denied"),
    (EXIT_CONFLICT, "conflict (already exists, concurrent change)"),
    (EXIT_PRECONDITION, "failed precondition"),
    (EXIT_INVALID, "invalid input (cast file or request rejected by validation)"),
    (EXIT_UNAVAILABLE, "runed unreachable or unavailable"),
    (EXIT_TIMEOUT, "timed out"),
    (EXIT_UNIMPLEMENTED, "not supported by this runed"),
    (EXIT_EXHAUSTED, "rate or size limit hit"),
]

_BY_CODE_NAME: dict[str, int] = {
    "NOT_FOUND": EXIT_NOT_FOUND,
    "UNAUTHENTICATED": EXIT_UNAUTHENTICATED,
    "PERMISSION_DENIED": EXIT_PERMISSION,
    "ALREADY_EXISTS": EXIT_CONFLICT,
    "ABORTED": EXIT_CONFLICT,
    "FAILED_PRECONDITION": EXIT_PRECONDITION,
    "INVALID_ARGUMENT": EXIT_INVALID,
    "OUT_OF_RANGE": EXIT_INVALID,
    "UNAVAILABLE": EXIT_UNAVAILABLE,
    "DEADLINE_EXCEEDED": EXIT_TIMEOUT,
    "UNIMPLEMENTED": EXIT_UNIMPLEMENTED,
    "RESOURCE_EXHAUSTED": EXIT_EXHAUSTED,
}


def exit_table_text() -> str:
    """The exit-code table as help text."""
    return "\n".join(f"  {code:>3}  {what}" for code, what in EXIT_TABLE)


class CliError(Exception):
    """An error the CLI reports as one line, exiting with ``code``."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def exit_code_for(code_name: str) -> int:
    """Exit code for a gRPC status code name such as ``NOT_FOUND``."""
    return _BY_CODE_NAME.get(code_name, EXIT_ERROR)


def _violations(err: Any) -> list[str]:
    return [f"{field}: {why}" for field, why in field_violations(err)]


def field_violations(err: Any) -> list[tuple[str, str]]:
    """(field, description) pairs from google.rpc.BadRequest details, if the status carries them."""
    try:
        from google.rpc import error_details_pb2
        from grpc_status import rpc_status

        status = rpc_status.from_call(err)
    except Exception:
        return []
    if status is None:
        return []
    out: list[tuple[str, str]] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            detail.Unpack(br)
            out += [(v.field, v.description) for v in br.field_violations]
    return out


def _unreachable(details: str) -> bool:
    markers = ("failed to connect", "connection refused", "connect failed", "dns resolution", "deadline exceeded")
    low = details.lower()
    return any(m in low for m in markers)


def _dropped(details: str) -> bool:
    markers = ("cancelling all calls", "socket closed", "connection reset", "goaway", "broken pipe", "stream removed")
    low = details.lower()
    return any(m in low for m in markers)


def render_rpc_error(err: Any, target: str) -> tuple[str, int]:
    """One line and an exit code for a ``grpc.RpcError``."""
    code = err.code()
    name = getattr(code, "name", str(code))
    details = err.details() or ""
    if name == "UNAVAILABLE" and _unreachable(details):
        return (
            f"cannot reach runed at {target} (start it with `runed`, or point the CLI elsewhere with "
            f"--server / RUNE_SERVER / `rune login --server HOST:PORT`)",
            EXIT_UNAVAILABLE,
        )
    if name == "UNAVAILABLE" and _dropped(details):
        # runed went away during a call or stream (killed, restarted): say where it was, port included.
        return f"lost the connection to runed at {target} ({details}); is it still running?", EXIT_UNAVAILABLE
    if name == "DEADLINE_EXCEEDED" and "connect" in details.lower():
        return f"cannot reach runed at {target} (start it with `runed`)", EXIT_UNAVAILABLE
    msg = details or name.lower().replace("_", " ")
    violations = _violations(err)
    if violations:
        extra = "; ".join(v for v in violations if v not in msg)
        if extra:
            msg = f"{msg}: {extra}"
    if name == "UNAUTHENTICATED":
        msg += " (log in with `rune login --token ...` or set RUNE_TOKEN)"
    return f"{name.lower().replace('_', ' ')}: {msg}", exit_code_for(name)


def fail(message: str, code: int = EXIT_ERROR) -> None:
    """Print ``error: message`` to stderr (no traceback) and exit."""
    sys.stderr.write(f"error: {message}\n")
    sys.exit(code)
