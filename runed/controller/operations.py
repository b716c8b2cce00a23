"""Executing scaling and deletion operations: the API records them, the controller carries them out."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from runed.controller.states import RUNNING
from runed.model import objects
from runed.store.base import Record, iter_all

if TYPE_CHECKING:
    from runed.controller.reconciler import Controller

log = logging.getLogger("runed.controller")

DONE = ("completed", "failed", "cancelled")
DELETION_DONE = ("completed", "failed")
DEFAULT_FINALIZERS = ("instance-cleanup", "service-deregister")


def _instances_of(ctl: Controller, ns: str, service: str) -> list[tuple[tuple[str, str], dict[str, Any]]]:
    return [(k, d) for k, d in ctl.inst.items() if k[0] == ns and d.get("service") == service]


def _set_scale(ctl: Controller, ns: str, name: str, scale: int) -> None:
    def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        if cur is None:
            return None
        spec = cur.setdefault("spec", {})
        if int(spec.get("scale", 0)) == scale:
            return None
        spec["scale"] = scale
        if scale > 0:
            # Scale 0 keeps the last non-zero scale so a later "resume" knows what to restore.
            spec.setdefault("metadata", {})["last_non_zero_scale"] = scale
        return cur

    ctl.store.update(objects.SERVICE, ns, name, mutate)


def run_scaling(ctl: Controller, services: dict[tuple[str, str], Record]) -> None:
    """Advance every open scaling operation; the newest one per service wins, older ones are cancelled."""
    ops = [r for r in iter_all(ctl.store, objects.SCALING_OPERATION) if r.data.get("status", "pending") not in DONE]
    ops.sort(key=lambda r: r.created_revision)
    newest: dict[tuple[str, str], Record] = {}
    for r in ops:
        skey = (r.namespace, str(r.data.get("service") or r.data.get("service_name") or ""))
        older = newest.get(skey)
        if older is not None:
            _update_op(ctl, older, status="cancelled", ended_at=time.time(), message="superseded by a newer operation")
        newest[skey] = r
    now = time.time()
    for skey, op in newest.items():
        rec = services.get(skey)
        if rec is None or rec.data.get("deletion"):
            _update_op(ctl, op, status="failed", ended_at=now, message=f'service "{skey[1]}" not found')
            continue
        target = int(op.data.get("target", 0))
        scale = int(rec.data.get("spec", {}).get("scale", 0))
        changes: dict[str, Any] = {}
        if op.data.get("status", "pending") == "pending":
            changes.update(status="in_progress", started_at=now)
        if scale != target:
            if op.data.get("mode") == "gradual":
                step = max(1, int(op.data.get("step") or 1))
                interval = max(0.0, float(op.data.get("interval_seconds") or 0))
                last = float(op.data.get("last_step_at") or 0)
                if now - last >= interval:
                    new = min(target, scale + step) if target > scale else max(target, scale - step)
                    _set_scale(ctl, skey[0], skey[1], new)
                    changes["last_step_at"] = now
                    scale = new
                if scale != target:
                    ctl._due(float(changes.get("last_step_at", last)) + interval)
            else:
                _set_scale(ctl, skey[0], skey[1], target)
                scale = target
        insts = [d for _, d in _instances_of(ctl, *skey)]
        running = sum(1 for d in insts if d.get("state") == RUNNING and not d.get("retire"))
        changes["current"] = running
        changes["scale"] = scale
        if scale == target and running == target and len(insts) == target:
            changes.update(status="completed", ended_at=now, message=f"scaled to {target}")
        else:
            changes["message"] = f"{running}/{target} instances running"
        _update_op(ctl, op, **changes)


def _update_op(ctl: Controller, op: Record, **changes: Any) -> None:
    if all(op.data.get(k) == v for k, v in changes.items()):
        return

    def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        if cur is None or cur.get("status") in DONE:
            return None
        cur.update(changes)
        return cur

    ctl.store.update(op.kind, op.namespace, op.name, mutate)


def run_deletions(ctl: Controller, services: dict[tuple[str, str], Record]) -> set[tuple[str, str]]:
    """Advance open deletion operations; returns the services being deleted (no new instances)."""
    busy: set[tuple[str, str]] = set()
    for op in iter_all(ctl.store, objects.DELETION_OPERATION):
        if op.data.get("status") in DELETION_DONE:
            continue
        try:
            skey = _advance_deletion(ctl, op, services)
        except Exception as e:
            log.exception("deletion %s failed", op.name)
            _update_deletion(ctl, op, status="failed", failure_reason=str(e), end_time=int(time.time()))
            continue
        if skey is not None:
            busy.add(skey)
    return busy


def _update_deletion(ctl: Controller, op: Record, **changes: Any) -> None:
    def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        if cur is None:
            return None
        new = dict(cur, **changes)
        return None if new == cur else new

    ctl.store.update(objects.DELETION_OPERATION, op.namespace, op.name, mutate)


def _advance_deletion(ctl: Controller, op: Record, services: dict[tuple[str, str], Record]) -> tuple[str, str] | None:
    ns = op.data.get("namespace") or op.namespace
    name = str(op.data.get("service_name", ""))
    skey = (ns, name)
    now = int(time.time())
    fins: list[dict[str, Any]] = [dict(f) for f in op.data.get("finalizers") or []]
    if not fins:
        fins = [{"id": t, "type": t, "status": "pending", "error": ""} for t in DEFAULT_FINALIZERS]
    insts = _instances_of(ctl, ns, name)
    total = int(op.data.get("total_instances") or 0) or len(insts)
    grace = op.data.get("grace_period")
    # 0 is "now" (SIGKILL without waiting); absent means the configured default.
    grace_s = float(grace) if grace is not None else None
    for key, data in insts:
        ctl._retire(key, dict(data), "service deleted", grace=grace_s)
    remaining = len(_instances_of(ctl, ns, name))
    changes: dict[str, Any] = {
        "total_instances": total,
        "deleted_instances": max(0, total - remaining),
        "finalizers": fins,
    }
    if op.data.get("status") in (None, "", "initializing", "pending"):
        changes["status"] = "deleting-instances"
        changes.setdefault("start_time", op.data.get("start_time") or now)
    pending: list[str] = []
    blocked = False
    for f in fins:
        if f.get("status") == "completed":
            continue
        if blocked:
            pending.append(str(f.get("id") or f.get("type")))
            continue
        ftype = str(f.get("type") or f.get("id") or "")
        f.setdefault("created_at", now)
        if ftype == "instance-cleanup":
            if remaining:
                f["status"] = "running"
                blocked = True
                pending.append(ftype)
                continue
            _complete(f, now)
        elif ftype == "service-deregister":
            changes["status"] = "running-finalizers"
            ctl.store.delete(objects.SERVICE, ns, name)
            ctl.store.delete(objects.SERVICE_STATUS, ns, name)
            ctl.status_cache.pop((ns, name), None)
            _complete(f, now)
        else:
            # Custom finalizers carry no executable behaviour here: they are acknowledged in order.
            _complete(f, now)
    changes["pending_operations"] = pending
    changes["finalizer_status"] = ", ".join(f"{f.get('id') or f.get('type')}={f.get('status')}" for f in fins)
    if not pending:
        changes.update(status="completed", end_time=now, deleted_instances=total)
        _update_deletion(ctl, op, **changes)
        return None
    _update_deletion(ctl, op, **changes)
    return skey


def _complete(f: dict[str, Any], now: int) -> None:
    f["status"] = "completed"
    f["error"] = ""
    f["updated_at"] = now
    f["completed_at"] = now
