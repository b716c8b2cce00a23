"""runed kill -9 between asking for a start and saving it: the start is adopted or given up, never run twice.

The controller asks its zygote for a shim without waiting (the fork may come later), and saves the
instance record after the pass. Each test holds one step back with real means (SIGSTOP of the
zygote or of the controller, a write lock on the SQLite store), kills runed and starts it again,
then counts the program's processes by a marker in their command line.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from rune.api import service_pb2
from tests.harness import RunedFactory
from tests.integration.orch import Orch, runefile_args
from tests.support import alive, eventually

# A shim per instance, forked by the controller's zygote (the default, a keeper per service, has no zygote).
ZYGOTE = {"RUNE_CONTROLLER_SHIM": "auto"}
# Runs until killed; with a file named by argv[2], exits 3 once that file appears (and removes it).
SLEEPER = (
    "import os, sys, time\n"
    "print('started', flush=True)\n"
    "while True:\n"
    "    if len(sys.argv) > 2 and os.path.exists(sys.argv[2]):\n"
    "        os.unlink(sys.argv[2])\n"
    "        sys.exit(3)\n"
    "    time.sleep(0.05)\n"
)


def _programs(marker: str) -> list[int]:
    """The processes whose command line carries ``marker`` (the instance's program, never a shim)."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                argv = p.joinpath("cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker.encode() in argv:
                found.append(int(p.name))
    return found


def _started(marker: str, besides: int) -> int:
    """The one process with ``marker`` other than ``besides`` (else AssertionError)."""
    found = [p for p in _programs(marker) if p != besides]
    assert len(found) == 1, found
    return found[0]


def _one_copy(o: Orch, service: str, marker: str) -> dict[str, Any]:
    """The service's one instance runs, as the only process with ``marker`` (else AssertionError)."""
    (inst,) = o.running(service, 1)
    assert _programs(marker) == [inst["pid"]], (_programs(marker), inst["pid"])
    return inst


def _stays_one_copy(o: Orch, service: str, marker: str) -> dict[str, Any]:
    inst = eventually(lambda: _one_copy(o, service, marker), timeout=60, what="one copy running")
    # A shim held up somewhere must not start a second copy a little later either.
    time.sleep(2)
    again = _one_copy(o, service, marker)
    assert again["pid"] == inst["pid"]
    return again


def _zygote(o: Orch, inst: dict[str, Any]) -> int:
    """The zygote that forked the instance's shim (the shim's parent)."""
    shim = int(json.loads((Path(str(inst["log_dir"])) / "pid.json").read_text())["shim_pid"])
    raw = Path(f"/proc/{shim}/stat").read_text()
    parent = int(raw[raw.rfind(")") + 2 :].split()[1])
    assert b"runed.runner.zygote" in Path(f"/proc/{parent}/cmdline").read_bytes()
    return parent


@contextmanager
def _stopped(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if alive(pid):
            os.kill(pid, signal.SIGCONT)


def _orch(runed_factory: RunedFactory, tmp: Path, spawn_timeout: float) -> Orch:
    """A runed of the test's own whose controller gives a start ``spawn_timeout`` seconds to be claimed
    (a shim per instance, forked by the zygote the tests hold up)."""
    env = {"RUNE_CONTROLLER_SPAWN_TIMEOUT_SECONDS": str(spawn_timeout), **ZYGOTE}
    return Orch.on(runed_factory(tmp / "data", args=runefile_args(tmp), env=env), tmp)


def _held_zygote(o: Orch, tag: str) -> int:
    """A zygote of the runed (it exists once a first instance was started), to be stopped."""
    o.cast("warm", o.program("sleeper", SLEEPER), f"warm-{tag}")
    (warm,) = eventually(lambda: o.running("warm", 1), timeout=30)
    return _zygote(o, warm)


def _starting(o: Orch, service: str) -> dict[str, Any]:
    inst = o.one(service)
    assert inst["state"] == "STARTING" and (Path(str(inst["log_dir"])) / "launch.json").exists(), inst["state"]
    return inst


def test_a_start_the_zygote_held_up_is_adopted_not_repeated(runed_factory: RunedFactory, tmp_path: Path) -> None:
    """Saved as STARTING, forked only after the next controller adopted it: that shim's program is the one."""
    # Far longer than a kill and restart of runed take, even on a loaded machine.
    o = _orch(runed_factory, tmp_path, spawn_timeout=300)
    tag = f"held-{uuid.uuid4().hex}"
    zygote = _held_zygote(o, tag)
    with _stopped(zygote):
        o.cast("held", o.program("sleeper", SLEEPER), tag)
        eventually(lambda: _starting(o, "held"), timeout=30, what="the start saved, its shim not forked")
        o.kill_runed()
        o.restart_runed(runed_factory)
        # The new controller has looked at it by now; a restart would be under way after the 0.3 s back-off.
        time.sleep(2)
        inst = o.one("held")
        assert (inst["state"], inst["restart_count"]) == ("STARTING", 0), (inst["state"], inst["reason"])
        assert _programs(tag) == []
    inst = _stays_one_copy(o, "held", tag)
    assert inst["restart_count"] == 0


def test_a_start_that_never_comes_is_given_up_once(runed_factory: RunedFactory, tmp_path: Path) -> None:
    """Saved as STARTING, its shim not forked in time: restarted once; the shim forked even later runs nothing."""
    timeout = 10.0
    o = _orch(runed_factory, tmp_path, spawn_timeout=timeout)
    tag = f"late-{uuid.uuid4().hex}"
    zygote = _held_zygote(o, tag)
    with _stopped(zygote):
        o.cast("late", o.program("sleeper", SLEEPER), tag)
        held = eventually(lambda: _starting(o, "late"), timeout=30, what="the start saved, its shim not forked")
        asked = (Path(str(held["log_dir"])) / "launch.json").stat().st_mtime
        o.kill_runed()
        o.restart_runed(runed_factory)
        time.sleep(2)
        count = o.one("late")["restart_count"]
        # Checked only while the timeout, counted from the request, has not run out (a slow restart may take it).
        if time.time() - asked < timeout - 1:
            assert count == 0, "not given up before its time"
        inst = eventually(lambda: _one_copy(o, "late", tag), timeout=timeout + 60, what="restarted after the timeout")
        assert inst["restart_count"] == 1
    # The held-up zygote forks the first start's shim now: it finds the start given up.
    _stays_one_copy(o, "late", tag)
    assert o.one("late")["restart_count"] == 1


def test_a_start_whose_zygote_died_is_given_up_without_waiting(runed_factory: RunedFactory, tmp_path: Path) -> None:
    """Saved as STARTING, asked of a zygote that died with runed: nothing can fork it any more, so the
    next controller starts it again at once, not after the spawn timeout (300 s here)."""
    o = _orch(runed_factory, tmp_path, spawn_timeout=300)
    tag = f"orphan-{uuid.uuid4().hex}"
    zygote = _held_zygote(o, tag)
    with _stopped(zygote):
        o.cast("orphan", o.program("sleeper", SLEEPER), tag)
        eventually(lambda: _starting(o, "orphan"), timeout=30, what="the start saved, its shim not forked")
        o.kill_runed()
        os.kill(zygote, signal.SIGKILL)
    o.restart_runed(runed_factory)
    inst = eventually(lambda: _one_copy(o, "orphan", tag), timeout=60, what="started again well within the timeout")
    assert inst["restart_count"] == 1
    assert _stays_one_copy(o, "orphan", tag)["restart_count"] == 1


# While the test holds the store's lock every flush of the controller's writes waits out SQLite's
# busy timeout before it fails, on the controller's loop: a start it makes meanwhile comes after a
# few of them. The runeds of these tests wait BUSY_TIMEOUT seconds (10 by default).
BUSY_TIMEOUT = 2.0
LOCKED_WAIT = 60


@contextmanager
def _store_locked(data_dir: Path) -> Iterator[None]:
    """Hold SQLite's write lock: the controller's record writes wait (and fail after its busy timeout)."""
    db = sqlite3.connect(str(data_dir / "runed.db"), isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
    finally:
        db.close()


def _controller_pid(o: Orch) -> int:
    return int(json.loads((o.runed.data_dir / "run" / "controller.json").read_text())["pid"])


def _slow_lease(runed_factory: RunedFactory, tmp: Path, extra: dict[str, str] | None = None) -> Orch:
    """A runed whose controller keeps its lease while its store writes wait on the test's lock."""
    env = {"RUNE_CONTROLLER_LEASE_SECONDS": "120", "RUNE_STORE_SQLITE_BUSY_TIMEOUT_SECONDS": str(BUSY_TIMEOUT)}
    r = runed_factory(tmp / "data", args=runefile_args(tmp), env={**env, **(extra or {})})
    return Orch.on(r, tmp)


def _update_unsaved(o: Orch, old: dict[str, Any], lock: ExitStack) -> None:
    """Update the service, then hold the controller's writes: the old instance is stopped and
    forgotten, the new one started, and none of it reaches the store."""
    spec = o.services.GetService(service_pb2.GetServiceRequest(name=old["service"]), metadata=o.auth).service
    spec.env["VERSION"] = "2"
    with _stopped(_controller_pid(o)):
        o.services.UpdateService(service_pb2.UpdateServiceRequest(service=spec), metadata=o.auth)
        lock.enter_context(_store_locked(o.runed.data_dir))


def _replaced(o: Orch, old: dict[str, Any], tag: str) -> None:
    """After a restart: the update's instance runs once, its record saved this time."""
    inst = _stays_one_copy(o, old["service"], tag)
    assert inst["id"] != old["id"] and inst["env"].get("VERSION") == "2"


def test_a_new_instance_whose_record_was_never_saved_runs_once(runed_factory: RunedFactory, tmp_path: Path) -> None:
    """A rolling update's new instance started, its record not saved: the next controller ends that
    start (no record names it) and the update starts a new instance, once."""
    o = _slow_lease(runed_factory, tmp_path)
    tag = f"unsaved-{uuid.uuid4().hex}"
    o.cast("unsaved", o.program("sleeper", SLEEPER), tag)
    (old,) = eventually(lambda: o.running("unsaved", 1), timeout=30)
    with ExitStack() as lock:
        _update_unsaved(o, old, lock)
        orphan = eventually(lambda: _started(tag, old["pid"]), timeout=LOCKED_WAIT, what="the new instance started")
        o.kill_runed()
    assert [i["id"] for i in o.instances("unsaved")] == [old["id"]], "the new instance's record was not saved"
    o.restart_runed(runed_factory)
    _replaced(o, old, tag)
    assert not alive(orphan)


def test_a_new_instance_never_saved_nor_forked_yet_never_runs(runed_factory: RunedFactory, tmp_path: Path) -> None:
    """As above, with its shim still to be forked by a zygote held up: forked after the next controller
    ended that start, the shim finds nothing to run."""
    o = _slow_lease(runed_factory, tmp_path, ZYGOTE)
    tag = f"unforked-{uuid.uuid4().hex}"
    o.cast("unforked", o.program("sleeper", SLEEPER), tag)
    (old,) = eventually(lambda: o.running("unforked", 1), timeout=30)
    instances = o.runed.data_dir / "instances"
    with _stopped(_zygote(o, old)):
        with ExitStack() as lock:
            _update_unsaved(o, old, lock)

            def asked() -> Path:
                found = [p.parent for p in instances.glob("*/launch.json") if p.parent.name != old["id"]]
                assert len(found) == 1, found
                return found[0]

            orphan = eventually(asked, timeout=LOCKED_WAIT, what="the new instance's start asked for")
            o.kill_runed()
        # Ready means adopted: the zygote forks the shim only after the new controller looked.
        o.restart_runed(runed_factory)
    _replaced(o, old, tag)
    assert not orphan.exists(), "the unsaved start's directory is removed"


def test_a_restart_whose_record_was_never_saved_is_taken_over(runed_factory: RunedFactory, tmp_path: Path) -> None:
    """Exited and started again, neither saved: the record still shows the first run; the second is adopted."""
    o = _slow_lease(runed_factory, tmp_path)
    tag = f"restart-{uuid.uuid4().hex}"
    stop = tmp_path / "stop-once"
    o.cast("again", o.program("sleeper", SLEEPER), tag, str(stop))
    (first,) = eventually(lambda: o.running("again", 1), timeout=30)
    with _store_locked(o.runed.data_dir):
        stop.touch()
        eventually(lambda: not alive(first["pid"]), what="the first run exited")
        # Restarted after the back-off; neither the exit nor the restart reaches the store.
        second = eventually(lambda: _started(tag, first["pid"]), timeout=LOCKED_WAIT, what="the program started again")
        o.kill_runed()
    rec = o.one("again")
    assert (rec["state"], rec["pid"]) == ("RUNNING", first["pid"]), "the record shows the first run"
    o.restart_runed(runed_factory)
    inst = _stays_one_copy(o, "again", tag)
    assert inst["pid"] == second and inst["restart_count"] == 1
