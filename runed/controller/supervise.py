"""Instance supervision: start, observe, stop, and the restart policy with its back-off."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

from rune.api import common_pb2, service_pb2
from runed.controller.alarm import Alarm
from runed.controller.book import Book, Live
from runed.controller.exitwatch import ExitWatch
from runed.controller.instance import AfterStop, Instance, Key, RestartPolicy
from runed.controller.launch import Launcher, StartInput
from runed.controller.probing import LIVENESS, Prober
from runed.controller.states import ACTIVE, BACKOFF, EXITED, FATAL, NEW, RUNNING, STARTING, STOPPED, STOPPING, State
from runed.controller.stopgroup import StopGroup
from runed.core.config import ControllerConfig
from runed.runner.base import Observation, Runner, RunnerError
from runed.secrets import envresolve

log = logging.getLogger("runed.controller")

# How often the loop looks at instances nothing reports on: fast while one is starting (a user is
# waiting), slower for a running one whose runner offers no exit descriptor.
FAST_TICK_SECONDS = 0.02
TICK_SECONDS = 0.1
# The safety net for an end the watch missed, this often (or every resync, if slower): one poll(2)
# over every watched descriptor (a wake-up the loop lost), and a full look (the instance's files
# and /proc entries: a shim stuck after its process ended) at one of SWEEP_SLICES slices of the
# running instances, so each is looked at every SWEEP_SECONDS * SWEEP_SLICES. Looking at all of
# them every sweep was most of an idle controller's CPU at a thousand instances (bench/README.md).
SWEEP_SECONDS = 30.0
SWEEP_SLICES = 10
# An instance stopped to be deleted (a deletion, a scale-down, a replacement) is recorded as
# Stopping only if its stop takes longer than this: most end sooner, and their records go from
# Running to deleted (a deletion of a thousand wrote a thousand records only to delete them).
STOPPING_RECORD_AFTER_SECONDS = 0.5

# Policies under which an instance that exited on its own comes back (the unset policy is Always).
ALWAYS = (common_pb2.RESTART_POLICY_ALWAYS, common_pb2.RESTART_POLICY_UNSPECIFIED)


def policy_word(policy: RestartPolicy) -> str:
    """The restart policy as cast files spell it (the unset policy is Always)."""
    return {common_pb2.RESTART_POLICY_ON_FAILURE: "OnFailure", common_pb2.RESTART_POLICY_NEVER: "Never"}.get(
        policy, "Always"
    )


class Supervisor:
    """Drives single instances through the state table; each change is saved and logged as an event."""

    def __init__(
        self,
        book: Book,
        runners: Mapping[str, Runner],
        launcher: Launcher,
        prober: Prober,
        alarm: Alarm,
        cfg: ControllerConfig,
    ) -> None:
        self.book = book
        self.runners = runners
        self.launcher = launcher
        self.prober = prober
        self.alarm = alarm
        self.cfg = cfg
        # Running instances whose end the event loop reports: not polled every tick.
        self.exits = ExitWatch(alarm)
        self._last_sweep = -math.inf  # the first pass sweeps
        # The slice of the watched instances the current sweep looks at in full.
        self._slice = 0
        # Seconds until the next pass must look at instances again (None: nothing needs polling;
        # exits, probes, stops and timers wake the loop). Set by each :meth:`observe` and by a start.
        self.tick: float | None = FAST_TICK_SECONDS

    def runner(self, inst: Instance) -> Runner:
        return self.runners.get(inst.runner, self.runners["process"])

    def runner_for(self, svc: service_pb2.Service) -> Runner:
        return self.runners["container" if svc.runtime == "container" else "process"]

    def _watch(self, inst: Instance) -> None:
        """Be told when the running ``inst`` ends instead of polling it (if its runner can tell)."""
        self.exits.add(inst.key, self.runner(inst).exit_fd(self.book.path(inst), inst.handle))

    def set_state(self, inst: Instance, to: State, reason: str, *, config_error: bool = False) -> None:
        """Apply one transition of the table to a working copy and save it."""
        inst.transition(to, reason, config_error=config_error)
        self.book.save(inst)

    def _schedule_restart(self, inst: Instance) -> float:
        """The next back-off: doubles with each consecutive failure, up to the maximum. Returns the delay."""
        n = inst.consecutive_failures
        delay = min(self.cfg.restart_backoff_max_seconds, self.cfg.restart_backoff_initial_seconds * float(2**n))
        inst.consecutive_failures = n + 1
        inst.next_restart_at = time.time() + delay
        self.alarm.due(inst.next_restart_at)
        return delay

    # -- adoption -------------------------------------------------------------------------------
    def adopt(self) -> None:
        """After a (re)start: re-attach to live instances, apply the restart policy to the dead.

        A start is saved after it was asked for, so a controller killed in between leaves a start
        its record does not show: one of a new instance (no record: it is ended, as the reconciler
        starts that instance afresh) or a restart (the record shows the run before: the start is
        taken over). Either way one process per instance, never two.
        """
        self._abandon_unrecorded()
        for cached in self.book.all():
            inst = self._take_over_later_start(cached)
            state = inst.state
            if state not in ACTIVE:
                continue
            obs = self.runner(inst).observe(self.book.path(inst), inst.handle)
            # "exiting": the process is gone and its shim still writes; observe() sees the end.
            if obs.state in ("running", "starting", "exiting") and state is not STOPPING:
                log.info("re-adopted instance %s/%s (pid %s)", inst.namespace, inst.name, obs.handle.pid)
                inst.apply_handle(obs.handle)
                if obs.state == "running" and state is STARTING:
                    self.set_state(inst, RUNNING, "Running")
                else:
                    if state is RUNNING and inst.running_since is None:
                        # A record from a controller that kept the run's start in memory only.
                        inst.running_since = time.time()
                    self.book.save(inst)
                if obs.state == "running":
                    self.prober.start(inst)
                    self._watch(inst)
            elif state is STOPPING:
                self.begin_stop(inst, after=inst.after_stop or AfterStop.STOPPED, reason=inst.reason)
            else:
                self.on_exit(inst, obs)

    def _take_over_later_start(self, cached: Instance) -> Instance:
        """A working copy of ``cached``, moved on to a start its record does not show, if there is one."""
        inst = cached.copy()
        later = self.runner(inst).later_start(self.book.path(inst), inst.handle)
        if later is None:
            return inst
        log.info("instance %s/%s: taking over a start its record does not show", inst.namespace, inst.name)
        inst.pid, inst.pid_start, inst.shim_pid, inst.shim_start = 0, None, 0, None
        inst.apply_handle(later)
        inst.restart_count += 1
        inst.next_restart_at = None
        if inst.state is STOPPING:
            self.book.save(inst)  # the stop (and what follows it) applies to that start
        else:
            self.set_state(inst, STARTING, "Starting (taken over after a controller restart)")
        return inst

    def _abandon_unrecorded(self) -> None:
        """End what runs in instance directories no record names, and remove them."""
        try:
            dirs = [d for d in self.book.root.iterdir() if d.is_dir() and d.name not in self.book.recorded]
        except OSError:
            return
        for d in dirs:
            for runner in self.runners.values():
                runner.abandon(d)
            log.warning("instance directory %s has no record (its start was never saved): removed", d.name)
            # Renamed into the trash at once: nothing is left under its old path for a late shim.
            self.book.trash.put(d)

    # -- per-tick observation -------------------------------------------------------------------
    def observe(self) -> bool:
        """Observe active instances and run due timers; True when something changed.

        A running instance whose end is watched (:class:`ExitWatch`) is looked at only once its
        watch fires, and by the sweep (the safety net, see :data:`SWEEP_SECONDS`); the others
        (still starting, or of a runner that cannot tell) are looked at on every pass.
        """
        changed = False
        now = time.time()
        tick: float | None = None
        # Intervals on the monotonic clock: a stepped wall clock neither stops nor floods them.
        mono = time.monotonic()
        sweep = mono - self._last_sweep >= max(self.cfg.resync_seconds, SWEEP_SECONDS)
        if sweep:
            self._last_sweep = mono
            self._slice = (self._slice + 1) % SWEEP_SLICES
            # Fired watches leave the watch: their instances are looked at below, in this pass.
            self.exits.check()
        if sweep or self.exits.fired:
            self.exits.fired = False
            for r in self.runners.values():
                r.reap()
        # Whether a liveness probe has failed since the last look (Book.liveness_failed): if not, a
        # running instance whose end is watched needs no look at all. With 1,000 running, the wake-up
        # before a deletion's signals took 1.9-2.6 ms to reach its pass, now 1.4 (bench/README.md).
        liveness, self.book.liveness_failed = self.book.liveness_failed, False
        exits, slice_ = self.exits, self._slice if sweep else -1
        for cached in self.book.all():
            state = cached.state
            if (
                state is RUNNING
                and not liveness
                and cached.key in exits
                and (slice_ < 0 or hash(cached.id) % SWEEP_SLICES != slice_)
            ):
                continue
            lv = self.book.peek_live(cached.key)
            if state is STOPPING:
                if lv is not None and lv.stop_task is not None and lv.stop_task.done():
                    self.finish_stop(cached, lv)
                    changed = True
                elif lv is None or lv.stop_task is None:
                    self.begin_stop(cached.copy(), after=cached.after_stop or AfterStop.STOPPED, reason="")
                continue
            if state in (STARTING, RUNNING):
                if lv is not None and lv.liveness_failed:
                    lv.liveness_failed = False
                    inst = cached.copy()
                    probe = (inst.probes or {}).get(LIVENESS)
                    why = (probe.message if probe is not None else "") or "failing"
                    self.book.event(inst, f"Liveness probe failed: {why}; killing")
                    self.begin_stop(inst, after=AfterStop.BACKOFF, reason="LivenessProbeFailed: restarting")
                    changed = True
                    continue
                if state is RUNNING and cached.key in self.exits:
                    if not (sweep and hash(cached.id) % SWEEP_SLICES == self._slice):
                        continue
                else:
                    tick = min(tick or TICK_SECONDS, FAST_TICK_SECONDS if state is STARTING else TICK_SECONDS)
                obs = self.runner(cached).observe(self.book.path(cached), cached.handle)
                if obs.state == "running" and state is STARTING:
                    inst = cached.copy()
                    inst.apply_handle(obs.handle)
                    self.set_state(inst, RUNNING, "Running")
                    self.book.event(inst, f"Started: pid {inst.pid or '?'}", obs.started_at)
                    self.prober.start(inst)
                    self._watch(inst)
                    changed = True
                elif obs.state == "exited":
                    inst = cached.copy()
                    inst.apply_handle(obs.handle)
                    if state is STARTING and inst.pid and not obs.error:
                        # It ran, and ended before a pass saw it running: its events say both.
                        self.book.event(inst, f"Started: pid {inst.pid}", obs.started_at)
                    self.on_exit(inst, obs)
                    changed = True
            elif state is BACKOFF:
                at = cached.next_restart_at or 0.0
                longest = now + self.cfg.restart_backoff_max_seconds
                if at > longest:
                    # No back-off is longer: the clock was stepped back since it was set (a record
                    # of an hour ahead would hold the restart an hour). It waits the longest.
                    inst = cached.copy()
                    inst.next_restart_at = at = longest
                    self.book.save(inst)
                if at <= now:
                    changed = True  # the reconcile pass over its service restarts it
                    self.book.touched.add((cached.namespace, cached.service))
                else:
                    self.alarm.due(at)
        # After the stops this pass finished: their held records are never written.
        held = self.book.release(now)
        if held is not None:
            self.alarm.due(held)
        self.tick = tick
        return changed

    def on_exit(self, inst: Instance, obs: Observation) -> None:
        """The process is gone on its own: record how, then apply the restart policy."""
        self.prober.cancel(inst.key)
        self.exits.discard(inst.key)
        self.launcher.release(inst)
        inst.last_exit_code = obs.code
        inst.last_signal = obs.signal
        inst.pid = 0
        inst.ready = False
        inst.live = False
        if inst.retire:
            self.book.forget(inst.key)
            return
        policy = inst.restart_policy
        failed = obs.code != 0 or obs.signal is not None
        how = (
            f"killed by signal {obs.signal}"
            if obs.signal is not None
            else (f"exit code {obs.code}" if obs.code is not None else obs.error or "vanished")
        )
        if obs.error and obs.code not in (None, 0):
            how += f": {obs.error}"
        if obs.code is None and obs.signal is None:
            # Nobody saw how it ended (its shim died, or it vanished): worth an operator's look.
            log.warning("instance %s/%s ended without an exit record: %s", inst.namespace, inst.name, how)
        self.book.event(inst, f"Exited: {how}")
        if policy in ALWAYS or (policy == common_pb2.RESTART_POLICY_ON_FAILURE and failed):
            # A run that lasted long enough proves the crash loop is over: the delay starts afresh.
            # The run's start is in the record, so this holds when it ended while no controller ran.
            since = inst.running_since
            if since is not None and time.time() - since >= self.cfg.restart_backoff_reset_seconds:
                inst.consecutive_failures = 0
            looping = inst.consecutive_failures >= 1
            delay = self._schedule_restart(inst)
            reason = f"CrashLoopBackOff: {how}; restarting in {delay:g}s" if looping else f"Restarting: {how}"
            self.set_state(inst, BACKOFF, reason)
            self.book.event(inst, f"Back-off: restarting in {delay:g}s (restart policy {policy_word(policy)}, {how})")
        else:
            self.book.event(inst, f"Not restarted (restart policy {policy_word(policy)})")
            inst.next_restart_at = None
            self.set_state(inst, EXITED, ("Completed" if not failed else "Error") + f": {how}")

    # -- stopping -------------------------------------------------------------------------------
    def _grace(self, inst: Instance, override: float | None = None) -> float:
        if override is not None:
            return max(0.0, override)
        return float(inst.grace_seconds) if inst.grace_seconds else self.cfg.stop_grace_seconds

    def retire(self, inst: Instance, reason: str, *, grace: float | None = None) -> None:
        """Stop for good and delete the record once stopped."""
        self.retire_all([inst], reason, grace=grace)

    def retire_all(self, insts: Iterable[Instance], reason: str, *, grace: float | None = None) -> None:
        """:meth:`retire` each of ``insts``; every signal goes out before any record or event is written.

        A deletion of a thousand instances then ends the last one as soon as the first, not after
        the bookkeeping of the 999 before it (its state, its event).
        """
        due: list[Instance] = []
        signalled: list[Instance] = []
        for inst in insts:
            lv = self.book.live(inst.key)
            # A deletion asks again on every pass, for every instance.
            if inst.retire and (lv.stop_task is not None or inst.state is STOPPING):
                continue
            due.append(inst)
            if self._signals_due(inst, lv):
                signalled.append(inst)
        # Together, or one on its own (as begin_stop stops it).
        stops = self._stop_together(signalled, grace) if len(signalled) > 1 else {}
        # The last batch goes now, not once the pass yields after the bookkeeping below.
        for runner in self.runners.values():
            runner.send_signals()
        why = f"Terminating: {reason}"
        # The Stopping records of the stops set up together are held until the same time.
        held = self._hold_until(STOPPING_RECORD_AFTER_SECONDS, why) if stops else None
        for inst in due:
            # Copied once the signals are out: the copies are the bookkeeping's, not the stops'.
            inst = inst.copy()
            inst.retire = True
            stop = stops.get(inst.key)
            if stop is None:
                self.begin_stop(
                    inst, after=AfterStop.DELETE, reason=why, grace=grace, hold=STOPPING_RECORD_AFTER_SECONDS
                )
            else:
                self._stopping(inst, self.book.live(inst.key), AfterStop.DELETE, why, stop, held)

    def _stop_together(self, insts: list[Instance], grace: float | None) -> dict[Key, asyncio.Future[Observation]]:
        """The stops of ``insts`` (deleted once stopped), a batch per runner and grace period
        (:meth:`Runner.stop_many`): each one's signals go out now, its end resolves its future and
        is finished with the others of its batch (:class:`StopGroup`)."""
        group = StopGroup(self.alarm, self._finish_ended)
        batches: dict[tuple[str, float], list[Instance]] = {}
        for inst in insts:
            batches.setdefault((inst.runner, self._grace(inst, grace)), []).append(inst)
        # Every signal a runtime sends in bulk goes before any stop is set up (Runner.signal_now),
        # read off the instances themselves: their handles are made after (a thousand handles were
        # 1-1.4 ms the signals waited for, while the other core was idle).
        for members in batches.values():
            self.runner(members[0]).signal_now([(i.log_dir, i) for i in members], discard=True)
        out: dict[Key, asyncio.Future[Observation]] = {}
        for (_, seconds), members in batches.items():
            stops, ended = group.members([i.key for i in members])
            orders = [(self.book.path(i), i.handle, self.exits.take(i.key)) for i in members]
            group.run(self.runner(members[0]).stop_many(orders, seconds, discard=True, ended=ended))
            out.update(zip((i.key for i in members), stops, strict=True))
        return out

    def _finish_ended(self, keys: list[Key], linger: float) -> None:
        """Finish the stops of ``keys`` that are over (a batch of a :class:`StopGroup`'s ends); the
        instances that leave are forgotten together (:meth:`Book.forget_all`, with ``linger``)."""
        leaving: list[Key] = []
        for key in keys:
            cached = self.book.get(key)
            lv = self.book.peek_live(key)
            if cached is not None and lv is not None and lv.stop_task is not None and lv.stop_task.done():
                leaves, obs = self._stop_over(cached, lv)
                if leaves:
                    leaving.append(key)
                else:
                    self._stopped(cached, lv, obs)
        self.book.forget_all(leaving, linger=linger)

    def _signals_due(self, inst: Instance, lv: Live | None = None) -> bool:
        """Whether a stop of ``inst`` signals its process (it runs and no stop is under way);
        ``lv``: its live companion, if at hand."""
        task = (lv if lv is not None else self.book.live(inst.key)).stop_task
        return inst.state in ACTIVE and (task is None or task.done())

    def _signal(self, inst: Instance, grace: float | None) -> Coroutine[Any, Any, Observation]:
        """The runner's stop of ``inst``: its signals go out now, the coroutine waits for its end."""
        # A deleted instance's directory goes with it: what its shim writes at the end need not be durable.
        discard = inst.after_stop is AfterStop.DELETE or inst.retire
        # The stop follows the end itself, with the watch's descriptor (it names the shim: no new
        # one to open and check). The signals go out now, in this pass (see ``ProcessRunner.stop``).
        return self.runner(inst).stop(
            self.book.path(inst),
            inst.handle,
            self._grace(inst, grace),
            discard=discard,
            shim_end=self.exits.take(inst.key),
        )

    def begin_stop(
        self,
        inst: Instance,
        *,
        after: AfterStop,
        reason: str,
        grace: float | None = None,
        stop: asyncio.Future[Observation] | None = None,
        hold: float | None = None,
    ) -> None:
        """SIGTERM, grace, SIGKILL in a task; :meth:`observe` finishes the stop once the task is done.

        ``stop``: the stop under way, its signals sent (:meth:`retire_all`), else they go now.
        ``hold``: the Stopping record (and event) is written only if the stop still runs this many
        seconds from now (:meth:`Book.hold`).
        """
        lv = self.book.live(inst.key)
        if stop is None and not self._signals_due(inst):
            lv.cancel_probes()
            lv.after_stop = after
            lv.stop_reason = reason
            self.exits.discard(inst.key)
            if inst.state in ACTIVE:
                return  # already stopping
            # Nothing runs: finish at once.
            lv.stop_task = None
            self.finish_stop(inst, lv, observed=False)
            return
        if stop is None:  # else its group finishes it (``_stop_together``)
            stop = asyncio.create_task(self._signal(inst, grace))
            # The next pass finishes the stop: wake the loop when the task is done, instead of polling.
            stop.add_done_callback(lambda _: self.alarm.wake())
        self._stopping(inst, lv, after, reason, stop, None if hold is None else self._hold_until(hold, reason))

    def _hold_until(self, seconds: float, reason: str) -> tuple[float, str]:
        """When a Stopping record held for ``seconds`` from now is due, with its event
        (:meth:`Book.hold`); the loop wakes then to write it if the stop still runs."""
        held = (time.time() + seconds, f"Stopping: {reason or 'on request'}")
        self.alarm.due(held[0])
        return held

    def _stopping(
        self,
        inst: Instance,
        lv: Live,
        after: AfterStop,
        reason: str,
        stop: asyncio.Future[Observation],
        held: tuple[float, str] | None,
    ) -> None:
        """Record that ``inst`` (a working copy; ``lv`` its companion) stops by ``stop``, its signals
        sent; ``held``: when its Stopping record is due and with which event (:meth:`Book.hold`),
        None to write it now."""
        lv.cancel_probes()
        lv.after_stop = after
        lv.stop_reason = reason
        inst.after_stop = after
        lv.stop_task = stop
        if inst.state is STOPPING:
            self.book.save(inst)
        elif held is not None:
            inst.transition(STOPPING, reason or "Stopping")
            self.book.hold(inst, *held)
        else:
            self.set_state(inst, STOPPING, reason or "Stopping")
            self.book.event(inst, f"Stopping: {reason or 'on request'}")

    def finish_stop(self, inst: Instance, lv: Live, observed: bool = True) -> None:
        """The stop of ``inst`` (the cached instance or a copy; not changed) is over: forget a
        deleted instance, else record how it ended and what comes next."""
        leaving, obs = self._stop_over(inst, lv, observed)
        if leaving:
            # Its record and its directory go (its events with them): nothing more to write.
            self.book.forget(inst.key)
            return
        self._stopped(inst, lv, obs)

    def _stop_over(self, inst: Instance, lv: Live, observed: bool = True) -> tuple[bool, Observation | None]:
        """What every stop does once over: whether the instance leaves (deleted), and how it ended
        (None: not observed)."""
        leaving = lv.after_stop is AfterStop.DELETE or inst.retire
        self.launcher.release(inst, leaving=leaving)
        obs: Observation | None = None
        if observed and lv.stop_task is not None:
            try:
                obs = lv.stop_task.result()
            except Exception as e:  # pragma: no cover - runner bug
                log.warning("stop of %s failed: %s", inst.key, e)
        lv.stop_task = None
        return leaving, obs

    def _stopped(self, inst: Instance, lv: Live, obs: Observation | None) -> None:
        """Record how a stopped instance that stays ended, and what comes next."""
        after = lv.after_stop
        inst = inst.copy()
        if obs is not None:
            inst.last_exit_code = obs.code
            inst.last_signal = obs.signal
            how = f"signal {obs.signal}" if obs.signal is not None else f"exit code {obs.code}"
            self.book.event(inst, f"Stopped: {how}")
        inst.pid = 0
        # A restart is left to the next pass, which reads what a start needs first (off the event
        # loop on PostgreSQL): the STOPPED record says it is due, also to a controller started anew.
        inst.after_stop = AfterStop.RESTART if after is AfterStop.RESTART else None
        if inst.state is not STOPPED:
            self.set_state(inst, STOPPED, lv.stop_reason or "Stopped")
        else:
            self.book.save(inst)
        if after is AfterStop.RESTART:
            self.alarm.wake()
        elif after is AfterStop.BACKOFF:
            delay = self._schedule_restart(inst)
            self.set_state(inst, BACKOFF, f"{lv.stop_reason}; restarting in {delay:g}s")

    # -- starting -------------------------------------------------------------------------------
    def start(self, inst: Instance, *, reason: str, given: StartInput) -> None:
        """Resolve env and mounts, spawn, and move to STARTING (or BACKOFF/FATAL with the reason).

        What it reads is ``given``, read before (off the event loop on PostgreSQL): a start never
        waits on the store. Only passes start instances, so ``given`` is the pass's input.
        """
        svc = given.service(inst.namespace, inst.service)
        if svc is None:
            self.book.forget(inst.key)
            return
        runner = self.runner_for(svc)
        frm = inst.state
        if frm is not NEW:
            inst.restart_count += 1
        inst.restart_policy = svc.restart_policy
        inst.after_stop = None
        unavailable = runner.unavailable_reason()
        if unavailable:
            self.set_state(inst, FATAL, unavailable)
            return
        try:
            spec = self.launcher.spec(inst, svc, given)
        except (envresolve.ResolveError, RunnerError, KeyError, OSError) as e:
            msg = getattr(e, "message", None) or str(e)
            fatal = isinstance(e, RunnerError) and e.fatal
            self._fail_start(inst, f"CreateConfigError: {msg}", fatal=fatal, config_error=True)
            return
        # Told when a start is over, instead of looking at every starting instance every tick.
        self.exits.reports(runner.start_reports(), runner.drain_reports)
        # The start's event is stamped before the start is asked for: a keeper may run the process,
        # and log its first output, before this call returns.
        asked = time.time()
        try:
            handle = runner.start(spec)
        except RunnerError as e:
            self.launcher.release(inst)
            self._fail_start(inst, e.message, fatal=e.fatal)
            return
        lv = self.book.live(inst.key)
        lv.env = spec.env
        lv.service = svc
        inst.apply_handle(handle)
        inst.next_restart_at = None
        self.set_state(inst, STARTING, reason)
        # Look again soon: a starting instance is polled until its shim reports the process.
        self.tick = FAST_TICK_SECONDS
        self.book.event(inst, f"{reason} (restart {inst.restart_count})" if frm is not NEW else reason, asked)

    def _fail_start(self, inst: Instance, msg: str, *, fatal: bool, config_error: bool = False) -> None:
        self.book.event(inst, f"Failed to start: {msg}")
        if fatal:
            self.set_state(inst, FATAL, msg, config_error=config_error)
            return
        delay = self._schedule_restart(inst)
        if inst.state is NEW:
            # A brand-new record is recorded as attempted before it waits to retry.
            self.set_state(inst, STARTING, msg, config_error=config_error)
        self.set_state(inst, BACKOFF, f"{msg}; retrying in {delay:g}s", config_error=config_error)
