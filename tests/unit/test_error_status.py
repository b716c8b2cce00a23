"""A domain error as a google.rpc.Status and back: what a node sends is what its API host re-raises."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from runed.core import errors
from runed.pipeline.status import error_of_status, status_proto


@pytest.mark.parametrize(
    "err",
    [
        errors.not_found("instance", "web-0", "default"),
        errors.no_running_instance("web", "prod"),
        errors.invalid(("service.scale", "must be >= 0"), ("service.name", "required")),
        errors.scale_limit("service.scale", 10, 20),
        errors.exec_session_limit("web-0", "default", 8),
        errors.store_unavailable(),
        errors.FailedPrecondition("instance is not running, status: Stopped"),
        errors.Conflict("changed meanwhile"),
        errors.Internal("internal error"),
    ],
)
def test_an_error_comes_back_as_it_was_sent(err: errors.RuneError) -> None:
    back = error_of_status(status_proto(err, "req-1"))
    assert back is not None
    assert isinstance(back, errors.BY_CODE[err.code])
    got = (back.code, back.message, back.reason, back.metadata, back.violations, back.retry_after)
    assert got == (err.code, err.message, err.reason, err.metadata, err.violations, err.retry_after)
    # Sent again (the API host to its client, with its own request id), it is the same status.
    again, first = (json_format.MessageToDict(status_proto(e, "req")) for e in (back, err))
    assert again == first


def test_a_reason_the_receiver_would_default_differently_is_kept() -> None:
    # INVALID_FIELD adds ``fields`` only when it makes the reason itself: a sent one stays as it was.
    sent = errors.InvalidArgument(
        "bad", [errors.FieldViolation("a", "x")], reason="INVALID_FIELD", metadata={"fields": "b"}
    )
    back = error_of_status(status_proto(sent, ""))
    assert back is not None and (back.reason, back.metadata) == ("INVALID_FIELD", {"fields": "b"})


def test_a_status_no_runed_sent_is_none() -> None:
    plain = status_pb2.Status(code=grpc.StatusCode.UNAVAILABLE.value[0], message="connection refused")
    assert error_of_status(plain) is None
    other = status_pb2.Status(code=5, message="x")
    other.details.add().Pack(error_details_pb2.ErrorInfo(reason="NOT_FOUND", domain="example.com"))
    assert error_of_status(other) is None


def test_a_code_no_class_carries_is_kept() -> None:
    st = status_pb2.Status(code=grpc.StatusCode.OUT_OF_RANGE.value[0], message="past the end")
    st.details.add().Pack(error_details_pb2.ErrorInfo(reason="OUT_OF_RANGE", domain=errors.DOMAIN))
    back = error_of_status(st)
    assert back is not None and (back.code, back.reason) == (grpc.StatusCode.OUT_OF_RANGE, "OUT_OF_RANGE")
