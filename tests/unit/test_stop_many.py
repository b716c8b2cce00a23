"""Stops run together (``Runner.stop_many``), with real instances under real shims and a real keeper.

Each stop's signals go out when it is asked for, each end is told as it comes (not once all have
ended), and an instance that ignores SIGTERM is killed once its grace period is over while the
others were told long before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runed.runner import native
from runed.runner.base import Handle, Observation
from runed.runner.keeper import KeeperRunner
from runed.runner.process import ProcessRunner, alive
from tests.support import eventually, start_python

SLEEPER = 'import time\nprint("started", flush=True)\ntime.sleep(3600)\n'
DEAF = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + SLEEPER
GRACE = 2.0
KEEPER = pytest.param("keeper", marks=pytest.mark.skipif(native.shim_path() is None, reason="no keeper"))


@pytest.fixture(params=["forked-shim", "interpreter-shim", KEEPER])
def runner(request: pytest.FixtureRequest) -> Iterator[ProcessRunner]:
    if request.param == "keeper":
        program = native.shim_path()
        assert program is not None
        r: ProcessRunner = KeeperRunner(program=program)
    else:
        r = ProcessRunner(fork=request.param == "forked-shim")
    yield r
    r.close(wait=10)
    if isinstance(r, KeeperRunner):
        # A keeper leaves once nothing runs and nobody is connected: reaped here, not left a zombie.
        for proc in r.keepers._procs:
            proc.wait(10)


def _start(r: ProcessRunner, tmp_path: Path, iid: str, source: str) -> tuple[Path, Handle]:
    d = tmp_path / "instances" / iid
    return d, start_python(r, d, source, iid=iid, name=iid).handle


def test_each_end_is_told_as_it_comes_and_the_deaf_one_is_killed_after_its_grace(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    started = [_start(runner, tmp_path, f"i{n}", DEAF if n == 2 else SLEEPER) for n in range(3)]
    pids = [h.pid for _, h in started]

    async def scenario() -> list[tuple[int, Observation, float]]:
        told: list[tuple[int, Observation, float]] = []
        t0 = time.monotonic()
        stopping = runner.stop_many(
            [(d, h, None) for d, h in started],
            GRACE,
            discard=True,
            ended=lambda i, how: told.append((i, how, time.monotonic() - t0)),
        )
        runner.send_signals()
        # Not awaited yet: the two that end on SIGTERM were signalled all the same.
        eventually(lambda: not any(alive(h.pid, h.pid_start) for _, h in started[:2]), what="both signalled")
        await stopping
        return told

    try:
        told = asyncio.run(scenario())
    finally:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
    assert sorted(i for i, _, _ in told) == [0, 1, 2], told
    assert all(how.state == "exited" for _, how, _ in told), told
    at = {i: seconds for i, _, seconds in told}
    assert at[0] < GRACE / 2 and at[1] < GRACE / 2, at
    assert at[2] >= GRACE, at
    for _, h in started:
        assert not alive(h.pid, h.pid_start)


# Counts the SIGTERMs it gets in a file beside it (cwd) and ignores them: killed after the grace period.
COUNTER = (
    "import os, signal, time\n"
    "def term(*_):\n"
    "    with open(f'{os.getpid()}.terms', 'a') as f:\n"
    "        f.write('x')\n"
    "signal.signal(signal.SIGTERM, term)\n" + SLEEPER
)


def test_signals_sent_before_the_stops_are_set_up_go_once(runner: ProcessRunner, tmp_path: Path) -> None:
    """``signal_now`` then ``stop_many`` of the same instances (what a deletion does): a keeper's
    instances have their SIGTERM before the stops exist, and every instance gets exactly one."""
    started = [_start(runner, tmp_path, f"c{n}", COUNTER) for n in range(3)]
    terms = [tmp_path / "instances" / f"{h.pid}.terms" for _, h in started]

    async def scenario() -> list[int]:
        runner.signal_now([(str(d), h) for d, h in started], discard=True)
        if isinstance(runner, KeeperRunner):
            eventually(lambda: all(t.exists() for t in terms), what="SIGTERM before the stops are set up")
        told: list[int] = []
        await runner.stop_many([(d, h, None) for d, h in started], 0.5, discard=True, ended=lambda i, _: told.append(i))
        return told

    try:
        told = asyncio.run(scenario())
    finally:
        for _, h in started:
            with contextlib.suppress(OSError):
                os.killpg(h.pid, signal.SIGKILL)
    assert sorted(told) == [0, 1, 2]
    assert [t.read_text() for t in terms] == ["x", "x", "x"]
    for _, h in started:
        assert not alive(h.pid, h.pid_start)
