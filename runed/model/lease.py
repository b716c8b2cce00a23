"""Lease records as stored: who holds a named lease (the controller's), for the lease keeper and for health.

Only :mod:`runed.controller.leader` writes them. ``renewed_at`` is the holder's wall-clock time,
for people and health reports; the election itself compares only revisions and each contender's
own monotonic clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from runed.store.base import Record

KIND = "lease"
# Leases are cluster-wide, like identity objects: one pseudo-namespace.
NAMESPACE = "system"
# The controllers' lease: its holder is the one controller that reconciles.
CONTROLLER = "controller"


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, as its record says (``ttl``: what the holder promised to renew within)."""

    holder: str
    ttl: float
    revision: int
    renewed_at: float

    @classmethod
    def from_record(cls, rec: Record) -> Holder:
        d = rec.data
        return cls(
            str(d.get("holder", "")), float(d.get("ttl_seconds") or 0), rec.revision, float(d.get("renewed_at") or 0)
        )


def data(holder: str, ttl: float) -> dict[str, Any]:
    """A lease record's data, renewed now."""
    return {"holder": holder, "ttl_seconds": ttl, "renewed_at": time.time()}
