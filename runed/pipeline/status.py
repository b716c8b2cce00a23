"""A domain error as a ``google.rpc.Status``: the one form both adapters render in their transport.

And back: a status another runed sent (a node, over the node channel) as the domain error it was.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from runed.core import errors

# google.rpc.Status.code -> the gRPC code.
_CODES = {c.value[0]: c for c in grpc.StatusCode}


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


def error_of_status(st: status_pb2.Status) -> errors.RuneError | None:
    """The domain error a runed sent as ``st`` (the inverse of :func:`status_proto`), or None when no runed did.

    A status is a runed's when its ErrorInfo has our domain; its RequestInfo is left out (the
    request id is the receiving call's, which its own status carries).
    """
    info = error_details_pb2.ErrorInfo()
    if not st.details or not st.details[0].Unpack(info) or info.domain != errors.DOMAIN:
        return None
    violations: list[errors.FieldViolation] = []
    retry_after: float | None = None
    for d in st.details[1:]:
        br, ri = error_details_pb2.BadRequest(), error_details_pb2.RetryInfo()
        if d.Unpack(br):
            violations += [errors.FieldViolation(v.field, v.description) for v in br.field_violations]
        elif d.Unpack(ri):
            retry_after = ri.retry_delay.ToNanoseconds() / 1e9
    return errors.received(
        _CODES.get(st.code, grpc.StatusCode.UNKNOWN),
        st.message,
        reason=info.reason,
        metadata=dict(info.metadata),
        violations=violations,
        retry_after=retry_after,
    )
