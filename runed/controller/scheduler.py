"""The scheduler: places every instance slot of every service on a node (one ``placement`` record per service).

It runs once in the control plane, in the controller role under the controller's lease. A pass:

- judges each node's heartbeat on this process's own clock (a ``beat`` unchanged for
  ``node.not_ready_seconds`` is NotReady, written to the node record; NotReady for another
  ``node.lost_after_seconds`` is lost: its slots are placed elsewhere);
- keeps every slot where it is unless its node is gone, lost, or draining (one slot of a service
  at a time, once the service's other slots run ready, so a drain respects readiness);
- places each unplaced index on a node that is ready, neither cordoned nor draining, matches the
  service's ``node_selector`` and has room for its resource requests, preferring the node with the
  fewest instances of the service (spread), then the least allocated one;
- an index that fits nowhere stays unplaced with the reason (``0/3 nodes: 2 insufficient memory,
  1 cordoned``), which the service's status message shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from runed.controller.instance import Key
from runed.controller.states import RUNNING
from runed.core.config.schema import NodeConfig
from runed.model import objects
from runed.model.nodes import NODE, PLACEMENT, SCOPE, Node, Placement, Resources, requests_of
from runed.store.base import DELETED, Change, Record, Store, iter_all

log = logging.getLogger("runed.scheduler")

WATCHED = (objects.SERVICE, NODE)
# While a drain or a lost node waits on readiness, passes come this often (instances are not watched).
BUSY_SECONDS = 0.5


@dataclass
class _Seen:
    """A node's heartbeat counter and when (this process's monotonic clock) it last changed."""

    beat: int
    at: float


@dataclass
class _Fit:
    """The nodes, their room left, and how many slots of the service at hand each runs."""

    nodes: list[Node]
    used: dict[str, Resources]
    ready: dict[str, bool]
    lost: set[str]
    per_service: Counter[str] = field(default_factory=Counter)


def why_not(node: Node, fit: _Fit, want: Resources, selector: dict[str, str]) -> str:
    """Why ``node`` cannot take one more instance ("" when it can)."""
    if not fit.ready.get(node.id, False):
        return "not ready"
    if node.draining:
        return "draining"
    if node.cordoned:
        return "cordoned"
    if any(node.labels.get(k) != v for k, v in selector.items()):
        return "node selector mismatch"
    room = node.allocatable - fit.used.get(node.id, Resources())
    if want.cpu_millis > room.cpu_millis:
        return "insufficient cpu"
    if want.memory_bytes > room.memory_bytes:
        return "insufficient memory"
    return ""


def summary(reasons: Iterable[str], total: int) -> str:
    """``0/3 nodes: 2 insufficient memory, 1 cordoned`` (most common reason first)."""
    if total == 0:
        return "0/0 nodes: no node is registered"
    counts = Counter(reasons).most_common()
    return f"0/{total} nodes: " + ", ".join(f"{n} {why}" for why, n in sorted(counts, key=lambda c: (-c[1], c[0])))


def choose(fit: _Fit, want: Resources, selector: dict[str, str]) -> tuple[str, str]:
    """(node id, "") for the best node, or ("", the reason none fits)."""
    reasons: list[str] = []
    best: tuple[int, float, str] | None = None
    for node in fit.nodes:
        why = why_not(node, fit, want, selector)
        if why:
            reasons.append(why)
            continue
        alloc = node.allocatable
        used = fit.used.get(node.id, Resources())
        share = max(
            used.cpu_millis / alloc.cpu_millis if alloc.cpu_millis > 0 else 0.0,
            used.memory_bytes / alloc.memory_bytes if alloc.memory_bytes > 0 else 0.0,
        )
        rank = (fit.per_service[node.id], share, node.id)
        if best is None or rank < best:
            best = rank
    if best is None:
        return "", summary(reasons, len(fit.nodes))
    return best[2], ""


class Scheduler:
    """One per control plane (the leading controller); the only writer of ``placement`` records."""

    def __init__(self, store: Store, cfg: NodeConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.cfg = cfg
        self.clock = clock
        self._seen: dict[str, _Seen] = {}
        # Nodes already found lost (their instances are marked once).
        self._lost: set[str] = set()
        self.wake = asyncio.Event()
        self.busy = False
        # What each service's placement depends on, as its last change seen said (see :meth:`_moves`).
        self._inputs: dict[Key, tuple[Any, ...]] = {}

    # -- node readiness ---------------------------------------------------------------------------
    def _judge(self, nodes: list[Node]) -> tuple[dict[str, bool], set[str]]:
        """Each node's readiness by its heartbeat on this clock, written to its record when it flips."""
        now = self.clock()
        ready: dict[str, bool] = {}
        lost: set[str] = set()
        for node in nodes:
            seen = self._seen.get(node.id)
            if seen is None and not node.ready:
                # Recorded NotReady, it stays so until it beats while this scheduler looks: a
                # scheduler that just took over (a new leader) must not call it Ready on first sight.
                seen = self._seen[node.id] = _Seen(node.beat, now - self.cfg.not_ready_seconds)
            elif seen is None or seen.beat != node.beat:
                # First sight counts as a beat: a scheduler that just started waits a full window.
                seen = self._seen[node.id] = _Seen(node.beat, now)
            quiet = now - seen.at
            ready[node.id] = quiet < self.cfg.not_ready_seconds
            if quiet >= self.cfg.not_ready_seconds + self.cfg.lost_after_seconds:
                lost.add(node.id)
            if ready[node.id] != node.ready:
                self._mark(node.id, ready[node.id])
        for gone in set(self._seen) - {n.id for n in nodes}:
            del self._seen[gone]
        for nid in lost - self._lost:
            self._mark_lost(nid)
        self._lost = lost
        return ready, lost

    def _mark(self, nid: str, ready: bool) -> None:
        log.warning("node %s is %s", nid, "Ready again" if ready else "NotReady (no heartbeat)")

        def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
            if cur is None:
                return None
            return {**cur, "ready": ready, "ready_changed_at": time.time()}

        self.store.update(NODE, SCOPE, nid, mutate)

    def _mark_lost(self, nid: str) -> None:
        """Say so on the lost node's instance records (their state stays: the node may still run them,
        cut off, and stops them itself once it is back and sees them placed elsewhere)."""
        log.warning("node %s is lost: its instances are placed on other nodes", nid)
        quiet = self.cfg.not_ready_seconds + self.cfg.lost_after_seconds
        why = f"Lost: node {nid} has not sent a heartbeat for {quiet:g}s"
        for rec in iter_all(self.store, objects.INSTANCE):
            info = rec.data.get("instance") or {}
            if info.get("node_id") != nid:
                continue

            def mutate(cur: dict[str, Any] | None) -> dict[str, Any] | None:
                if cur is None:
                    return None
                return {**cur, "reason": why, "instance": {**(cur.get("instance") or {}), "status_message": why}}

            self.store.update(objects.INSTANCE, rec.namespace, rec.name, mutate)

    # -- one pass ---------------------------------------------------------------------------------
    def schedule(self) -> None:
        """Place every service's slots (see the module docstring); writes only what changed."""
        nodes = sorted(
            (Node.from_record(r.name, r.data) for r in iter_all(self.store, NODE, SCOPE)), key=lambda n: n.id
        )
        ready, lost = self._judge(nodes)
        services = {(r.namespace, r.name): r for r in iter_all(self.store, objects.SERVICE)}
        placed = {(r.namespace, r.name): r for r in iter_all(self.store, PLACEMENT)}
        for key in placed.keys() - services.keys():
            self.store.delete(PLACEMENT, *key)
        fit = _Fit(nodes, {}, ready, lost)
        known = {n.id for n in nodes}
        wants: dict[Key, Resources] = {}
        for key, rec in services.items():
            res = objects.service_from_record(rec).resources
            wants[key] = requests_of(res.cpu.request, res.memory.request)
            p = Placement.from_record(placed[key].data) if key in placed else Placement()
            for nid in p.slots.values():
                fit.used[nid] = fit.used.get(nid, Resources()) + wants[key]
        self.busy = False
        for key, rec in sorted(services.items()):
            old = Placement.from_record(placed[key].data) if key in placed else None
            new = self._place(key, rec, old, fit, known, wants[key])
            if old != new:
                self.store.put(PLACEMENT, key[0], key[1], new.to_record())

    def _place(
        self, key: Key, rec: Record, old: Placement | None, fit: _Fit, known: set[str], want: Resources
    ) -> Placement:
        svc = objects.service_from_record(rec)
        scale = max(0, svc.scale)
        selector = dict(svc.node_selector)
        slots = dict(old.slots) if old is not None else {}

        def release(i: int) -> None:
            nid = slots.pop(i)
            fit.used[nid] = fit.used.get(nid, Resources()) - want

        for i in [i for i in slots if i >= scale or slots[i] not in known or slots[i] in fit.lost]:
            release(i)
        draining = {n.id for n in fit.nodes if n.draining}
        moving = [i for i in sorted(slots) if slots[i] in draining]
        if moving:
            # One slot at a time, and only while every other slot of the service runs ready.
            self.busy = True
            if self._others_ready(key, {i: n for i, n in slots.items() if i not in moving}):
                release(moving[0])
        fit.per_service = Counter(slots.values())
        message = ""
        for i in range(scale):
            if i in slots:
                continue
            nid, why = choose(fit, want, selector)
            if not nid:
                message = message or why
                continue
            slots[i] = nid
            fit.used[nid] = fit.used.get(nid, Resources()) + want
            fit.per_service[nid] += 1
        if message or any(n in fit.lost for n in slots.values()):
            self.busy = True
        return Placement(slots, message)

    def _others_ready(self, key: Key, slots: dict[int, str]) -> bool:
        """Whether each of ``slots`` has a ready, running instance on its node (read from the store)."""
        if not slots:
            return True
        ok: set[int] = set()
        for rec in iter_all(self.store, objects.INSTANCE, key[0]):
            if objects.instance_service(rec) != key[1]:
                continue
            d = rec.data
            index = int(d.get("index", -1))
            node = str((d.get("instance") or {}).get("node_id") or "")
            if slots.get(index) == node and d.get("state") == RUNNING.value and d.get("ready") and not d.get("retire"):
                ok.add(index)
        return ok >= set(slots)

    # -- loop -------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Pass on every service or node change, and at least every heartbeat period, until ``stop``."""
        watcher = asyncio.create_task(self._watch(await self.store.run(self.store.current_revision)))
        try:
            while not stop.is_set():
                self.wake.clear()
                try:
                    # The whole pass is store work: one unit, off the event loop on PostgreSQL.
                    await self.store.run(self.schedule)
                except Exception:
                    log.exception("scheduling pass failed")
                period = BUSY_SECONDS if self.busy else min(self.cfg.heartbeat_seconds, self.cfg.not_ready_seconds / 4)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(period):
                        waits = {asyncio.ensure_future(self.wake.wait()), asyncio.ensure_future(stop.wait())}
                        try:
                            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                        finally:
                            for w in waits:
                                w.cancel()
                if watcher.done() and not stop.is_set():
                    with contextlib.suppress(Exception):  # the store unreachable: again after the next pass
                        watcher = asyncio.create_task(self._watch(await self.store.run(self.store.current_revision)))
        finally:
            watcher.cancel()
            await asyncio.wait({watcher}, timeout=1.0)

    async def _watch(self, since: int) -> None:
        async for change in self.store.watch(WATCHED, since):
            if change.kind == NODE or self._moves(change):
                self.wake.set()

    def _moves(self, change: Change) -> bool:
        """Whether a service's change can move its placement: it came or went, or its scale, node
        selector or resource requests changed. Not the mark DeleteService sets, nor other edits: a
        pass over a thousand placed slots held the controller's loop for 9 ms of the delete of a
        thousand, in the middle of its stops (bench/README.md, "the scheduler wakes for what moves")."""
        key = (change.namespace, change.name)
        if change.op == DELETED or change.data is None:
            self._inputs.pop(key, None)
            return True
        svc = objects.service_from_record(Record(change.kind, key[0], key[1], change.data, change.revision, 0))
        res = svc.resources
        inputs = (svc.scale, sorted(svc.node_selector.items()), res.cpu.request, res.memory.request)
        if self._inputs.get(key) == inputs:
            return False
        self._inputs[key] = inputs
        return True
