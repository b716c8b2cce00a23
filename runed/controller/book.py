"""The controller's copy of its instance records and their in-memory companions (stop and probe tasks)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rune.api import service_pb2
from runed.controller.instance import AfterStop, Instance, Key
from runed.controller.trash import Trash
from runed.controller.writes import Writes
from runed.core import dirspread
from runed.logs.events import EventWriter
from runed.model import objects
from runed.runner.base import Observation
from runed.store.base import Record, Store, iter_all

log = logging.getLogger("runed.controller")


@dataclass
class Live:
    """What an instance has beside its record while this controller runs: tasks and resolved env."""

    stop_task: asyncio.Future[Observation] | None = None
    # What to do once the stop finishes (the record's ``after_stop`` is what a restarted controller resumes).
    after_stop: AfterStop = AfterStop.STOPPED
    stop_reason: str = ""
    probe_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # The instance's environment with secrets revealed: exec probes run with it (never stored).
    env: dict[str, str] | None = None
    # The service spec the instance runs (its probes'), as it was when it started or was re-adopted.
    service: service_pb2.Service | None = None
    liveness_failed: bool = False

    def cancel_probes(self) -> None:
        for t in self.probe_tasks:
            t.cancel()
        self.probe_tasks.clear()


class Book:
    """The instance records, cached: the controller is their only writer, so this copy is authoritative.

    Callers change an instance on a :meth:`Instance.copy` and :meth:`save` it; the cached object is
    never changed in place, so a save can tell whether anything changed.
    """

    def __init__(
        self,
        store: Store,
        data_dir: Path,
        log_min_free_bytes: int = 0,
        owns: Callable[[Record], bool] | None = None,
        echo_kinds: Collection[str] = (),
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        # Every instance's directory: its records, logs, events and default working directory.
        self.root = data_dir / "instances"
        # Which records are this controller's (a node's: those placed on it); None: every one.
        self.owns = owns
        self._cache: dict[Key, Instance] = {}
        # The ids of every instance record in the store at start-up (this controller's or not): an
        # instance directory named by none of them is a start whose record was never saved.
        self.recorded: set[str] = set()
        # Instances (namespace, id) with an action record (a stop, start or restart asked for):
        # read at start-up, then followed by the controller's watch. An instance that leaves takes
        # its action record with it only if it has one: a deletion of a thousand deleted a thousand
        # records that were not there (bench/README.md, "the tail of a deletion"). One written while
        # the instance leaves is an action of no instance, which the pass that reads it deletes.
        self.acted: set[Key] = set()
        self._live: dict[Key, Live] = {}
        # Services (namespace, name) one of whose instances changed since the reconciler last took
        # this set: the next pass looks at them (and not at every service).
        self.touched: set[Key] = set()
        # Lifecycle events for `StreamLogs(show_events)`, beside each instance's own log.
        self.events = EventWriter(log_min_free_bytes)
        # Record writes not yet in the store (this book's, the statuses', the operations'): they
        # go together once the pass yields, off the event loop (see ``writes``).
        # Their own writes of ``echo_kinds`` are told apart when the watch brings them back.
        self.writes = Writes(store, echo_kinds)
        # A liveness probe of an instance failed (``Live.liveness_failed``) since observe last looked.
        self.liveness_failed = False
        # Deleted instances' directories go here first (see ``trash``).
        self.trash = Trash(data_dir)
        # Records cached but not written yet (see :meth:`hold`): when they are due, with their event.
        self._held: dict[Key, tuple[float, str]] = {}
        # Directories of forgotten instances, with their records, until the deletions are committed.
        self._leaving: list[tuple[tuple[str, str, str], Path]] = []
        # Each instance's directory as a Path (:meth:`path`), and what its log_dir is in the usual place.
        self._paths: dict[Key, Path] = {}
        self._under_root = f"{self.root}/"

    def load(self) -> None:
        """Read every instance record (once, at start-up); make the instances' root if it is missing."""
        self.root.mkdir(parents=True, exist_ok=True)
        dirspread.spread_subdirectories(self.root)
        self.acted = {(rec.namespace, rec.name) for rec in iter_all(self.store, objects.INSTANCE_ACTION)}
        for rec in iter_all(self.store, objects.INSTANCE):
            self.recorded.add(rec.name)
            if self.owns is not None and not self.owns(rec):
                continue
            try:
                inst = Instance.from_record(rec)
            except ValueError as e:
                log.warning("ignoring instance record %s/%s: %s", rec.namespace, rec.name, e)
                continue
            if not inst.log_dir:
                inst.log_dir = str(self.directory(inst.id))
            self._cache[inst.key] = inst

    def directory(self, iid: str) -> Path:
        """Where an instance's logs, events and default working directory live."""
        return self.root / iid

    def path(self, inst: Instance) -> Path:
        """The instance's directory (its ``log_dir``) as a Path, made once: pathlib takes 2-4 µs to
        make one, and a deletion of a thousand instances needed several each (bench/README.md,
        "the signals first")."""
        p = self._paths.get(inst.key)
        if p is None:
            p = self._paths[inst.key] = Path(inst.log_dir or self.directory(inst.id))
        return p

    def get(self, key: Key) -> Instance | None:
        """The cached instance (read it; change a copy)."""
        return self._cache.get(key)

    def __contains__(self, key: Key) -> bool:
        return key in self._cache

    def all(self) -> list[Instance]:
        """Every instance, as a list: callers may save or forget while they walk it."""
        return list(self._cache.values())

    def of_service(self, namespace: str, service: str) -> list[Instance]:
        return [i for i in self._cache.values() if i.namespace == namespace and i.service == service]

    def live(self, key: Key) -> Live:
        """The in-memory companion of an instance, made on first use."""
        lv = self._live.get(key)
        if lv is None:
            lv = self._live[key] = Live()
        return lv

    def peek_live(self, key: Key) -> Live | None:
        return self._live.get(key)

    def lives(self) -> list[Live]:
        return list(self._live.values())

    def event(self, inst: Instance, text: str, at: float | None = None) -> None:
        """Record a lifecycle event of an instance (shown by ``StreamLogs`` with ``show_events``),
        stamped now or at ``at`` (epoch seconds) if that is earlier."""
        self.events.append(self.path(inst), text, at)

    def save(self, inst: Instance) -> None:
        """Write an instance record when it changed (every write wakes every watcher)."""
        held = self._held.pop(inst.key, None)
        if held is not None:
            self.event(inst, held[1])
        elif self._cache.get(inst.key) == inst:
            return
        inst.updated_at = objects.now_rfc3339()
        self._write((objects.INSTANCE, inst.namespace, inst.id), inst.to_record())
        self._cache[inst.key] = inst.copy()
        self.touched.add((inst.namespace, inst.service))

    def hold(self, inst: Instance, due: float, event: str) -> None:
        """Make ``inst`` (a working copy, not changed after) the cached instance now, but write its
        record and ``event`` only at :meth:`release` once ``due`` (epoch seconds) has passed,
        unless it is saved or forgotten before.

        For the Stopping record of an instance that is deleted once stopped: a deletion of a
        thousand instances otherwise wrote a thousand records and events, only to delete them a
        few hundred milliseconds later (bench/README.md, "a delete that writes less"). Held, only the stops still
        under way at ``due`` are written; this controller reads the cache, so it sees the change
        at once. Not copied (as :meth:`save` copies) and not stamped: :meth:`save` stamps the record
        when it is written.
        """
        self._cache[inst.key] = inst
        self.touched.add((inst.namespace, inst.service))
        self._held[inst.key] = (due, event)

    def release(self, now: float) -> float | None:
        """Write the held records due by ``now``; when the next one is due (None: none held)."""
        nxt: float | None = None
        for key, (due, _) in list(self._held.items()):
            if due <= now:
                inst = self._cache.get(key)
                if inst is None:
                    del self._held[key]
                else:
                    self.save(inst.copy())
            elif nxt is None or due < nxt:
                nxt = due
        return nxt

    def forget(self, key: Key) -> None:
        """Forget a stopped instance: its record, its pending action and its directory (logs, work)."""
        self.forget_all([key])

    def forget_all(self, keys: list[Key], *, linger: float = 0.0) -> None:
        """:meth:`forget` each of ``keys``, their record deletions queued at once (a batch of a
        deletion's ends); ``linger`` as for :meth:`Writes.delete_all`.

        The directory is removed once the record's deletion is committed (:meth:`flush`):
        the deletion of a service then comes as soon as its instances ended, not after a thousand
        removals (bench/README.md, "a deletion's stops finished together"). A controller killed in
        between leaves a directory no record names, which the next one removes at start.
        """
        if not keys:
            return
        live, held, cache, paths, leaving, acted = (
            self._live,
            self._held,
            self._cache,
            self._paths,
            self._leaving,
            self.acted,
        )
        deletions: list[tuple[str, str, str]] = []
        for key in keys:
            lv = live.pop(key, None)
            if lv is not None and lv.probe_tasks:
                lv.cancel_probes()
            held.pop(key, None)
            gone = cache.pop(key, None)
            d = paths.pop(key, None)
            if d is None or gone is None or gone.log_dir != self._under_root + key[1]:
                d = self.directory(key[1])
            self.events.forget(d)
            record = (objects.INSTANCE, key[0], key[1])
            deletions.append(record)
            if key in acted:
                acted.discard(key)
                deletions.append((objects.INSTANCE_ACTION, key[0], key[1]))
            leaving.append((record, d))
            if gone is not None:
                self.touched.add((gone.namespace, gone.service))
        self.writes.delete_all(deletions, linger=linger)
        if not self.writes:
            self._tidy()  # committed already (no event loop: written at once)

    def _tidy(self) -> None:
        """Remove the directories of forgotten instances whose record deletions are committed, in
        the background (see ``trash``)."""
        leaving, self._leaving = self._leaving, []
        done: list[Path] = []
        for record, d in leaving:
            if record in self.writes:
                self._leaving.append((record, d))  # not committed yet (a failed commit is retried)
            else:
                done.append(d)
        if done:
            self.trash.remove(done)

    async def removals_done(self) -> None:
        """Wait for the directory removals in flight (at shutdown)."""
        await self.trash.done()

    def _write(self, key: tuple[str, str, str], data: dict[str, Any] | None) -> None:
        if data is None:
            self.writes.delete(*key)
        else:
            self.writes.put(*key, data)

    async def flush(self) -> None:
        """Write the queued records (see :class:`Writes`), then move what they deleted to the trash."""
        await self.writes.flush()
        self._tidy()
