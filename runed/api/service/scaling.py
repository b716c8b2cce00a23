"""Scaling: ScaleService records a scaling operation for the controller; WatchScaling streams real progress."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from rune.api import service_pb2
from runed.api.offload import offloaded
from runed.api.service.common import check_scale, get_service, instances_of, status_pb, v_name, with_status
from runed.api.service.spec import host_port_scale_why
from runed.core import errors, validation
from runed.core.errors import FieldViolation
from runed.model import objects
from runed.pipeline.context import CallContext
from runed.store import watch
from runed.store.base import Record, Store, iter_all

# Finished scaling operations kept per service (older ones are pruned on the next request).
SCALING_OPS_KEPT = 10
# Instance runner states counted as running / on the way (WatchScaling progress).
RUNNING_STATES = ("RUNNING",)
PENDING_STATES = ("PENDING", "CREATED", "STARTING", "BACKOFF")
GONE_STATES = ("STOPPED", "EXITED", "FATAL", "DELETED")


def v_scale(req: service_pb2.ScaleServiceRequest) -> list[FieldViolation]:
    """Validator of ScaleService."""
    out = v_name(req)
    if req.scale < 0:
        out.append(FieldViolation("scale", "scale must be a non-negative integer"))
    if req.mode not in service_pb2.ScalingMode.values():
        out.append(FieldViolation("mode", "unknown scaling mode"))
    if req.step_size < 0:
        out.append(FieldViolation("step_size", "must not be negative"))
    if req.interval_seconds < 0:
        out.append(FieldViolation("interval_seconds", "must not be negative"))
    return out


def v_watch_scaling(req: service_pb2.WatchScalingRequest) -> list[FieldViolation]:
    """Validator of WatchScaling."""
    out = validation.dns1123_label(req.service_name, "service_name")
    if req.target_scale < 0:
        out.append(FieldViolation("target_scale", "must not be negative"))
    return out


def _scaling_ops(store: Store, ns: str, service: str) -> list[Record]:
    ops = [r for r in iter_all(store, objects.SCALING_OPERATION, ns) if r.data.get("service") == service]
    return sorted(ops, key=lambda r: r.created_revision)


@offloaded
def ScaleService(req: service_pb2.ScaleServiceRequest, ctx: CallContext) -> service_pb2.ServiceResponse:
    """Record a scaling operation for the controller; a new request cancels one still running."""
    check_scale(ctx, req.scale, "scale")
    store = ctx.deps.store
    ns = req.namespace
    with store.transaction():
        rec = get_service(store, ns, req.name)
        if rec.data.get("deletion"):
            raise errors.being_deleted(req.name, ns)
        current = int(rec.data.get("spec", {}).get("scale", 0))
        if req.scale > 1:
            svc = objects.service_from_record(rec)
            if svc.runtime == "process" and svc.expose.host_port:
                why = host_port_scale_why(req.scale)
                raise errors.InvalidArgument(
                    f"invalid request: scale: {why}", violations=[FieldViolation("scale", why)]
                )
        active = [r for r in _scaling_ops(store, ns, req.name) if r.data.get("status") not in objects.SCALING_DONE]
        if current == req.scale and not active:
            return service_pb2.ServiceResponse(
                service=with_status(store, rec), status=status_pb(0, f"Service already at scale {req.scale}")
            )
        now = time.time()
        for op in active:
            store.put(
                objects.SCALING_OPERATION,
                ns,
                op.name,
                dict(op.data, status="cancelled", ended_at=now, message="superseded by a newer request"),
            )
        finished = [r for r in _scaling_ops(store, ns, req.name) if r.data.get("status") in objects.SCALING_DONE]
        for op in finished[: max(0, len(finished) - SCALING_OPS_KEPT)]:
            store.delete(objects.SCALING_OPERATION, ns, op.name)
        gradual = req.mode == service_pb2.SCALING_MODE_GRADUAL
        op_id = f"scale-{req.name}-{time.time_ns()}"
        store.create(
            objects.SCALING_OPERATION,
            ns,
            op_id,
            {
                "id": op_id,
                "service": req.name,
                "target": req.scale,
                "mode": "gradual" if gradual else "immediate",
                "step": (req.step_size or 1) if gradual else 0,
                "interval_seconds": (req.interval_seconds or 30) if gradual else 0,
                "status": "pending",
                "current": current,
                "started_at": now,
                "ended_at": None,
                "message": "",
                "requested_by": ctx.principal.subject,
            },
        )

        def keep_last_non_zero(cur: dict[str, Any] | None) -> dict[str, Any] | None:
            if cur is None:
                return None
            meta = cur["spec"].setdefault("metadata", {})
            # Scale 0 keeps the last non-zero scale, so a later "scale back up" knows where to go.
            value = req.scale if req.scale > 0 else (current or int(meta.get("last_non_zero_scale", 1)))
            if meta.get("last_non_zero_scale") == value:
                return None
            meta["last_non_zero_scale"] = value
            return cur

        rec = store.update(objects.SERVICE, ns, req.name, keep_last_non_zero) or rec
    return service_pb2.ServiceResponse(
        service=with_status(store, rec), status=status_pb(0, f"Scaling operation initiated to {req.scale}")
    )


def _goal(rec: Record | None, ops: list[Record], requested: int) -> int:
    """The scale a watch waits for: the one asked for; without one (0), where the service is going.

    0 is both "scale to zero" and "not given" on the wire. Read as: the target of the scaling
    operation in progress (0 after ``rune scale web 0``), else the service's own scale, so a watch
    of a service already at its scale ends at once instead of waiting for zero instances.
    """
    if requested > 0 or rec is None:
        return requested
    active = [op for op in ops if op.data.get("status") not in objects.SCALING_DONE]
    if active:
        return int(active[-1].data.get("target", 0))
    return int(rec.data.get("spec", {}).get("scale", 0))


def _scaling_progress(store: Store, ns: str, name: str, target: int) -> service_pb2.ScalingStatusResponse | None:
    """Progress as the store shows it now; None when the service is gone (and the target was not 0)."""
    rec = store.get(objects.SERVICE, ns, name)
    if rec is None and target > 0:
        return None
    ops = _scaling_ops(store, ns, name)
    target = _goal(rec, ops, target)
    scale = int(rec.data.get("spec", {}).get("scale", 0)) if rec else 0
    insts = instances_of(store, ns, name)
    states = [str(r.data.get("state", "")).upper() for r in insts]
    # Instances the controller is retiring (scale down, replacement) no longer count as running.
    running = sum(s in RUNNING_STATES and not r.data.get("retire") for s, r in zip(states, insts, strict=True))
    pending = sum(s in PENDING_STATES for s in states)
    alive = sum(s not in GONE_STATES for s in states)
    complete = alive == 0 if target == 0 else (scale == target and running == target and alive == target)
    msg = f"Service '{name}' scaling progress"
    code = 0
    if ops and ops[-1].data.get("status") in ("failed", "cancelled") and not complete:
        code = 9  # FAILED_PRECONDITION: the operation ended without reaching the target
        msg = f"scaling operation {ops[-1].data.get('status')}: {ops[-1].data.get('message', '')}".rstrip(": ")
    elif rec is not None and not complete and target > 0 and scale == target:
        # The controller's final verdict for this spec and scale: no instance will start again by
        # itself, so waiting longer cannot reach the target.
        status = store.get(objects.SERVICE_STATUS, ns, name)
        if status is not None and objects.status_is_final(rec, status):
            why = str(status.data.get("message", ""))
            if status.data.get("status") == "Completed":
                complete = True
                msg = f"Service '{name}' completed: {why}"
            else:
                code = 9  # FAILED_PRECONDITION: an instance failed for good
                msg = f"Service '{name}' failed: {why}"
    return service_pb2.ScalingStatusResponse(
        current_scale=scale,
        target_scale=target,
        running_instances=running,
        pending_instances=pending,
        complete=complete,
        status=status_pb(code, msg),
    )


async def WatchScaling(
    req: service_pb2.WatchScalingRequest, ctx: CallContext
) -> AsyncIterator[service_pb2.ScalingStatusResponse]:
    """Real progress from the service, its instances and its scaling operation; ends when done.

    Without ``target_scale`` (0) it waits for the scale the service is going to (see :func:`_goal`).
    """
    store = ctx.deps.store
    ns = req.namespace
    if req.target_scale > 0:
        await store.run(get_service, store, ns, req.service_name)
    kinds = [objects.SERVICE, objects.INSTANCE, objects.SCALING_OPERATION]
    changed = asyncio.Event()

    async def wake() -> None:
        since = max(await store.run(store.current_revision), 1)
        async for _ in watch.watch(store, kinds, namespace=ns, since_revision=since):
            changed.set()

    waker = asyncio.create_task(wake())
    last: service_pb2.ScalingStatusResponse | None = None
    try:
        while True:
            changed.clear()
            progress = await store.run(_scaling_progress, store, ns, req.service_name, req.target_scale)
            if progress is None:
                raise errors.not_found("service", req.service_name, ns)
            if progress != last:
                yield progress
                last = progress
            if progress.complete or progress.status.code:
                return
            # Wake on the next relevant change, or re-check after a second (a safety net).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await changed.wait()
    finally:
        waker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await waker
