"""What one reconcile pass reads from the store, read as one unit of store work before the pass.

Why: on PostgreSQL every read is a network round trip; read one by one during the pass, they would
hold the event loop (probes, exits, stops) for the sum of them. The pass itself runs on the loop
(it starts processes and tasks) and finds here what it needs: its input, then (a second unit, once
the input says which services may start an instance) the records those starts and the dependency
checks read: dependency services, secrets and configmaps. Its writes go the other way, queued and
committed together afterwards (:mod:`runed.controller.writes`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from runed.controller.instance import Key
from runed.model import objects
from runed.store.base import Record, Store, iter_all

log = logging.getLogger("runed.controller")

RecordKey = tuple[str, str, str]


@dataclass
class Records:
    """Records read in advance, by (kind, namespace, name) (None: absent). One not read in advance is
    read on a miss, on the loop: every caller reads ahead what it will look at, so that is a slip."""

    store: Store
    found: dict[RecordKey, Record | None] = field(default_factory=dict, kw_only=True)

    def get(self, kind: str, namespace: str, name: str) -> Record | None:
        key = (kind, namespace, name)
        if key not in self.found:
            log.debug("%s %s/%s was not read in advance: read on the event loop", kind, namespace, name)
            self.found[key] = self.store.get(kind, namespace, name)
        return self.found[key]

    def missing(self, keys: Iterable[RecordKey]) -> set[RecordKey]:
        """Those of ``keys`` not read yet."""
        return {k for k in keys if k not in self.found}


def read_records(store: Store, keys: Iterable[RecordKey]) -> Records:
    """``keys``' records (blocking: one unit of store work)."""
    return Records(store, found={k: store.get(*k) for k in keys})


@dataclass
class PassInput(Records):
    """The records of one pass: its services, the instance actions to apply, the open operations,
    and what the pass's starts and dependency checks read (:meth:`add`)."""

    # The pass's services (every one in a full pass).
    services: dict[Key, Record]
    # Instance actions to apply, by (namespace, instance id).
    actions: dict[Key, Record]
    deletions: list[Record]
    scalings: list[Record]
    # True when ``services`` holds every service (a service absent from it does not exist).
    complete: bool

    def get(self, kind: str, namespace: str, name: str) -> Record | None:
        """A record as the pass knows it."""
        if kind == objects.SERVICE:
            rec = self.services.get((namespace, name))
            if rec is not None or self.complete:
                return rec
        return super().get(kind, namespace, name)

    def missing(self, keys: Iterable[RecordKey]) -> set[RecordKey]:
        return {
            k
            for k in super().missing(keys)
            if not (k[0] == objects.SERVICE and (self.complete or (k[1], k[2]) in self.services))
        }

    def add(self, more: Records) -> None:
        """Records read after the pass's input (by :func:`read_records`)."""
        self.found.update(more.found)


def read_input(
    store: Store,
    only: set[Key] | None,
    actions: Iterable[Key],
    extra: Iterable[RecordKey],
    *,
    operations: bool = True,
) -> PassInput:
    """Read a pass's input (blocking: one unit of store work).

    ``only``: the services of the pass (None: every one, with every instance action); ``actions``:
    the instance actions that changed; ``extra``: other records the pass will look at;
    ``operations``: whether the pass advances scaling and deletion operations (the leader's does).
    """
    if only is None:
        services = {(r.namespace, r.name): r for r in iter_all(store, objects.SERVICE)}
        acts = {(r.namespace, r.name): r for r in iter_all(store, objects.INSTANCE_ACTION)}
    else:
        services = {k: r for k in only if (r := store.get(objects.SERVICE, *k)) is not None}
        acts = {k: r for k in actions if (r := store.get(objects.INSTANCE_ACTION, *k)) is not None}
    deletions = list(iter_all(store, objects.DELETION_OPERATION)) if operations else []
    scalings = list(iter_all(store, objects.SCALING_OPERATION)) if operations else []
    got = PassInput(store, services, acts, deletions, scalings, only is None)
    wanted = set(extra)
    if only is not None:
        # The services of open scaling operations, which the pass advances whatever it looks at.
        for op in scalings:
            name = str(op.data.get("service") or op.data.get("service_name") or "")
            if (op.namespace, name) not in services:
                wanted.add((objects.SERVICE, op.namespace, name))
    for kind, ns, name in wanted:
        if only is None and kind == objects.INSTANCE_ACTION:
            got.found[(kind, ns, name)] = acts.get((ns, name))
        elif only is not None or kind != objects.SERVICE:
            got.found[(kind, ns, name)] = store.get(kind, ns, name)
    return got
