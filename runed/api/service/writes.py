"""Spec writes: create, update and rollback, each stored with its revision in the history in one transaction.

A spec is checked in three steps before it is written: statically (spec.py), against the store
(refs.py) and against the container runtime (runtime.py).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from google.protobuf import json_format

from rune.api import service_pb2
from runed.api.namespace import BUILTIN, ensure_namespace
from runed.api.offload import offloaded
from runed.api.service.common import check_scale, get_service, status_pb, v_name, with_status
from runed.api.service.refs import check_references
from runed.api.service.runtime import check_runtime
from runed.api.service.spec import runtime_of
from runed.core import errors
from runed.core.errors import FieldViolation
from runed.model import history, objects
from runed.pipeline.context import CallContext
from runed.store.base import Record


def _normalise(svc: service_pb2.Service) -> service_pb2.Service:
    """A copy without the status fields (the controller's to write), its runtime as it will run
    (:func:`runtime_of`); the pipeline defaulted the namespace."""
    out = service_pb2.Service()
    out.CopyFrom(svc)
    for f in objects.OUTPUT_ONLY:
        out.ClearField(f)  # type: ignore[arg-type]
    out.runtime = runtime_of(out)
    return out


def _write_spec(
    ctx: CallContext,
    new: service_pb2.Service,
    *,
    cause: str,
    force: bool,
    create: bool,
    rollback_of: int = 0,
    dry_run: bool = False,
) -> tuple[Record, bool, bool]:
    """Create or update the ``service`` record and its history in one transaction.

    Returns (record, created, changed). An update whose spec equals the stored one changes nothing
    (no generation, no revision) unless ``force``. With ``dry_run`` the record that would be written
    is returned unstored (its ``revision`` is the current one, 0 for a new service).
    """
    store = ctx.deps.store
    ns, name = new.namespace, new.name
    with store.transaction():
        cur = store.get(objects.SERVICE, ns, name)
        now = objects.now_rfc3339()
        if cur is None:
            if not create:
                raise errors.not_found("service", name, ns)
            new.id = new.id or str(uuid.uuid4())
            new.metadata.generation = 1
            new.metadata.created_at = now
            new.metadata.updated_at = now
            new.metadata.last_non_zero_scale = max(new.scale, 1)
            number = history.latest_number(store, ns, name) + 1
            data = objects.service_record_data(new, generation=1, change_cause=cause)
            data["revision"] = number
            if dry_run:
                return Record(objects.SERVICE, ns, name, data, 0, 0), True, True
            rec = store.create(objects.SERVICE, ns, name, data)
            history.record(
                store,
                new,
                number=number,
                generation=1,
                change_cause=cause,
                created_by=ctx.principal.subject,
                keep=ctx.deps.config.history.revisions,
                rollback_of=rollback_of,
            )
            return rec, True, True
        if cur.data.get("deletion"):
            raise errors.being_deleted(name, ns)
        old = objects.service_from_record(cur)
        new.id = old.id
        new.metadata.CopyFrom(old.metadata)
        if not force and objects.spec_fingerprint(new) == objects.spec_fingerprint(old):
            return cur, False, False
        generation = int(cur.data.get("generation", 1)) + 1
        new.metadata.generation = generation
        new.metadata.updated_at = now
        if new.scale > 0:
            new.metadata.last_non_zero_scale = new.scale
        number = int(cur.data.get("revision", 0)) or history.latest_number(store, ns, name)
        number += 1
        # Keys other roles keep in the record survive a spec change.
        data = dict(cur.data)
        data.update(objects.service_record_data(new, generation=generation, change_cause=cause))
        data["revision"] = number
        if dry_run:
            return Record(objects.SERVICE, ns, name, data, cur.revision, cur.created_revision), False, True
        rec = store.put(objects.SERVICE, ns, name, data, expect_revision=cur.revision)
        history.record(
            store,
            new,
            number=number,
            generation=generation,
            change_cause=cause,
            created_by=ctx.principal.subject,
            keep=ctx.deps.config.history.revisions,
            rollback_of=rollback_of,
        )
        return rec, False, True


async def _prepare(
    ctx: CallContext, svc: service_pb2.Service, *, ensure_ns: bool, dry_run: bool = False
) -> service_pb2.Service:
    """The spec to write, checked: its namespace exists (or is created), its references resolve, its runtime answers."""
    new = _normalise(svc)
    await ctx.deps.store.run(_check_in_store, ctx, new, ensure_ns, dry_run)
    await check_runtime(ctx, new)
    return new


def _check_in_store(ctx: CallContext, new: service_pb2.Service, ensure_ns: bool, dry_run: bool) -> None:
    # A dry run with ensure_namespace would create a missing namespace: nothing to check, nothing to write.
    if new.namespace not in BUILTIN and not (dry_run and ensure_ns):
        ensure_namespace(ctx.deps.store, new.namespace, create=ensure_ns)
    check_references(ctx.deps.store, new)


# Service fields that are not its spec: a dry run's diff leaves them out.
_NOT_SPEC = frozenset({"id", "metadata", *objects.OUTPUT_ONLY})


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and (value or not prefix):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
        return out
    return {prefix: value}


def spec_diff(old: service_pb2.Service, new: service_pb2.Service) -> list[str]:
    """``path old -> new`` (JSON values, ``null`` when unset) for each spec value a write would change."""
    a = _flat(json_format.MessageToDict(old, preserving_proto_field_name=True))
    b = _flat(json_format.MessageToDict(new, preserving_proto_field_name=True))
    return [
        f"{k} {json.dumps(a.get(k))} -> {json.dumps(b.get(k))}"
        for k in sorted(set(a) | set(b))
        if k.split(".", 1)[0] not in _NOT_SPEC and a.get(k) != b.get(k)
    ]


def _dry_run_status(before: Record | None, new: service_pb2.Service, created: bool, changed: bool) -> Any:
    """The dry run's verdict, and for an update the diff (old -> new) against the stored spec in ``details``."""
    status = status_pb(0, _dry_run_message(created, changed))
    if before is not None and changed:
        status.details.extend(spec_diff(objects.service_from_record(before), new))
    return status


def _dry_run_message(created: bool, changed: bool) -> str:
    # Clients (``rune cast --dry-run``) read the outcome from this message; keep the words stable.
    what = "would be created" if created else ("would be updated" if changed else "unchanged")
    return f"dry run: {what}"


async def CreateService(req: service_pb2.CreateServiceRequest, ctx: CallContext) -> service_pb2.ServiceResponse:
    """Create a service, or update it when it exists (upsert, as upstream)."""
    check_scale(ctx, req.service.scale, "service.scale")
    new = await _prepare(ctx, req.service, ensure_ns=req.ensure_namespace, dry_run=req.dry_run)
    return await ctx.deps.store.run(_create, req, ctx, new)


def _create(
    req: service_pb2.CreateServiceRequest, ctx: CallContext, new: service_pb2.Service
) -> service_pb2.ServiceResponse:
    before = ctx.deps.store.get(objects.SERVICE, new.namespace, new.name) if req.dry_run else None
    rec, created, changed = _write_spec(
        ctx, new, cause=req.change_cause or req.deployment_tag, force=False, create=True, dry_run=req.dry_run
    )
    if req.dry_run:
        status = _dry_run_status(before, new, created, changed)
        return service_pb2.ServiceResponse(service=with_status(ctx.deps.store, rec), status=status)
    msg = "Service created successfully" if created else ("Service updated successfully" if changed else "unchanged")
    return service_pb2.ServiceResponse(service=with_status(ctx.deps.store, rec), status=status_pb(0, msg))


async def UpdateService(req: service_pb2.UpdateServiceRequest, ctx: CallContext) -> service_pb2.ServiceResponse:
    """Replace the spec: a changed spec bumps the generation and records a revision; same spec is a no-op."""
    check_scale(ctx, req.service.scale, "service.scale")
    await ctx.deps.store.run(get_service, ctx.deps.store, req.service.namespace, req.service.name)
    new = await _prepare(ctx, req.service, ensure_ns=False, dry_run=req.dry_run)
    return await ctx.deps.store.run(_update, req, ctx, new)


def _update(
    req: service_pb2.UpdateServiceRequest, ctx: CallContext, new: service_pb2.Service
) -> service_pb2.ServiceResponse:
    before = ctx.deps.store.get(objects.SERVICE, new.namespace, new.name) if req.dry_run else None
    rec, _, changed = _write_spec(
        ctx, new, cause=req.change_cause or req.deployment_tag, force=req.force, create=False, dry_run=req.dry_run
    )
    if req.dry_run:
        status = _dry_run_status(before, new, False, changed)
        return service_pb2.ServiceResponse(service=with_status(ctx.deps.store, rec), status=status)
    msg = "Service updated successfully" if changed else "unchanged"
    return service_pb2.ServiceResponse(service=with_status(ctx.deps.store, rec), status=status_pb(0, msg))


@offloaded
def ListServiceRevisions(
    req: service_pb2.ListServiceRevisionsRequest, ctx: CallContext
) -> service_pb2.ListServiceRevisionsResponse:
    """The retained revisions of a service, newest first."""
    ns = req.namespace
    revs = history.list_revisions(ctx.deps.store, ns, req.name)
    if not revs:
        get_service(ctx.deps.store, ns, req.name)
    return service_pb2.ListServiceRevisionsResponse(revisions=[history.to_pb(r) for r in reversed(revs)])


async def RollbackService(req: service_pb2.RollbackServiceRequest, ctx: CallContext) -> service_pb2.ServiceResponse:
    """Restore a stored spec (the previous one by default) as a new revision; the scale is kept."""
    spec, target_number, its_scale = await ctx.deps.store.run(_rollback_target, req, ctx)
    new = await _prepare(ctx, spec, ensure_ns=False)
    return await ctx.deps.store.run(_rollback, req, ctx, new, target_number, its_scale)


def _rollback_target(req: service_pb2.RollbackServiceRequest, ctx: CallContext) -> tuple[service_pb2.Service, int, int]:
    """The spec to restore (with the live scale), its revision number and the scale it had."""
    store = ctx.deps.store
    ns = req.namespace
    cur = get_service(store, ns, req.name)
    current_number = int(cur.data.get("revision", 0))
    target_number = req.to_revision
    if not target_number:
        older = [r for r in history.list_revisions(store, ns, req.name) if int(r.data["revision"]) < current_number]
        if not older:
            raise errors.FailedPrecondition(
                f'service "{req.name}" has no earlier revision to roll back to', reason="NO_EARLIER_REVISION"
            )
        target_number = int(older[-1].data["revision"])
    target = history.get_revision(store, ns, req.name, target_number)
    if target is None:
        raise errors.invalid(("to_revision", f"revision {target_number} of service {req.name!r} is not retained"))
    spec = history.spec_of(target)
    its_scale = spec.scale
    live = objects.service_from_record(cur)
    # A rollback restores what runs, not how many: scaling stays with ScaleService.
    spec.scale = live.scale
    spec.namespace, spec.name = ns, req.name
    return spec, target_number, its_scale


def _rollback(
    req: service_pb2.RollbackServiceRequest,
    ctx: CallContext,
    new: service_pb2.Service,
    target_number: int,
    its_scale: int,
) -> service_pb2.ServiceResponse:
    store = ctx.deps.store
    cause = req.change_cause or f"rollback to revision {target_number}"
    rec, _, changed = _write_spec(ctx, new, cause=cause, force=False, create=False, rollback_of=target_number)
    if changed:
        msg = f"Rolled back to revision {target_number}"
    else:
        msg = f"already at the spec of revision {target_number}"
        if its_scale != new.scale:
            # Revisions that differ in their scale alone: what a user may have meant to undo.
            msg += (
                f", whose scale ({its_scale}) differs: a rollback keeps the current scale {new.scale};"
                " scale the service to change it"
            )
    return service_pb2.ServiceResponse(service=with_status(store, rec), status=status_pb(0, msg))


def v_rollback(req: service_pb2.RollbackServiceRequest) -> list[FieldViolation]:
    """Validator of RollbackService."""
    out = v_name(req)
    if req.to_revision < 0:
        out.append(FieldViolation("to_revision", "must not be negative"))
    return out
