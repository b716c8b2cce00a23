"""The reconciler: drives instances toward the stored desired state and records what it observes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rune.api import common_pb2, service_pb2
from runed.controller.alarm import Alarm, resync_interval, worth_telling
from runed.controller.book import Book
from runed.controller.instance import AfterStop, Instance, Key
from runed.controller.launch import Launcher, StartInput, new_ports, references
from runed.controller.nodeview import NodeView
from runed.controller.operations import Operations
from runed.controller.passinput import OpenOperations, PassInput, RecordKey, read_input, read_records
from runed.controller.probing import Prober
from runed.controller.states import ACTIVE, BACKOFF, EXITED, FATAL, RUNNING, STARTING, STOPPED, STOPPING
from runed.controller.status import StatusWriter
from runed.controller.supervise import Supervisor
from runed.core.config import ControllerConfig
from runed.core.quietgc import QuietCollector
from runed.model import objects
from runed.model.nodes import PLACEMENT
from runed.runner.base import Runner
from runed.secrets.crypto import SecretCrypto
from runed.store.base import ADDED, DELETED, Record, Store, iter_all

log = logging.getLogger("runed.controller")

# After a pass that took t seconds of the loop's CPU (PASS_PAUSE_MIN_SECONDS or more) the loop
# waits t * PASS_PAUSE_RATIO (at most PASS_PAUSE_MAX_SECONDS) before the next: what comes meanwhile
# goes into that one. A cast of a thousand otherwise ran a pass over the whole service for every
# few instances its keeper or shims reported running (≈45 passes of 30 ms at the end of the cast),
# taking the CPU the starts still under way needed (bench/README.md). CPU, not wall time: a pass
# that waited (on a locked or distant store) cost nothing to amortize. A pass over a few instances
# takes a millisecond or two and is followed at once, as before.
PASS_PAUSE_RATIO = 1.0
PASS_PAUSE_MIN_SECONDS = 0.005
PASS_PAUSE_MAX_SECONDS = 0.25

WATCHED_KINDS = (
    objects.SERVICE,
    objects.INSTANCE_ACTION,
    objects.SCALING_OPERATION,
    objects.DELETION_OPERATION,
    objects.SECRET,
    objects.CONFIGMAP,
)


@dataclass(frozen=True)
class Action:
    """A StartInstance/StopInstance/RestartInstance request as the API records it (``instance_action``)."""

    desired: str
    restart_seq: int
    timeout: float | None
    requested_at: float | None

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> Action:
        stamp = data.get("requested_at")
        return cls(
            desired=str(data.get("desired", "running")),
            restart_seq=int(data.get("restart_seq", 0)),
            timeout=float(data.get("timeout_seconds") or 0) or None,
            requested_at=None if stamp is None else float(stamp),
        )


def _instance_keys(store: Store) -> set[Key]:
    """Every instance record's (namespace, id) (blocking: one unit of store work)."""
    return {(r.namespace, r.name) for r in iter_all(store, objects.INSTANCE)}


def _restart_due(inst: Instance) -> bool:
    """In back-off, or stopped to be restarted: a pass may start it again."""
    return inst.state is BACKOFF or (inst.state is STOPPED and inst.after_stop is AfterStop.RESTART)


class Controller:
    """One per controller role process; single event loop, the store is the only channel."""

    def __init__(
        self,
        cfg: ControllerConfig,
        store: Store,
        crypto: SecretCrypto | None,
        data_dir: Path,
        runners: Mapping[str, Runner],
        *,
        node: NodeView | None = None,
        leads: bool = True,
    ) -> None:
        self.cfg = cfg
        # The leading controller advances scaling and deletion operations; a node only stops its own.
        self.leads = leads
        self.store = store
        self.alarm = Alarm()
        # A node runs the instances placed on it; None: every instance (no scheduler).
        self.node = node
        self.book = Book(
            store,
            data_dir,
            cfg.log_min_free_bytes,
            owns=None if node is None else node.owns,
            echo_kinds=OpenOperations.KINDS,
        )
        launcher = Launcher(crypto, cfg, self.book.of_service, self._everywhere)
        self.prober = Prober(self.book, launcher, self.alarm)
        self.supervisor = Supervisor(self.book, runners, launcher, self.prober, self.alarm, cfg)
        self.status = StatusWriter(store, self.book.writes)
        self.operations = Operations(
            store,
            self.book,
            self.supervisor.retire_all,
            self.status,
            self.alarm,
            counted=self._everywhere,
            copies=self._copies,
            known=None if node is None else node.knows,
        )
        # Full garbage collections at the loop's quiet moments, not in a pass (a delete's ends wait).
        self.collector = QuietCollector()
        # When the last full pass began (monotonic: a stepped wall clock neither stops nor floods them).
        self.last_full = -math.inf
        # Seconds from one full pass to the next: ``resync_seconds``, longer while one costs more
        # than the safety net's share of a core (:func:`resync_interval`).
        self.resync_every = cfg.resync_seconds
        # The interval last logged (:meth:`_resync_after`).
        self._resync_told = cfg.resync_seconds
        # Deletion operations the watch brought (namespace, data): their instances are stopped first
        # in the next pass (:meth:`_stop_deleted`).
        self.deletions_asked: list[tuple[str, dict[str, Any]]] = []
        # Instance actions (namespace, instance id) changed since the last pass.
        self.actions_changed: set[Key] = set()
        # The scaling and deletion operations to advance (the leader's: it reads no finished one).
        self.ops = OpenOperations()
        # Service -> the services that depend on it (learnt as services are reconciled).
        self.dependents: dict[Key, set[Key]] = {}
        # This node's instances whose records another host deleted (DeleteNode while this node was
        # away): stopped for good in the next pass, and what is placed here starts anew.
        self.vanished: set[Key] = set()

    # -- main loop ------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event, on_ready: Callable[[str], None]) -> None:
        """Passes on events, not on a clock: idle, the loop sleeps until something is reported.

        What wakes it: a store change (the change log), a shim's exit (its pidfd), a probe verdict,
        a finished stop, a due timer (back-off, gradual scaling); and, while an instance is starting
        or its runner cannot report its end, a short tick. A pass reconciles the services whose
        inputs changed; every ``resync_seconds`` one pass looks at all of them (the safety net; less
        often while one costs more than its share of a core, :func:`~runed.controller.alarm.resync_interval`).
        """
        since, specs = await self.store.run(self._load)
        # What a crash left of deleted instances' directories.
        self.book.trash.empty_soon()
        if self.node is not None:
            self._adopt_legacy(self.node)
        for inst in self.book.all():
            # What re-adopted instances run (a start taken over too): their probes are started with it.
            self.book.live(inst.key).service = specs.get((inst.namespace, inst.service))
        self.supervisor.adopt()
        watcher = asyncio.create_task(self._watch(since))
        await self.reconcile_all()
        on_ready("controller")
        pause = 0.0
        self.collector.install()
        try:
            while not stop.is_set():
                if pause and not self.alarm.rushed.is_set():
                    # A costly pass is not followed at once by the next (see PASS_PAUSE_RATIO).
                    await self._pause(pause, stop)
                self.alarm.rushed.clear()
                with contextlib.suppress(TimeoutError):
                    # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancellation that
                    # arrives as the awaited event fires.
                    async with asyncio.timeout(self._wait_seconds()):
                        await self.alarm.event.wait()
                began = time.thread_time()
                woke = self.alarm.event.is_set()
                self.alarm.event.clear()
                now = time.time()
                due = self.alarm.next_due and now >= self.alarm.next_due
                if due:
                    # Fired. Timers still pending register again: back-offs in observe(), gradual
                    # scaling in the pass.
                    self.alarm.next_due = 0.0
                self._stop_deleted()
                try:
                    changed = self.supervisor.observe()
                except Exception:
                    log.exception("observing instances failed")
                    changed = True
                full = time.monotonic() - self.last_full >= self.resync_every
                if woke or changed or due or full:
                    try:
                        await (self.reconcile_all() if full else self.reconcile_changed())
                    except Exception:
                        log.exception("reconcile pass failed")
                # The pass's record writes, in one transaction (also retries a failed one).
                await self.book.flush()
                spent = time.thread_time() - began
                if full and not (woke or changed or due):
                    # The safety net's own pass (nothing else asked for it): what one costs idle.
                    self._resync_after(spent)
                self.collector.worked()
                pause = (
                    min(PASS_PAUSE_MAX_SECONDS, spent * PASS_PAUSE_RATIO) if spent >= PASS_PAUSE_MIN_SECONDS else 0.0
                )
                if watcher.done() and not stop.is_set():
                    exc = watcher.exception() if not watcher.cancelled() else None
                    if exc is not None:
                        log.warning("store watch ended (%s); resuming from the current revision", exc)
                    # Changes may have been missed meanwhile: the next pass looks at everything,
                    # and this node's instances whose records went meanwhile are looked for.
                    self.alarm.touch(None)
                    self.ops.missed()
                    try:
                        since = await self.store.run(self.store.current_revision)
                        self.book.writes.drop_echoes(since)
                        if self.node is not None:
                            # The other nodes' instances written or gone meanwhile, too.
                            await self.store.run(self.node.load, since)
                            self._vanish(await self._records_gone())
                    except Exception as e:
                        log.warning("cannot read the store's revision (%s); retrying", e)
                    else:
                        watcher = asyncio.create_task(self._watch(since))
        finally:
            self.collector.close()
            watcher.cancel()
            # Bounded, so a stuck watcher can never hold up shutdown.
            await asyncio.wait({watcher}, timeout=1.0)
            self.supervisor.exits.close()
            for lv in self.book.lives():
                lv.cancel_probes()
            # Instances are left running on purpose: a controller restart re-adopts them. Stops in
            # flight are finished so no process is left half-stopped.
            pending = [lv.stop_task for lv in self.book.lives() if lv.stop_task and not lv.stop_task.done()]
            if pending:
                await asyncio.wait(pending, timeout=5)
            # Stops still under way are recorded (the next controller goes on with them).
            self.book.release(math.inf)
            await self.book.flush()
            await self.book.removals_done()

    def _stop_deleted(self) -> None:
        """Stop the instances of the services whose deletion the watch brought since the last pass,
        before this pass looks at every instance and reads the store (2-3 ms with 1,000 instances,
        the signals' wait before; bench/README.md, "a deletion's signals first in its pass"). The
        pass then finds them stopping, and advances the deletion as before; should this fail, the
        pass stops them itself."""
        asked, self.deletions_asked = self.deletions_asked, []
        for namespace, data in asked:
            try:
                self.operations.deletion_asked(namespace, data)
            except Exception:
                log.exception("stopping the instances of a deletion in %s failed; the pass goes on", namespace)

    def _resync_after(self, spent: float) -> None:
        """Space the full passes by what the last idle one cost (``spent`` seconds of CPU); an
        operator learns from the log when they come much less (or again more) often than
        ``controller.resync_seconds`` says."""
        self.resync_every = resync_interval(self.cfg.resync_seconds, spent)
        if worth_telling(self._resync_told, self.resync_every):
            self._resync_told = self.resync_every
            log.info(
                "full passes (the safety net) every %.3g s: one takes %.3g ms of CPU (controller.resync_seconds: %g)",
                self.resync_every,
                spent * 1000,
                self.cfg.resync_seconds,
            )

    async def _pause(self, seconds: float, stop: asyncio.Event) -> None:
        """Wait ``seconds``, or until ``stop`` or a rush (:meth:`Alarm.rush`)."""
        waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.alarm.rushed.wait())}
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    def _load(self) -> tuple[int, dict[Key, service_pb2.Service]]:
        """What the controller keeps in memory, read at start-up (one unit of store work); returns the
        revision to watch from and the specs of the services of the instances."""
        since = self.store.current_revision()
        self.book.load()
        if self.node is not None:
            self.node.load(since)
        self.status.load()
        specs: dict[Key, service_pb2.Service] = {}
        for skey in {(i.namespace, i.service) for i in self.book.all()}:
            rec = self.store.get(objects.SERVICE, *skey)
            if rec is not None:
                specs[skey] = objects.service_from_record(rec)
        return since, specs

    async def _records_gone(self) -> set[Key]:
        """This node's instances whose records are not in the store: of those whose records were
        written before the store is read (the queued writes committed first), those it does not hold."""
        await self.book.flush()
        written = {i.key for i in self.book.all() if (objects.INSTANCE, i.namespace, i.id) not in self.book.writes}
        stored = await self.store.run(_instance_keys, self.store)
        return written - stored

    def _vanish(self, keys: set[Key]) -> None:
        """Have the next pass stop ``keys`` for good (their records were deleted by another host)."""
        for key in keys:
            inst = self.book.get(key)
            if inst is not None and not inst.retire:
                self.vanished.add(key)
                self.alarm.touch((inst.namespace, inst.service))

    def _wait_seconds(self) -> float:
        """How long the loop may sleep without a wake-up: until the resync, a due timer or the next tick."""
        now = time.time()
        wait = self.last_full + self.resync_every - time.monotonic()
        if self.alarm.next_due:
            wait = min(wait, self.alarm.next_due - now)
        if self.supervisor.tick is not None:
            wait = min(wait, self.supervisor.tick)
        return max(0.0, wait)

    def _adopt_legacy(self, node: NodeView) -> None:
        """Instances recorded before nodes existed are this node's: their records name it from now on."""
        for inst in self.book.all():
            if inst.node_id != node.id or inst.ip != node.address:
                mine = inst.copy()
                mine.node_id, mine.ip = node.id, node.address
                self.book.save(mine)

    async def _watch(self, since: int) -> None:
        kinds = WATCHED_KINDS if self.node is None else (*WATCHED_KINDS, PLACEMENT, objects.INSTANCE)
        # No deletion's data is read: only its key is (its own deleted instances come back here).
        async for change in self.store.watch(kinds, since, deletion_data=False):
            if self.node is not None and self.node.taken(change.revision):
                # A deletion waited for the view of the other nodes' copies to come this far.
                self.alarm.wake()
            if change.kind in (PLACEMENT, objects.INSTANCE):
                assert self.node is not None
                key = (change.namespace, change.name)
                if change.kind == objects.INSTANCE and key in self.book:
                    # This node's own instance, written by this controller: not even decoded. Its own
                    # deletions come once it has forgotten the instance; one before is another host's.
                    if change.op == DELETED:
                        self._vanish({key})
                    continue
                # Placements and other nodes' instances (this node's own gone from the book: ignored).
                skey = self.node.on_change(change)
                if skey is not None:
                    self.alarm.touch(skey)
            elif change.kind in (objects.SECRET, objects.CONFIGMAP):
                # Any service may refer to it (env, mounts, dependencies).
                self.alarm.refs_changed = True
                self.alarm.touch(None)
            elif change.kind == objects.SERVICE:
                self.alarm.touch((change.namespace, change.name))
            elif change.kind == objects.INSTANCE_ACTION:
                key = (change.namespace, change.name)
                if change.op == DELETED:
                    self.book.acted.discard(key)
                else:
                    self.book.acted.add(key)
                inst = self.book.get(key)
                self.actions_changed.add(key)
                self.alarm.touch(None if inst is None else (inst.namespace, inst.service))
            elif change.kind in OpenOperations.KINDS:
                if self.book.writes.echo((change.kind, change.namespace, change.name), change.revision):
                    # This controller's own update: the pass that made it knew it, and the next
                    # pass reads the operation again if it is still open. A delete of a thousand
                    # made one or two such passes between its first and its last, each a look at
                    # every instance (3-5 ms of the loop's CPU while the instances were ending).
                    continue
                # Read again by the next pass, which advances them (the leader's: a node's reads none).
                if self.leads:
                    self.ops.changed.add((change.kind, change.namespace, change.name))
                    if change.kind == objects.DELETION_OPERATION and change.op == ADDED and change.data is not None:
                        # Its instances are stopped first thing in that pass (:meth:`_stop_deleted`).
                        self.deletions_asked.append((change.namespace, change.data))
                self.alarm.wake()

    # -- reconciliation -------------------------------------------------------------------------
    async def reconcile_all(self) -> None:
        """A pass over every service, every instance action and every instance (the safety net)."""
        self.last_full = time.monotonic()
        await self._reconcile(None)

    async def reconcile_changed(self) -> None:
        """A pass over the services whose inputs changed since the last pass (a full one when any may have)."""
        if self.alarm.everything:
            await self.reconcile_all()
            return
        await self._reconcile(self.alarm.services | self.book.touched)

    async def _reconcile(self, only: set[Key] | None) -> None:
        """One pass: its reads as one unit of store work (off the event loop on PostgreSQL), and a
        second for what its starts will read, then the pass on the loop; its writes are queued
        (``book.writes``)."""
        self.alarm.services, self.alarm.everything, self.book.touched = set(), False, set()
        refs_changed, self.alarm.refs_changed = self.alarm.refs_changed, False
        if only is not None:
            # Dependents follow what they depend on (its readiness decides whether they start).
            only = only | {d for k in only for d in self.dependents.get(k, ())}
        changed_actions, self.actions_changed = self.actions_changed, set()
        if only is not None:
            # An instance action is applied in the pass over its instance's service (which it may start).
            acted = (self.book.get(k) for k in changed_actions)
            only = only | {(i.namespace, i.service) for i in acted if i is not None}
        # The actions of instances in back-off or due a restart: a restart waits while one says "stopped".
        backoff = [(objects.INSTANCE_ACTION, i.namespace, i.id) for i in self.book.all() if _restart_due(i)]
        ops = self.ops.take(full=only is None) if self.leads else None
        try:
            got = await self.store.run(read_input, self.store, only, changed_actions, backoff, operations=ops)
        except BaseException:
            if ops is not None:
                # What it was to read (those written since among them) is read with every other.
                self.ops.missed()
            raise
        if self.leads:
            self.ops.read(got)
        # Deletions first, before what the pass's starts will read is worked out: their signals go
        # out now, while the other core is idle (a deletion of a thousand: 1-1.5 ms sooner).
        deleting = self.operations.run_deletions(got.deletions) if self.leads else set()
        given = StartInput(got)
        more = got.missing(self._start_reads(got, given))
        if more:
            got.add(await self.store.run(read_records, self.store, more))
        self._pass(only, got, given, refs_changed, deleting)

    def _start_reads(self, got: PassInput, given: StartInput) -> set[RecordKey]:
        """What the pass's dependency checks and starts will read: the dependencies of every service
        of the pass, and what a start reads (:func:`references`) for each service that may start an
        instance: one missing or of an older spec, in back-off or due a restart, or asked to start.
        Reading more than the pass needs costs a read; less, a read on the event loop."""
        acted: set[Key] = set()
        for key, rec in got.actions.items():
            inst = self.book.get(key)
            if inst is not None:
                act = Action.from_record(rec.data)
                if act.restart_seq > inst.restart_seq_seen or act.requested_at != inst.action_applied_at:
                    acted.add((inst.namespace, inst.service))
        items: dict[Key, list[Instance]] = {}
        for inst in self.book.all():
            if not inst.retire:
                items.setdefault((inst.namespace, inst.service), []).append(inst)
        want: set[RecordKey] = set()
        for skey in got.services:
            svc = given.service(*skey)
            if svc is None:
                continue
            for dep in svc.dependencies:
                dns = dep.namespace or skey[0]
                if dep.service:
                    want.add((objects.SERVICE, dns, dep.service))
                elif dep.secret:
                    want.add((objects.SECRET, dns, dep.secret))
                elif dep.configmap:
                    want.add((objects.CONFIGMAP, dns, dep.configmap))
            mine = items.get(skey, [])
            may = skey in acted or any(_restart_due(i) for i in mine)
            if not may and svc.scale > 0:
                want_hash = given.spec_hash(svc)
                current = {i.index for i in mine if i.spec_hash == want_hash}
                may = not current.issuperset(range(svc.scale))
            if may:
                want |= references(svc)
        return want

    def _pass(
        self, only: set[Key] | None, got: PassInput, given: StartInput, refs_changed: bool, deleting: set[Key]
    ) -> None:
        """Instance actions, then each service of ``only`` (None: all), then scaling; ``deleting``:
        the services whose deletions the pass advanced (:meth:`Operations.run_deletions`)."""
        services = got.services
        actions = {k: Action.from_record(r.data) for k, r in got.actions.items()}
        vanished, self.vanished = self.vanished, set()
        for key in vanished:
            inst = self.book.get(key)
            if inst is not None:
                log.warning("instance %s/%s: its record was deleted by another host; stopping it", *key)
                self.supervisor.retire(inst, "its record was deleted (its node was deleted while away)")
        by_service: dict[Key, list[Instance]] = {}
        for inst in self.book.all():
            skey = (inst.namespace, inst.service)
            if only is None or skey in only:
                by_service.setdefault(skey, []).append(inst)
        # Instances whose service is gone (deleted without an operation) are stopped and removed.
        for skey, items in by_service.items():
            if skey not in services and skey not in deleting:
                for inst in items:
                    self.supervisor.retire(inst, "service deleted")
        if only is None:
            self.status.prune(lambda k: k in services or k in deleting)
        else:
            gone = only - services.keys() - deleting
            if gone:
                self.status.prune(lambda k: k not in gone)
        for key, act in actions.items():
            if key in self.book:
                self._apply_action(key, act, given)
            else:
                self.book.writes.delete(objects.INSTANCE_ACTION, key[0], key[1])
        runs = self.node is None or self.node.runs
        for skey, rec in services.items():
            marked = rec.data.get("deletion")
            if marked and not self.leads:
                grace = marked.get("grace_period") if isinstance(marked, dict) else None
                self.supervisor.retire_all(
                    by_service.get(skey, []), "service deleted", grace=None if grace is None else float(grace)
                )
            if skey in deleting or marked or not runs:
                continue
            try:
                self.reconcile_service(rec, by_service.get(skey, []), got, given, refs_changed=refs_changed)
            except Exception:
                log.exception("reconcile of service %s/%s failed", *skey)
        if self.leads:
            self.operations.run_scaling(services, got.scalings, lambda k: got.get(objects.SERVICE, *k))
            self.operations.prune((*got.deletions, *got.scalings), self.cfg.finished_operations_seconds)

    def _apply_action(self, key: Key, act: Action, given: StartInput) -> None:
        cached = self.book.get(key)
        if cached is None or cached.retire:
            return
        inst = cached.copy()
        sup = self.supervisor
        state = inst.state
        lv = self.book.live(key)
        if act.restart_seq > inst.restart_seq_seen:
            inst.restart_seq_seen = act.restart_seq
            inst.action_applied_at = act.requested_at
            inst.consecutive_failures = 0
            if state in ACTIVE and state is not STOPPING:
                sup.begin_stop(inst, after=AfterStop.RESTART, reason="Restarting on request", grace=act.timeout)
            elif state is STOPPING:
                lv.after_stop = AfterStop.RESTART
                self.book.save(inst)
            else:
                if state is BACKOFF:
                    sup.set_state(inst, STOPPED, "Restarting on request")
                sup.start(inst, reason="Restarted on request", given=given)
            return
        # A request is carried out once: a later exit is the restart policy's business again (a
        # Never instance started by hand does not come back after it exits).
        if act.requested_at == inst.action_applied_at or state is STOPPING:
            return
        inst.action_applied_at = act.requested_at
        if act.desired == "stopped" and state in (STARTING, RUNNING, BACKOFF, EXITED, FATAL):
            sup.begin_stop(inst, after=AfterStop.STOPPED, reason="Stopped on request", grace=act.timeout)
        elif act.desired == "running" and state in (STOPPED, EXITED, FATAL) and lv.stop_task is None:
            inst.consecutive_failures = 0
            sup.start(inst, reason="Started on request", given=given)
        else:
            if act.desired == "stopped":
                inst.after_stop = None  # a restart still due is called off
            self.book.save(inst)

    def _deps_ready(self, svc: service_pb2.Service, ns: str, got: PassInput) -> str:
        """ "" when every dependency is there and ready, else what is awaited."""
        for dep in svc.dependencies:
            dns = dep.namespace or ns
            if dep.service:
                known = got.get(objects.SERVICE, dns, dep.service) is not None
                if not known:
                    return f"waiting for dependency service {dns}/{dep.service}"
                if not any(i.state is RUNNING and i.ready for i in self._everywhere(dns, dep.service)):
                    return f"waiting for dependency service {dns}/{dep.service} to be ready"
            elif dep.secret and got.get(objects.SECRET, dns, dep.secret) is None:
                return f"waiting for dependency secret {dns}/{dep.secret}"
            elif dep.configmap and got.get(objects.CONFIGMAP, dns, dep.configmap) is None:
                return f"waiting for dependency configmap {dns}/{dep.configmap}"
        return ""

    def _new_instance(self, svc: service_pb2.Service, rec: Record, index: int, given: StartInput) -> Instance:
        iid = str(uuid.uuid4())
        inst = Instance.new(
            svc,
            svc.namespace or rec.namespace,
            int(rec.data.get("generation", 1)),
            index,
            iid,
            self.book.directory(iid),
            given.spec_hash(svc),
        )
        inst.ports = new_ports(svc)
        if self.node is not None:
            inst.node_id, inst.ip = self.node.id, self.node.address
        return inst

    def _everywhere(self, namespace: str, service: str) -> list[Instance]:
        """A service's instances on this node and, for a node, on the others where they are placed
        (a lost node's copy, placed elsewhere since, no longer counts)."""
        mine = self.book.of_service(namespace, service)
        return mine if self.node is None else self.node.counted((namespace, service), mine)

    def _copies(self, namespace: str, service: str) -> list[Instance]:
        """Every copy of a service's instances still to stop: this node's and the others' (a lost node's
        are not waited for: it stops them itself once back and sees the service gone)."""
        mine = self.book.of_service(namespace, service)
        if self.node is None:
            return mine
        return mine + [i for i in self.node.remote_of(namespace, service) if not i.reason.startswith("Lost: ")]

    def reconcile_service(
        self, rec: Record, items: list[Instance], got: PassInput, given: StartInput, *, refs_changed: bool = False
    ) -> None:
        """One service: restarts due (after a stop, after back-off), scale up and down, rolling
        update, then its status."""
        sup = self.supervisor
        svc = given.service(rec.namespace, rec.name) or objects.service_from_record(rec)
        skey = (rec.namespace, rec.name)
        for waiting in self.dependents.values():
            waiting.discard(skey)
        for dep in svc.dependencies:
            if dep.service:
                self.dependents.setdefault((dep.namespace or rec.namespace, dep.service), set()).add(skey)
        want_hash = given.spec_hash(svc)
        scale = max(0, svc.scale)
        gen = int(rec.data.get("generation", 1))
        message = ""
        rolling = False
        current = [i for i in items if not i.retire]
        # A node runs the indexes placed on it; one placed elsewhere (drained, moved) stops here.
        here = None if self.node is None else self.node.indexes(skey, current)
        if here is not None:
            for inst in current:
                if inst.index not in here and inst.index < scale:
                    sup.retire(inst, "placed on another node")
            current = [i for i in current if i.index in here or i.index >= scale]
        # Restart instances stopped to be restarted (on request), and those whose back-off elapsed
        # (or that wait on a secret or configmap that changed).
        now = time.time()
        for inst in current:
            fresh = self.book.get(inst.key)
            if fresh is not None and fresh.state is STOPPED and fresh.after_stop is AfterStop.RESTART:
                act = got.get(objects.INSTANCE_ACTION, inst.namespace, inst.id)
                if act is not None and act.data.get("desired") == "stopped":
                    called_off = fresh.copy()  # asked to stop since
                    called_off.after_stop = None
                    self.book.save(called_off)
                else:
                    sup.start(fresh.copy(), reason="Restarted on request", given=given)
                continue
            waiting_on_ref = refs_changed and inst.config_error
            if inst.state is BACKOFF and ((inst.next_restart_at or 0.0) <= now or waiting_on_ref):
                act = got.get(objects.INSTANCE_ACTION, inst.namespace, inst.id)
                fresh = self.book.get(inst.key)
                if fresh is not None and (act is None or act.data.get("desired", "running") == "running"):
                    sup.start(fresh.copy(), reason="Restarting after back-off", given=given)
        # Scale down: the highest indexes go first.
        for inst in current:
            if inst.index >= scale:
                sup.retire(inst, "scaled down")
        current = [i for i in current if i.index < scale]
        by_index: dict[int, list[Instance]] = {}
        for inst in current:
            by_index.setdefault(inst.index, []).append(inst)
        deps = self._deps_ready(svc, rec.namespace, got)
        surge = svc.HasField("health") and svc.health.readiness.type != common_pb2.PROBE_TYPE_UNSPECIFIED
        # Two instances cannot bind one expose.host_port: the old one goes before its replacement starts.
        surge = surge and not svc.expose.host_port
        if deps:
            message = deps
        else:
            # A replacement waits until the instance it replaces has let go of the host port.
            holding = {x.index for x in items if x.retire} if svc.expose.host_port else set()
            for i in range(scale):
                if i not in by_index and i not in holding and (here is None or i in here):
                    sup.start(self._new_instance(svc, rec, i, given), reason="Starting", given=given)
            # Rolling update: one index at a time; a surge instance must be ready before its old one goes.
            for i in sorted(by_index):
                group = by_index[i]
                new = [x for x in group if x.spec_hash == want_hash]
                old = [x for x in group if x.spec_hash != want_hash]
                if not old:
                    # Duplicates at one index (left by an interrupted rollout) keep the newest.
                    for x in sorted(new, key=lambda x: x.created_at)[:-1]:
                        sup.retire(x, "duplicate")
                    continue
                rolling = True
                if surge:
                    if not new:
                        sup.start(
                            self._new_instance(svc, rec, i, given), reason="Starting (rolling update)", given=given
                        )
                        break
                    if any(x.ready and x.state is RUNNING for x in new):
                        for x in old:
                            sup.retire(x, "replaced by rolling update")
                    break
                for x in old:
                    sup.retire(x, "replaced by rolling update")
                break
            if rolling:
                message = "rolling update in progress"
        # Same-spec instances pick up generation bumps that did not change what runs (labels, scale).
        for inst in current:
            if inst.spec_hash == want_hash and inst.generation != gen and not inst.retire:
                bumped = (self.book.get(inst.key) or inst).copy()
                bumped.generation = gen
                self.book.save(bumped)
        mine = self.book.of_service(rec.namespace, rec.name)
        if self.node is not None:
            mine = self.node.counted(skey, mine)
            placed = self.node.placement(skey)
            message = message or (placed.message if placed is not None else "waiting for the scheduler")
        self.status.write(rec, svc, scale, message, mine, rolling=rolling)
