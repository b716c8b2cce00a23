"""What one reconcile pass reads from the store, read as one unit of store work before the pass.

Why: on PostgreSQL every read is a network round trip; read one by one during the pass, they would
hold the event loop (probes, exits, stops) for the sum of them. The pass itself runs on the loop
(it starts processes and tasks) and finds here what it needs; the few records it cannot know in
advance (a dependency outside the pass) it reads on a miss. Its writes go the other way, queued
and committed together afterwards (:mod:`runed.controller.writes`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from runed.controller.instance import Key
from runed.model import objects
from runed.store.base import Record, Store, iter_all

RecordKey = tuple[str, str, str]


@dataclass
class PassInput:
    """The records of one pass: its services, the instance actions to apply, the open operations."""

    store: Store
    # The pass's services (every one in a full pass).
    services: dict[Key, Record]
    # Instance actions to apply, by (namespace, instance id).
    actions: dict[Key, Record]
    deletions: list[Record]
    scalings: list[Record]
    # True when ``services`` holds every service (a service absent from it does not exist).
    complete: bool
    # Other records read for the pass (None: absent).
    found: dict[RecordKey, Record | None] = field(default_factory=dict)

    def get(self, kind: str, namespace: str, name: str) -> Record | None:
        """A record as the pass knows it (read now, on the loop, when it was not read in advance)."""
        if kind == objects.SERVICE:
            rec = self.services.get((namespace, name))
            if rec is not None or self.complete:
                return rec
        key = (kind, namespace, name)
        if key not in self.found:
            self.found[key] = self.store.get(kind, namespace, name)
        return self.found[key]


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
    got = PassInput(store, services, acts, deletions, scalings, complete=only is None)
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
