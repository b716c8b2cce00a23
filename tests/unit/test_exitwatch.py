"""Exit notification with real shims: the watch fires once the exit is recorded, and when the shim is killed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from runed.controller.alarm import Alarm
from runed.controller.exitwatch import ExitWatch
from runed.runner.base import Handle, Observation
from runed.runner.process import ProcessRunner, alive
from tests.support import eventually, start_python

KEY = ("default", "iid-1")
# Waits for the file "go", then writes far more than a pipe holds and exits 3 at once.
CHATTY = textwrap.dedent(
    """
    import os, sys, time
    print("started", flush=True)
    while not os.path.exists("go"):
        time.sleep(0.02)
    sys.stdout.write("x\\n" * 100000)
    sys.exit(3)
    """
)


@pytest.fixture(params=[True, False], ids=["forked-shim", "interpreter-shim"])
def runner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessRunner]:
    r = ProcessRunner(fork=request.param)
    yield r
    # Whatever a test left running goes: the instance's group, then the shims.
    with contextlib.suppress(OSError, ValueError, KeyError):
        info = json.loads((tmp_path / "iid-1" / "pid.json").read_text())
        os.killpg(int(info["pid"]), signal.SIGKILL)
    for shim in r._shims.values():
        shim.kill()
        shim.wait(5)
    # The zygote ends once its shims have (the instance's is ending).
    r.close(wait=10)


def _start(r: ProcessRunner, tmp_path: Path, source: str) -> tuple[Path, Observation]:
    d = tmp_path / "iid-1"
    obs = start_python(r, d, source, iid="iid-1", name="svc-0")
    assert obs.handle.shim_pid and obs.handle.shim_start is not None
    return d, obs


async def _fired(watch: ExitWatch, alarm: Alarm) -> None:
    async with asyncio.timeout(30):
        await alarm.event.wait()
    assert watch.fired and KEY not in watch


def test_the_watch_fires_once_the_exit_is_recorded(runner: ProcessRunner, tmp_path: Path) -> None:
    d, obs = _start(runner, tmp_path, CHATTY)

    async def scenario() -> None:
        alarm = Alarm()
        watch = ExitWatch(alarm)
        assert watch.add(KEY, runner.exit_fd(d, obs.handle)) and KEY in watch
        await asyncio.sleep(0)
        assert not alarm.event.is_set(), "nothing ended yet"
        (tmp_path / "go").touch()
        await _fired(watch, alarm)

    asyncio.run(scenario())
    # When the watch fires, the shim has written the last line and then the exit record.
    end = runner.observe(d, obs.handle)
    assert (end.state, end.code, end.signal) == ("exited", 3, None)
    last = json.loads((d / "log.jsonl").read_text().splitlines()[-1])
    assert last["line"] == "x" and last["seq"] == 100001


def test_a_killed_shim_fires_the_watch_and_its_process_group_is_killed(runner: ProcessRunner, tmp_path: Path) -> None:
    d, obs = _start(runner, tmp_path, CHATTY)
    assert alive(obs.handle.shim_pid, obs.handle.shim_start)

    async def scenario() -> None:
        alarm = Alarm()
        watch = ExitWatch(alarm)
        assert watch.add(KEY, runner.exit_fd(d, obs.handle))
        os.kill(obs.handle.shim_pid, signal.SIGKILL)
        await _fired(watch, alarm)

    asyncio.run(scenario())
    end = runner.observe(d, obs.handle)
    assert end.state == "exited" and end.code is None and end.signal is None
    assert end.error.startswith(f"shim died (pid {obs.handle.shim_pid}) while its process ran"), end.error
    eventually(lambda: not alive(obs.handle.pid, obs.handle.pid_start), what="the orphaned process is killed")


def test_no_watch_for_a_shim_that_is_gone(runner: ProcessRunner, tmp_path: Path) -> None:
    d, obs = _start(runner, tmp_path, CHATTY)
    os.kill(obs.handle.shim_pid, signal.SIGKILL)
    eventually(lambda: not alive(obs.handle.shim_pid, obs.handle.shim_start), what="the shim is gone")
    assert runner.exit_fd(d, obs.handle) is None
    # A pid reused by another process is not taken for the shim.
    other = Handle(pid=obs.handle.pid, pid_start=obs.handle.pid_start, shim_pid=os.getpid(), shim_start=1)
    assert runner.exit_fd(d, other) is None


def test_the_sweep_catches_an_end_whose_wake_up_the_loop_did_not_deliver() -> None:
    """``check`` (the safety sweep) fires a watch whose pidfd is readable, in one poll, without the loop."""

    async def main() -> None:
        alarm = Alarm()
        watch = ExitWatch(alarm)
        ended = subprocess.Popen([sys.executable, "-c", "pass"])
        running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            assert watch.add(("default", "ended"), os.pidfd_open(ended.pid))
            assert watch.add(("default", "running"), os.pidfd_open(running.pid))
            # Waited for without yielding: the loop has not run its reader, as if it lost the wake-up.
            ended.wait(30)
            assert ("default", "ended") in watch and not alarm.event.is_set()
            assert watch.check() == 1
            assert ("default", "ended") not in watch and ("default", "running") in watch
            assert watch.fired and alarm.event.is_set()
            assert watch.check() == 0
        finally:
            running.kill()
            running.wait(30)
            watch.close()

    asyncio.run(main())


SLEEPER = 'import time\nprint("started", flush=True)\ntime.sleep(3600)\n'


@pytest.mark.parametrize("discard", [False, True], ids=["stop", "delete"])
def test_a_stop_takes_the_watch_s_descriptor_and_signals_before_it_is_awaited(
    runner: ProcessRunner, tmp_path: Path, discard: bool
) -> None:
    """The exit watch hands its pidfd over to the stop, which signals at once (a deletion signals
    every instance in its pass) and then waits on that descriptor for the shim's end."""
    d, obs = _start(runner, tmp_path, SLEEPER)

    async def scenario() -> Observation:
        alarm = Alarm()
        watch = ExitWatch(alarm)
        assert watch.add(KEY, runner.exit_fd(d, obs.handle))
        fd = watch.take(KEY)
        assert fd is not None and KEY not in watch
        os.fstat(fd)  # handed over, not closed
        stopping = runner.stop(d, obs.handle, 5.0, discard=discard, shim_end=fd)
        # Not awaited yet: the instance was signalled all the same.
        eventually(lambda: not alive(obs.handle.pid, obs.handle.pid_start), what="the instance signalled")
        end = await stopping
        assert not alarm.event.is_set(), "the watch no longer fires for it"
        return end

    end = asyncio.run(scenario())
    assert end.state == "exited"
    assert not alive(obs.handle.shim_pid, obs.handle.shim_start)
    if discard:
        # Its directory goes next: the shim wrote no exit record, and the stop read none.
        assert not (d / "exit.json").exists()
    else:
        assert end.signal == signal.SIGTERM, end
        assert json.loads((d / "exit.json").read_text())["signal"] == signal.SIGTERM


# Starts a child in its group that outlives it, says its pid, then waits.
PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    child = subprocess.Popen(["sleep", "600"])
    print("started", child.pid, flush=True)
    time.sleep(600)
    """
)


def test_a_dead_shim_s_group_is_killed_also_when_its_leader_is_gone(runner: ProcessRunner, tmp_path: Path) -> None:
    """The shim and the instance's main process both gone without an exit record (a keeper's
    instances die with it): what the instance started is still in its group and goes too."""
    d, obs = _start(runner, tmp_path, PARENT)
    line = next(r for r in (d / "log.jsonl").read_text().splitlines() if "started" in r)
    child = int(json.loads(line)["line"].split()[1])
    assert alive(child, None)
    os.kill(obs.handle.shim_pid, signal.SIGKILL)
    os.kill(obs.handle.pid, signal.SIGKILL)
    eventually(lambda: not alive(obs.handle.pid, obs.handle.pid_start), what="the leader gone and reaped")
    eventually(lambda: not alive(obs.handle.shim_pid, obs.handle.shim_start), what="the shim gone")
    end = runner.observe(d, obs.handle)
    assert end.state == "exited" and end.error.startswith(f"shim died (pid {obs.handle.shim_pid}) without"), end
    eventually(lambda: not alive(child, None), timeout=5, what="the rest of the group killed")
