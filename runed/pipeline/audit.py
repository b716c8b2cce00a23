"""Audit records: one per mutation and per secret read, written from the pipeline, never with values."""

from __future__ import annotations

import logging
from collections.abc import Callable

from google.protobuf.message import Message

from runed.auth import rbac
from runed.core import errors
from runed.pipeline.context import CallContext
from runed.store.base import AuditEntry

log = logging.getLogger("runed.audit")

READ_VERBS = frozenset({"get", "list", "watch"})
# Failures that say nothing about the target and that an anonymous flood could use to fill the
# disk: the request log has them.
UNRECORDED_CODES = frozenset({"UNAUTHENTICATED", "RESOURCE_EXHAUSTED"})
# Fields naming the object a request acts on, in order of preference.
NAME_FIELDS = ("name", "id", "service_name", "instance_id", "policy_name", "subject_name")
MAX_DETAIL = 300
PUBLIC_MUTATIONS = frozenset({"AdminBootstrap"})


def audited(access: rbac.Access | None) -> tuple[str, str] | None:
    """(resource, verb) to record for a method, or None for reads that are not audited."""
    if access is None or access is rbac.AUTHENTICATED:
        return None
    if access is rbac.PUBLIC:
        return ("admin", "bootstrap")  # the only public method: it mints a root token
    if access.verb in READ_VERBS:
        return None
    return (access.resource, access.verb)


def _name_in(msg: Message) -> str:
    fields = msg.DESCRIPTOR.fields_by_name
    for f in NAME_FIELDS:
        if f in fields:
            v = getattr(msg, f)
            if isinstance(v, str) and v:
                return v
    return ""


def object_name(access: rbac.Access, request: Message | None) -> str:
    """The name of the object acted on: beside the namespace field (``service.name``), else top level."""
    if request is None:
        return ""
    node: Message = request
    if access.namespace_field and "." in access.namespace_field:
        for part in access.namespace_field.split(".")[:-1]:
            child = getattr(node, part, None)
            if not isinstance(child, Message):
                break
            node = child
        name = _name_in(node)
        if name:
            return name
    name = _name_in(request)
    if name:
        return name
    # Requests whose subject is a nested message (policy, secret, registry ...): its name.
    # Repeated and map fields yield containers, not messages, and are skipped.
    for f in request.DESCRIPTOR.fields:
        if f.message_type is not None:
            child = getattr(request, f.name)
            if isinstance(child, Message):
                name = _name_in(child)
                if name:
                    return name
    return ""


def is_dry_run(request: Message | None) -> bool:
    """Whether a request asks for a dry run (its ``dry_run`` field is set)."""
    return request is not None and "dry_run" in request.DESCRIPTOR.fields_by_name and bool(request.dry_run)  # type: ignore[attr-defined]


def record(
    write: Callable[[AuditEntry], None],
    ctx: CallContext,
    access: rbac.Access | None,
    request: Message | None,
    code: str,
    message: str = "",
) -> None:
    """Write the audit record for a finished call with ``write`` (the store's), when its method is audited.

    Never raises.
    """
    what = audited(access)
    if what is None or access is None or code in UNRECORDED_CODES:
        return
    if access is rbac.PUBLIC and (code != "OK" or ctx.method.name not in PUBLIC_MUTATIONS):
        # Anyone may call a public method: only what it changed is worth a record.
        return
    namespace = ctx.namespace
    if not namespace and request is not None:
        namespace = rbac.namespace_of(access, request)
    if is_dry_run(request):
        # Still recorded (who probed what, denials included), but marked: nothing was changed.
        message = f"dry run: {message}" if message else "dry run"
    try:
        entry = AuditEntry(
            subject=ctx.principal.subject,
            method=ctx.method.full_name,
            resource=what[0],
            verb=what[1],
            namespace=namespace,
            name=object_name(access, request),
            outcome="success" if code == "OK" else "failure",
            code=code,
            request_id=ctx.request_id,
            peer=ctx.peer,
            detail=message[:MAX_DETAIL],
        )
        write(entry)
    except (errors.StorageFull, errors.StoreUnavailable) as e:
        # Expected while the disk is full or the database is down (reads of secrets are audited too):
        # one line, no traceback.
        log.warning("cannot write audit record for %s (request %s): %s", ctx.method.full_name, ctx.request_id, e)
    except Exception:
        # Losing an audit record must be visible, but must not turn a done change into an error.
        log.exception("cannot write audit record for %s (request %s)", ctx.method.full_name, ctx.request_id)
