"""A domain error as a ``google.rpc.Status``: the one form both adapters render in their transport."""

from __future__ import annotations

from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from runed.core import errors


def status_proto(err: errors.RuneError, request_id: str) -> status_pb2.Status:
    """The google.rpc.Status for a domain error, with structured details."""
    details: list[any_pb2.Any] = []
    if err.violations:
        br = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in err.violations
            ]
        )
        a = any_pb2.Any()
        a.Pack(br)
        details.append(a)
    if err.retry_after is not None:
        ri = error_details_pb2.RetryInfo()
        ri.retry_delay.FromNanoseconds(int(err.retry_after * 1e9))
        a = any_pb2.Any()
        a.Pack(ri)
        details.append(a)
    if request_id:
        a = any_pb2.Any()
        a.Pack(error_details_pb2.RequestInfo(request_id=request_id))
        details.append(a)
    return status_pb2.Status(code=err.code.value[0], message=err.message, details=details)
