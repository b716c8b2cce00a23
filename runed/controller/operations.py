"""Executing scaling and deletion operations: the API records them, the leading controller carries them out.

Only the leader advances them (once, for the whole cluster), counting every node's instances; a node
only stops its own instances of a service marked for deletion (``Controller``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from runed.controller.alarm import Alarm
from runed.controller.book import Book
from runed.controller.instance import Instance, Key
from runed.controller.states import RUNNING
from runed.controller.status import StatusWriter
from runed.model import objects
from runed.store.base import Record, Store

log = logging.getLogger("runed.controller")


class Retire(Protocol):
    """Stops instances for good (each record goes once its instance has stopped)."""

    def __call__(self, insts: Iterable[Instance], reason: str, *, grace: float | None = None) -> None: ...


Copies = Callable[[str, str], list[Instance]]


class Operations:
    """Advances open scaling and deletion operations on each reconcile pass of the leader."""

    def __init__(
        self,
        store: Store,
        book: Book,
        retire: Retire,
        status: StatusWriter,
        alarm: Alarm,
        *,
        counted: Copies | None = None,
        copies: Copies | None = None,
        known: Callable[[int], bool] | None = None,
    ) -> None:
        self.store = store
        self.book = book
        self.retire = retire
        self.status = status
        self.alarm = alarm
        # A service's instances on every node: as its scale counts them, and every copy left to stop.
        self.counted = counted or book.of_service
        self.copies = copies or book.of_service
        # Whether the copies on other nodes are known as of a store revision (they are learnt from the
        # controller's watch); None: a single host, whose copies are all its own.
        self.known = known

    # -- scaling --------------------------------------------------------------------------------
    def _set_scale(self, ns: str, name: str, scale: int) -> None:
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

        self.book.writes.update(objects.SERVICE, ns, name, mutate)

    def run_scaling(
        self, services: dict[Key, Record], ops: Iterable[Record], lookup: Callable[[Key], Record | None] | None = None
    ) -> None:
        """Advance every open scaling operation; the newest one per service wins, older ones are cancelled.

        ``services`` are the service records at hand, ``ops`` the scaling operations; ``lookup`` finds a
        service that is not among them.
        """
        open_ops = sorted(
            (r for r in ops if not objects.operation_done(r.kind, r.data)), key=lambda r: r.created_revision
        )
        newest: dict[Key, Record] = {}
        for r in open_ops:
            skey = (r.namespace, str(r.data.get("service") or r.data.get("service_name") or ""))
            older = newest.get(skey)
            if older is not None:
                self._update_op(
                    older, status="cancelled", ended_at=time.time(), message="superseded by a newer operation"
                )
            newest[skey] = r
        now = time.time()
        for skey, op in newest.items():
            rec = services.get(skey)
            if rec is None and lookup is not None:
                rec = lookup(skey)
            if rec is None or rec.data.get("deletion"):
                self._update_op(op, status="failed", ended_at=now, message=f'service "{skey[1]}" not found')
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
                    # A last step "in the future" was taken before the clock was stepped back.
                    if now - last >= interval or last > now:
                        new = min(target, scale + step) if target > scale else max(target, scale - step)
                        self._set_scale(skey[0], skey[1], new)
                        changes["last_step_at"] = now
                        scale = new
                    if scale != target:
                        self.alarm.due(float(changes.get("last_step_at", last)) + interval)
                else:
                    self._set_scale(skey[0], skey[1], target)
                    scale = target
            insts = self.counted(*skey)
            running = sum(1 for i in insts if i.state is RUNNING and not i.retire)
            changes["current"] = running
            changes["scale"] = scale
            if scale == target and running == target and len(insts) == target:
                changes.update(status="completed", ended_at=now, message=f"scaled to {target}")
            else:
                changes["message"] = f"{running}/{target} instances running"
            self._update_op(op, **changes)

    def _update_op(self, op: Record, **changes: Any) -> None:
        if all(op.data.get(k) == v for k, v in changes.items()):
            return

        def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
            if cur is None or objects.operation_done(op.kind, cur):
                return None
            cur.update(changes)
            return cur

        self.book.writes.update(op.kind, op.namespace, op.name, mutate)

    # -- deletion -------------------------------------------------------------------------------
    def run_deletions(self, ops: Iterable[Record]) -> set[Key]:
        """Advance open deletion operations; returns the services being deleted (no new instances)."""
        busy: set[Key] = set()
        for op in ops:
            if op.data.get("status") in objects.DELETION_DONE:
                continue
            try:
                skey = self._advance_deletion(op)
            except Exception as e:
                log.exception("deletion %s failed", op.name)
                self._update_deletion(op, status="failed", failure_reason=str(e), end_time=int(time.time()))
                continue
            if skey is not None:
                busy.add(skey)
        return busy

    def prune(self, ops: Iterable[Record], keep: float) -> None:
        """Remove those of ``ops`` that finished more than ``keep`` seconds ago (0: none).

        Why: every deletion and scaling was kept for ever, so a pipeline that deploys and deletes
        all day grew the store, and every ListDeletionOperations, without end. A pass sees a finished
        operation once after its last change and then in the full read of every operation
        (:class:`~runed.controller.passinput.OpenOperations`): one of those removes it.
        """
        if keep <= 0:
            return
        now = time.time()
        for op in ops:
            ended = _ended_at(op)
            if ended is not None and now - ended >= keep:
                self.book.writes.delete(op.kind, op.namespace, op.name)

    def _update_deletion(self, op: Record, **changes: Any) -> None:
        def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
            if cur is None:
                return None
            new = dict(cur, **changes)
            return None if new == cur else new

        self.book.writes.update(objects.DELETION_OPERATION, op.namespace, op.name, mutate)

    def deletion_asked(self, namespace: str, data: dict[str, Any]) -> None:
        """A deletion operation the controller's watch brought (``data``, as written): its service's
        instances on this node are stopped, as :meth:`run_deletions` stops them, with the same grace
        period; the controller calls this first in its next pass (``Controller._stop_deleted``),
        before that pass reads the operation again."""
        if data.get("status") in objects.DELETION_DONE:
            return
        (ns, name), grace = _deletion_of(namespace, data)
        self.retire(self.book.of_service(ns, name), "service deleted", grace=grace)

    def _advance_deletion(self, op: Record) -> Key | None:
        skey, grace_s = _deletion_of(op.namespace, op.data)
        ns, name = skey
        now = int(time.time())
        fins: list[dict[str, Any]] = [dict(f) for f in op.data.get("finalizers") or []]
        if not fins:
            fins = [{"id": t, "type": t, "status": "pending", "error": ""} for t in objects.DELETION_FINALIZERS]
        insts = self.book.of_service(ns, name)
        total = int(op.data.get("total_instances") or 0) or len(self.copies(ns, name))
        self.retire(insts, "service deleted", grace=grace_s)
        remaining = len(self.copies(ns, name))
        if not remaining and self.known is not None and not self.known(op.created_revision):
            # No copy seen, but the watch that shows the other nodes' copies has not yet reached the
            # deletion: a copy written before it may not be seen yet. The pass after it has, decides.
            return skey
        changes: dict[str, Any] = {
            "total_instances": total,
            "deleted_instances": max(0, total - remaining),
            "finalizers": fins,
        }
        if op.data.get("status") in (None, "", objects.DELETION_INITIALIZING, "pending"):
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
            if ftype == objects.FINALIZER_INSTANCE_CLEANUP:
                if remaining:
                    f["status"] = "running"
                    blocked = True
                    pending.append(ftype)
                    continue
                _complete(f, now)
            elif ftype == objects.FINALIZER_SERVICE_DEREGISTER:
                changes["status"] = "running-finalizers"
                self.book.writes.delete(objects.SERVICE, ns, name)
                self.book.writes.delete(objects.SERVICE_STATUS, ns, name)
                self.status.forget((ns, name))
                _complete(f, now)
            else:
                # Custom finalizers carry no executable behaviour here: they are acknowledged in order.
                _complete(f, now)
        changes["pending_operations"] = pending
        changes["finalizer_status"] = ", ".join(f"{f.get('id') or f.get('type')}={f.get('status')}" for f in fins)
        if not pending:
            changes.update(status="completed", end_time=now, deleted_instances=total)
            self._update_deletion(op, **changes)
            return None
        self._update_deletion(op, **changes)
        return skey


def _ended_at(op: Record) -> float | None:
    """When a finished operation ended (epoch seconds); None while it runs, or when it does not say."""
    if not objects.operation_done(op.kind, op.data):
        return None
    ended = op.data.get("end_time" if op.kind == objects.DELETION_OPERATION else "ended_at")
    return float(ended) if isinstance(ended, int | float) and not isinstance(ended, bool) and ended > 0 else None


def _complete(f: dict[str, Any], now: int) -> None:
    f["status"] = "completed"
    f["error"] = ""
    f["updated_at"] = now
    f["completed_at"] = now


def _deletion_of(namespace: str, data: dict[str, Any]) -> tuple[Key, float | None]:
    """The service a deletion operation deletes, and the grace period of its instances' stops (0 is
    "now": SIGKILL without waiting; None, absent: the configured default)."""
    grace = data.get("grace_period")
    return (data.get("namespace") or namespace, str(data.get("service_name", ""))), (
        float(grace) if grace is not None else None
    )
