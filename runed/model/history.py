"""Service spec history: one stored revision per spec change (who, when, why), with bounded retention."""

from __future__ import annotations

import time
from typing import Any

from rune.api import service_pb2
from runed.model import objects
from runed.store.base import Record, Store

KIND = objects.SERVICE_REVISION
# Zero-padded so the store's name order is revision order.
_WIDTH = 10


def revision_name(service: str, number: int) -> str:
    return f"{service}/{number:0{_WIDTH}d}"


def list_revisions(store: Store, namespace: str, service: str) -> list[Record]:
    """Stored revisions of one service, oldest first (a key range scan, not a kind scan)."""
    prefix = f"{service}/"
    out: list[Record] = []
    after = (namespace, prefix)
    while True:
        res = store.list(KIND, namespace, after=after, limit=200)
        for rec in res.items:
            if not rec.name.startswith(prefix):
                return out
            out.append(rec)
        if not res.next_cursor or not res.items:
            return out
        after = (res.items[-1].namespace, res.items[-1].name)


def latest_number(store: Store, namespace: str, service: str) -> int:
    """Highest revision number ever kept for the name (numbering continues after a re-create)."""
    revs = list_revisions(store, namespace, service)
    return int(revs[-1].data["revision"]) if revs else 0


def get_revision(store: Store, namespace: str, service: str, number: int) -> Record | None:
    return store.get(KIND, namespace, revision_name(service, number))


def record(
    store: Store,
    svc: service_pb2.Service,
    *,
    number: int,
    generation: int,
    change_cause: str,
    created_by: str,
    keep: int,
    rollback_of: int = 0,
) -> Record:
    """Store revision ``number`` of ``svc`` and prune the oldest beyond ``keep`` (call in a transaction)."""
    data: dict[str, Any] = {
        "service": svc.name,
        "revision": number,
        "spec": objects.spec_dict(svc),
        "generation": generation,
        "spec_hash": objects.spec_hash(svc),
        "change_cause": change_cause,
        "created_by": created_by,
        "created_at": time.time(),
        "rollback_of": rollback_of,
    }
    rec = store.put(KIND, svc.namespace, revision_name(svc.name, number), data)
    if keep > 0:
        revs = list_revisions(store, svc.namespace, svc.name)
        for old in revs[: max(0, len(revs) - keep)]:
            store.delete(KIND, old.namespace, old.name)
    return rec


def to_pb(rec: Record) -> service_pb2.ServiceRevision:
    d = rec.data
    svc = objects.from_dict(service_pb2.Service, d.get("spec", {}))
    return service_pb2.ServiceRevision(
        revision=int(d["revision"]),
        service=svc,
        change_cause=str(d.get("change_cause", "")),
        created_by=str(d.get("created_by", "")),
        created_at=objects.rfc3339(float(d.get("created_at", 0.0))),
        generation=int(d.get("generation", 0)),
        spec_hash=str(d.get("spec_hash", "")),
        rollback_of=int(d.get("rollback_of", 0)),
    )


def spec_of(rec: Record) -> service_pb2.Service:
    return objects.from_dict(service_pb2.Service, rec.data.get("spec", {}))
