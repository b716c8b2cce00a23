"""Deletion requests: DeleteService records a deletion operation the controller carries out
(stop instances within a grace period, then run the finalizers), and callers read its progress."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from google.protobuf import json_format

from rune.api import service_pb2
from runed.api.offload import offloaded
from runed.api.service.common import instances_of, status_pb, v_name
from runed.core import errors, validation
from runed.core.errors import FieldViolation
from runed.core.names import list_scope
from runed.model import objects
from runed.pipeline.context import CallContext
from runed.store import watch
from runed.store.base import Store, iter_all


def v_delete(req: service_pb2.DeleteServiceRequest) -> list[FieldViolation]:
    """Validator of DeleteService."""
    out = v_name(req)
    if req.grace_period < 0:
        out.append(FieldViolation("grace_period", "must not be negative"))
    if req.timeout_seconds < 0:
        out.append(FieldViolation("timeout_seconds", "must not be negative"))
    known = objects.DELETION_FINALIZERS
    for i, f in enumerate(req.finalizers):
        if f not in known:
            out.append(FieldViolation(f"finalizers[{i}]", f"unknown finalizer {f!r}; known: {', '.join(known)}"))
    return out


def v_deletion_status(req: service_pb2.GetDeletionStatusRequest) -> list[FieldViolation]:
    """Validator of GetDeletionStatus."""
    out = [FieldViolation("name", "deletion_id is required")] if not req.name else []
    return (
        out
        + validation.reference(req.name, "name")
        + validation.dns1123_label(req.namespace, "namespace", allow_empty=True)
    )


def v_list(req: service_pb2.ListDeletionOperationsRequest) -> list[FieldViolation]:
    """Validator of ListDeletionOperations."""
    return validation.namespace_scope(req.namespace, "namespace")


def _dependents(store: Store, ns: str, name: str) -> list[str]:
    out: list[str] = []
    for rec in iter_all(store, objects.SERVICE):
        for dep in rec.data.get("spec", {}).get("dependencies", []):
            if dep.get("service") == name and (dep.get("namespace") or rec.namespace) == ns:
                out.append(f"{rec.namespace}/{rec.name}")
                break
    return out


def _deletion_pb(store: Store, d: dict[str, Any]) -> service_pb2.DeletionOperation:
    """The operation as stored; one the controller has not taken up yet (``initializing``) counts
    its service's instances here, so that its total is never read as 0 while there are some
    (DeleteService leaves the count to the controller, see :func:`_start_deletion`)."""
    op = service_pb2.DeletionOperation()
    json_format.ParseDict(d, op, ignore_unknown_fields=True)
    if op.status == objects.DELETION_INITIALIZING and not op.total_instances:
        op.total_instances = len(instances_of(store, op.namespace, op.service_name))
    return op


async def DeleteService(req: service_pb2.DeleteServiceRequest, ctx: CallContext) -> service_pb2.DeleteServiceResponse:
    """Request deletion: the controller stops instances (grace period) and runs the finalizers."""
    store = ctx.deps.store
    started = await store.run(_start_deletion, req, ctx)
    if isinstance(started, service_pb2.DeleteServiceResponse):
        return started
    op_id, warnings, finalizers = started
    status = status_pb(0, "in_progress")
    if not req.detach and req.timeout_seconds > 0:
        final = await _await_deletion(store, req.namespace, op_id, req.timeout_seconds)
        if final is not None:
            status = status_pb(0 if final.get("status") == "completed" else 13, str(final.get("status")))
            if final.get("failure_reason"):
                return service_pb2.DeleteServiceResponse(
                    deletion_id=op_id,
                    status=status,
                    warnings=warnings,
                    errors=[str(final["failure_reason"])],
                    finalizers=[_finalizer_pb(f) for f in final.get("finalizers", [])],
                )
    return service_pb2.DeleteServiceResponse(
        deletion_id=op_id, status=status, warnings=warnings, finalizers=[_finalizer_pb(f) for f in finalizers]
    )


def _start_deletion(
    req: service_pb2.DeleteServiceRequest, ctx: CallContext
) -> service_pb2.DeleteServiceResponse | tuple[str, list[str], list[dict[str, Any]]]:
    """The store work of DeleteService (one unit): a final answer, or the started operation to wait for."""
    store = ctx.deps.store
    ns = req.namespace
    rec = store.get(objects.SERVICE, ns, req.name)
    if rec is None:
        if req.ignore_not_found:
            return service_pb2.DeleteServiceResponse(status=status_pb(0, "not found (ignored)"))
        raise errors.not_found("service", req.name, ns)
    dependents = _dependents(store, ns, req.name)
    override = req.force or req.no_dependencies
    if dependents and not override:
        raise errors.FailedPrecondition(
            f"cannot delete {ns}/{req.name}; dependents exist: {', '.join(dependents)} (use force to override)",
            reason="DEPENDENTS_EXIST",
            metadata={"dependents": ",".join(dependents)},
        )
    names = list(dict.fromkeys(req.finalizers)) or list(objects.DELETION_FINALIZERS)
    # The record removal always runs, and always last.
    names = [n for n in objects.DELETION_FINALIZERS if n in names or n == objects.FINALIZER_SERVICE_DEREGISTER]
    now = int(time.time())
    finalizers = [
        {"id": f, "name": f, "type": f, "status": "pending", "error": "", "created_at": now, "updated_at": now}
        for f in names
    ]
    for i, f in enumerate(finalizers[1:], 1):
        f["dependencies"] = [{"depends_on": finalizers[i - 1]["id"], "required": True}]
    warnings = [f"dependents will break: {', '.join(dependents)}"] if dependents else []
    if req.dry_run:
        return service_pb2.DeleteServiceResponse(
            deletion_id="dry-run",
            status=status_pb(0, "dry_run"),
            warnings=[*warnings, f"would stop {len(instances_of(store, ns, req.name))} instance(s)"],
            finalizers=[_finalizer_pb(f) for f in finalizers],
        )
    grace = 0 if req.now else (req.grace_period or int(ctx.deps.config.controller.stop_grace_seconds))
    existing = rec.data.get("deletion") or {}
    if existing.get("id"):
        op_rec = store.get(objects.DELETION_OPERATION, ns, existing["id"])
        if op_rec is not None and op_rec.data.get("status") not in objects.DELETION_DONE:
            # A second request joins the deletion already under way.
            return service_pb2.DeleteServiceResponse(
                deletion_id=existing["id"],
                status=status_pb(0, "in_progress"),
                warnings=["deletion already in progress"],
                finalizers=[_finalizer_pb(f) for f in op_rec.data.get("finalizers", [])],
            )
    op_id = f"delete-{ns}-{req.name}-{now}-{uuid.uuid4().hex[:6]}"
    op = {
        "id": op_id,
        "namespace": ns,
        "service_name": req.name,
        # Counted by the controller as it starts (on every node's): reading a thousand instance
        # records here was a tenth of the time from this call to the service's deletion.
        "total_instances": 0,
        "deleted_instances": 0,
        "failed_instances": 0,
        "start_time": now,
        "end_time": 0,
        "status": objects.DELETION_INITIALIZING,
        "failure_reason": "",
        "pending_operations": names,
        "finalizers": finalizers,
        "finalizer_order": names,
        "finalizer_status": "pending",
        "grace_period": grace,
        "timeout_seconds": req.timeout_seconds,
        "force": bool(override),
        "requested_by": ctx.principal.subject,
    }

    def mark(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        if cur is None:
            raise errors.not_found("service", req.name, ns)
        cur["deletion"] = {"id": op_id, "requested_at": time.time(), "grace_period": grace}
        return cur

    with store.transaction():
        store.create(objects.DELETION_OPERATION, ns, op_id, op)
        store.update(objects.SERVICE, ns, req.name, mark)
    return op_id, warnings, finalizers


def _finalizer_pb(f: dict[str, Any]) -> service_pb2.Finalizer:
    out = service_pb2.Finalizer()
    json_format.ParseDict(f, out, ignore_unknown_fields=True)
    return out


async def _await_deletion(store: Store, ns: str, op_id: str, timeout: float) -> dict[str, Any] | None:
    """The finished operation, or None when it is still running after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            async for ev in watch.watch(store, [objects.DELETION_OPERATION], namespace=ns):
                if ev.name == op_id and ev.data.get("status") in objects.DELETION_DONE:
                    return ev.data
    except TimeoutError:
        return None
    return None


@offloaded
def GetDeletionStatus(
    req: service_pb2.GetDeletionStatusRequest, ctx: CallContext
) -> service_pb2.GetDeletionStatusResponse:
    ns = req.namespace
    rec = ctx.deps.store.get(objects.DELETION_OPERATION, ns, req.name)
    if rec is None:
        raise errors.not_found("deletion operation", req.name, ns)
    return service_pb2.GetDeletionStatusResponse(operation=_deletion_pb(ctx.deps.store, rec.data))


@offloaded
def ListDeletionOperations(
    req: service_pb2.ListDeletionOperationsRequest, ctx: CallContext
) -> service_pb2.ListDeletionOperationsResponse:
    ops = [
        _deletion_pb(ctx.deps.store, r.data)
        for r in iter_all(ctx.deps.store, objects.DELETION_OPERATION, list_scope(req.namespace))
        if not req.status or r.data.get("status") == req.status
    ]
    return service_pb2.ListDeletionOperationsResponse(operations=ops)
