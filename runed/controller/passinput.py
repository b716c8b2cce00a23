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
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from runed.controller.instance import Key
from runed.model import objects
from runed.store.base import Record, Store, iter_all

log = logging.getLogger("runed.controller")

RecordKey = tuple[str, str, str]
# Which operations a pass reads: these, or every one ("all").
Wanted = set[RecordKey] | Literal["all"]

# How often a full pass reads every operation, finished ones too (the safety net of the operations):
# not on every full pass (every ``controller.resync_seconds``), which an idle controller runs too.
OPERATIONS_RESYNC_SECONDS = 60.0


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


class OpenOperations:
    """The scaling and deletion operations a pass advances: those still open at the last pass and
    those written since (the controller's watch says which); every one at the first pass, after the
    watch was interrupted, and in a full pass every :data:`OPERATIONS_RESYNC_SECONDS`.

    Why: finished operations stay (ListDeletionOperations lists them) and nothing changes them any
    more, yet every pass read and decoded every one: with 1,000 finished deletions a pass's input
    took 5-11 ms to read, with 5,000 55 ms, and the same scalings cost the controller 23x the CPU
    they cost without that history (``python -m bench history``; bench/README.md). Now 0.01 ms.
    An idle controller's full pass every 5 s read them all too.
    """

    KINDS = (objects.DELETION_OPERATION, objects.SCALING_OPERATION)

    def __init__(self) -> None:
        self.open: set[RecordKey] = set()
        # Written since the last pass read them (added by the controller's watch).
        self.changed: set[RecordKey] = set()
        # When every operation was last read (monotonic; -inf: never, or the watch missed changes since).
        self.all_read = -math.inf

    def take(self, full: bool) -> Wanted:
        """What the next pass reads (``full``: a pass over every service): the open operations and
        those written, or every one (see the class docstring)."""
        self.changed, changed = set(), self.changed
        now = time.monotonic()
        if now - self.all_read >= (OPERATIONS_RESYNC_SECONDS if full else math.inf):
            self.all_read = now
            return "all"
        return self.open | changed

    def missed(self) -> None:
        """The watch may have missed changes, or a pass could not read what it took: the next pass
        reads every operation."""
        self.all_read = -math.inf

    def read(self, got: PassInput) -> None:
        """What the pass read (every operation in a full pass): those not finished stay open."""
        self.open = {
            (r.kind, r.namespace, r.name)
            for r in (*got.deletions, *got.scalings)
            if not objects.operation_done(r.kind, r.data)
        }


def read_input(
    store: Store,
    only: set[Key] | None,
    actions: Iterable[Key],
    extra: Iterable[RecordKey],
    *,
    operations: Wanted | None = None,
) -> PassInput:
    """Read a pass's input (blocking: one unit of store work).

    ``only``: the services of the pass (None: every one, with every instance action, and every
    operation); ``actions``: the instance actions that changed; ``extra``: other records the pass
    will look at; ``operations``: the scaling and deletion operations the pass advances
    (:meth:`OpenOperations.take`), None for none (a controller that does not lead).
    """
    if only is None:
        services = {(r.namespace, r.name): r for r in iter_all(store, objects.SERVICE)}
        acts = {(r.namespace, r.name): r for r in iter_all(store, objects.INSTANCE_ACTION)}
    else:
        services = {k: r for k in only if (r := store.get(objects.SERVICE, *k)) is not None}
        acts = {k: r for k in actions if (r := store.get(objects.INSTANCE_ACTION, *k)) is not None}
    if operations is None:
        deletions, scalings = [], []
    elif operations == "all":
        deletions = list(iter_all(store, objects.DELETION_OPERATION))
        scalings = list(iter_all(store, objects.SCALING_OPERATION))
    else:
        ops = [r for k in sorted(operations) if (r := store.get(*k)) is not None]
        deletions = [r for r in ops if r.kind == objects.DELETION_OPERATION]
        scalings = [r for r in ops if r.kind == objects.SCALING_OPERATION]
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
