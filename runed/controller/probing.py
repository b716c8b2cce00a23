"""Running an instance's liveness and readiness probes and recording their verdicts on its record."""

from __future__ import annotations

import asyncio
import logging
import time

from runed.controller import probes
from runed.controller.alarm import Alarm
from runed.controller.book import Book
from runed.controller.instance import Instance, Key, ProbeResult
from runed.controller.launch import Launcher, StartInput, inherited_env, references
from runed.controller.passinput import read_records
from runed.controller.states import State
from runed.secrets import envresolve

# One line per HTTP probe is noise, not news.
logging.getLogger("httpx").setLevel(logging.WARNING)

LIVENESS = "liveness"
READINESS = "readiness"
# A probe's stored result is rewritten at least this often (or every period, if longer) while its
# verdict holds, so its counts and observed time are never older than that.
REFRESH_SECONDS = 5.0


class Prober:
    """One probe task per configured probe of each running instance; a liveness failure asks for a restart."""

    def __init__(self, book: Book, launcher: Launcher, alarm: Alarm) -> None:
        self.book = book
        self.launcher = launcher
        self.alarm = alarm

    def cancel(self, key: Key) -> None:
        lv = self.book.peek_live(key)
        if lv is not None:
            lv.cancel_probes()

    def start(self, inst: Instance) -> None:
        """Start the probes of a just-running instance (a working copy, saved here), as the spec it
        runs says (kept since its start: nothing is read from the store here)."""
        self.cancel(inst.key)
        svc = self.book.live(inst.key).service
        if svc is None:
            return
        ports = dict(inst.ports)
        live_spec = probes.probe_spec(svc.health.liveness, svc, ports) if svc.HasField("health") else None
        ready_spec = probes.probe_spec(svc.health.readiness, svc, ports) if svc.HasField("health") else None
        inst.live = True
        inst.ready = ready_spec is None
        inst.probes = {}
        self.book.save(inst)
        lv = self.book.live(inst.key)
        if live_spec is not None:
            lv.probe_tasks.append(asyncio.create_task(self._loop(inst.key, LIVENESS, live_spec)))
        if ready_spec is not None:
            lv.probe_tasks.append(asyncio.create_task(self._loop(inst.key, READINESS, ready_spec)))
        if ready_spec is None:
            self.alarm.wake()

    def _running(self, key: Key) -> Instance | None:
        inst = self.book.get(key)
        return inst if inst is not None and inst.state is State.RUNNING else None

    async def _loop(self, key: Key, which: str, spec: probes.ProbeSpec) -> None:
        st = probes.ProbeState(spec, verdict=(which == LIVENESS))
        await asyncio.sleep(spec.initial_delay)
        while True:
            started = time.monotonic()
            inst = self._running(key)
            if inst is None:
                return
            env = await self._env(inst) if spec.kind == "exec" else {}
            ok, msg = await probes.check(spec, env, inst.workdir or None, inst.uid, inst.gid)
            changed = st.record(ok, msg)
            inst = self._running(key)
            if inst is None:
                return
            last = (inst.probes or {}).get(which)
            last_ok = None if last is None else last.last_ok
            if not ok and last_ok is not False:
                # The first failure of a run of failures, not every one: a failing probe repeats each period.
                self.book.event(inst, f"{which.capitalize()} probe failed: {msg}")
            if which == READINESS and changed:
                self.book.event(inst, "Ready" if st.verdict else f"Not ready: {st.message}")
            # Written when the verdict or the latest result flips, and otherwise once the stored
            # result is older than the refresh interval: counts and times stay fresh (GetHealth's
            # observedAt) while a probe keeps failing or passing, without a write per probe (each
            # write wakes every watcher).
            stale = last is None or st.checked_at - last.ts >= max(spec.period, REFRESH_SECONDS)
            if changed or last_ok is not ok or stale:
                inst = inst.copy()
                result = ProbeResult(
                    ok=st.verdict,
                    last_ok=ok,
                    successes=st.successes,
                    failures=st.failures,
                    message=st.message,
                    ts=st.checked_at,
                )
                inst.probes = {**(inst.probes or {}), which: result}
                if which == READINESS:
                    inst.ready = st.verdict
                else:
                    inst.live = st.verdict
                self.book.save(inst)
                self.alarm.wake()
            if which == LIVENESS and not st.verdict:
                self.book.live(key).liveness_failed = True
                self.book.liveness_failed = True
                self.alarm.wake()
                return
            await asyncio.sleep(max(0.0, spec.period - (time.monotonic() - started)))

    async def _env(self, inst: Instance) -> dict[str, str]:
        """The environment exec probes run with: the instance's own, secrets revealed (kept in memory).

        Known since its start; an instance re-adopted after a controller restart has it resolved
        here once, from records read off the event loop (on PostgreSQL).
        """
        lv = self.book.live(inst.key)
        if lv.env is None:
            svc = lv.service
            if svc is None:
                return {}
            store = self.book.store
            given = StartInput(await store.run(read_records, store, references(svc)))
            try:
                env = self.launcher.env(inst, svc, dict(inst.ports), given, reveal=True)
            except envresolve.ResolveError:
                env = {}
            lv.env = {**inherited_env(), **env}
        return lv.env
