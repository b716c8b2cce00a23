"""One-line rendering of gRPC errors and the exit code table."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

from rune.cli.errors import EXIT_TABLE, exit_code_for, render_rpc_error


@dataclass
class FakeRpcError:
    """Stands in for grpc's call error (not our code): code, details and trailing metadata."""

    status: grpc.StatusCode
    message: str
    trailers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return self.message

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self.trailers


def test_exit_codes_are_distinct_per_kind() -> None:
    codes = [c for c, _ in EXIT_TABLE]
    assert len(codes) == len(set(codes))
    kinds = ["NOT_FOUND", "PERMISSION_DENIED", "ALREADY_EXISTS", "UNAVAILABLE", "INVALID_ARGUMENT", "UNAUTHENTICATED"]
    assert len({exit_code_for(k) for k in kinds}) == len(kinds)
    assert exit_code_for("INTERNAL") == 1 and exit_code_for("ABORTED") == exit_code_for("ALREADY_EXISTS")


def test_field_violations_from_bad_request_details() -> None:
    br = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="service.scale", description="must be >= 0"),
            error_details_pb2.BadRequest.FieldViolation(field="service.name", description="required"),
        ]
    )
    st = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="invalid request")
    st.details.add().Pack(br)
    err = FakeRpcError(
        grpc.StatusCode.INVALID_ARGUMENT, "invalid request", (("grpc-status-details-bin", st.SerializeToString()),)
    )
    line, code = render_rpc_error(err, "h:1")
    assert line == "invalid argument: invalid request: service.scale: must be >= 0; service.name: required"
    assert code == 8


def test_unreachable_names_the_address() -> None:
    err = FakeRpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; Connection refused")
    line, code = render_rpc_error(err, "10.1.1.1:7863")
    assert line.startswith("cannot reach runed at 10.1.1.1:7863 (start it with `runed`") and code == 9


def test_unauthenticated_says_how_to_log_in() -> None:
    line, code = render_rpc_error(FakeRpcError(grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token"), "h:1")
    assert "rune login" in line and code == 4
