"""A domain error as a ``google.rpc.Status``: the one form both adapters render in their transport."""

from __future__ import annotations

from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from runed.core import errors


def _pack(msg: Message) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def status_proto(err: errors.RuneError, request_id: str) -> status_pb2.Status:
    """The google.rpc.Status for a domain error, with structured details.

    Details, in this order: ``ErrorInfo`` (always: the error's stable reason, the domain, what it is
    about), ``BadRequest`` (field violations), ``RetryInfo`` (when to come back), ``RequestInfo``
    (the request id).
    """
    details = [_pack(error_details_pb2.ErrorInfo(reason=err.reason, domain=errors.DOMAIN, metadata=err.metadata))]
    if err.violations:
        br = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in err.violations
            ]
        )
        details.append(_pack(br))
    if err.retry_after is not None:
        ri = error_details_pb2.RetryInfo()
        ri.retry_delay.FromNanoseconds(int(err.retry_after * 1e9))
        details.append(_pack(ri))
    if request_id:
        details.append(_pack(error_details_pb2.RequestInfo(request_id=request_id)))
    return status_pb2.Status(code=err.code.value[0], message=err.message, details=details)
