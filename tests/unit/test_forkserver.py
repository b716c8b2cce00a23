"""The process runner with its zygote, real processes: pipelined starts, the environment's path, a replaced zygote."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runed.runner.base import Handle, LaunchSpec, Observation
from runed.runner.process import SPAWN_TIMEOUT_SECONDS, ProcessRunner, alive
from tests.support import eventually

SECRET = "s3cret-value-never-on-disk"


@pytest.fixture(params=["auto", "python"])
def runner(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessRunner]:
    """A runner whose zygote starts native shims (``auto``, the default) or forks Python ones."""
    r = ProcessRunner(shim=request.param)
    assert (r.native is not None) == (request.param == "auto"), "the native shim did not build"
    yield r
    for info in (tmp_path / "instances").glob("*/pid.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            os.killpg(int(json.loads(info.read_text())["pid"]), signal.SIGKILL)
    r.close(wait=10)


def _spec(tmp_path: Path, i: int) -> LaunchSpec:
    return LaunchSpec(
        instance_id=f"i{i}",
        namespace="default",
        name=f"svc-{i}",
        service="svc",
        directory=tmp_path / "instances" / f"i{i}",
        argv=[shutil.which("sh") or "/bin/sh", "-c", 'echo "token=$TOKEN"; exec sleep 60'],
        env={"PATH": os.environ.get("PATH", ""), "TOKEN": SECRET},
        cwd=str(tmp_path),
    )


def _start(r: ProcessRunner, tmp_path: Path, i: int) -> tuple[Path, Handle]:
    spec = _spec(tmp_path, i)
    return spec.directory, r.start(spec)


def _running(r: ProcessRunner, d: Path, handle: Handle) -> Observation:
    obs = r.observe(d, handle)
    # Observed with the handle start() returned, as the controller does until the instance runs.
    assert obs.state != "exited", obs
    assert obs.state == "running", obs
    return obs


def _wait_running(r: ProcessRunner, d: Path, handle: Handle) -> Observation:
    return eventually(lambda: _running(r, d, handle), timeout=60)


def test_pipelined_starts_each_observed_with_the_first_handle(runner: ProcessRunner, tmp_path: Path) -> None:
    started = [_start(runner, tmp_path, i) for i in range(12)]
    runs = [_wait_running(runner, d, h) for d, h in started]
    assert runner.forks is not None and runner.forks.proc is not None
    zygote = runner.forks.proc.pid
    shims = {o.handle.shim_pid for o in runs}
    assert len(shims) == 12
    for obs in runs:
        parent = Path(f"/proc/{obs.handle.shim_pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        assert int(parent) == zygote and os.getsid(obs.handle.shim_pid) == obs.handle.shim_pid
    # The environment (a resolved secret) reaches the instance, over the zygote's socket only.
    d = started[0][0]
    eventually(lambda: f"token={SECRET}" in (d / "log.jsonl").read_text())
    for path in d.rglob("*"):
        if path.is_file() and path.name != "log.jsonl":
            assert SECRET not in path.read_text(errors="replace"), path
    assert SECRET.encode() not in Path(f"/proc/{zygote}/cmdline").read_bytes()


def test_a_killed_zygote_is_replaced_and_its_shims_run_on(runner: ProcessRunner, tmp_path: Path) -> None:
    d0, h0 = _start(runner, tmp_path, 0)
    first = eventually(lambda: _running(runner, d0, h0), timeout=60)
    assert runner.forks is not None and runner.forks.proc is not None
    old = runner.forks.proc.pid
    os.kill(old, signal.SIGKILL)
    eventually(
        lambda: runner.forks is not None and runner.forks.proc is not None and runner.forks.proc.poll() is not None
    )
    d1, h1 = _start(runner, tmp_path, 1)
    second = eventually(lambda: _running(runner, d1, h1), timeout=60)
    assert runner.forks.proc is not None and runner.forks.proc.pid != old
    # The first shim was not the zygote's to end.
    assert _running(runner, d0, first.handle).handle.pid == first.handle.pid
    assert second.handle.shim_pid != first.handle.shim_pid


def _held_zygote(runner: ProcessRunner, tmp_path: Path) -> int:
    """The runner's zygote (there once an instance ran), stopped: the next start's shim is not forked."""
    d0, h0 = _start(runner, tmp_path, 0)
    _wait_running(runner, d0, h0)
    assert runner.forks is not None and runner.forks.proc is not None
    zygote = runner.forks.proc.pid
    os.kill(zygote, signal.SIGSTOP)
    return zygote


def test_a_start_stopped_before_its_shim_was_forked_never_runs(runner: ProcessRunner, tmp_path: Path) -> None:
    """The zygote held up with the request: the stop fences the start, and the shim forked later runs nothing."""
    zygote = _held_zygote(runner, tmp_path)
    try:
        d1, h1 = _start(runner, tmp_path, 1)
        assert runner.observe(d1, h1).state == "starting"
        obs = asyncio.run(runner.stop(d1, h1, grace=1.0))
        assert (obs.state, obs.error) == ("exited", "stopped before it started")
    finally:
        os.kill(zygote, signal.SIGCONT)
    # The zygote forks the shim now: it finds the start fenced and runs nothing.
    time.sleep(1.0)
    assert runner.forks is not None
    runner.forks.collect()
    assert runner.forks.forked == {}, "the answer nobody waits for is dropped"
    claim = json.loads((d1 / f"claim-{h1.attempt}.json").read_text())
    assert claim["fenced"] is True
    assert not (d1 / "pid.json").exists() and not (d1 / "log.jsonl").exists()
    assert not (d1 / "shim.err").exists(), "a shim that did not fail wrote nothing to its stderr"
    # The zygote still serves: the next start of that instance runs.
    h2 = runner.start(_spec(tmp_path, 1))
    assert _wait_running(runner, d1, h2).handle.attempt == h2.attempt != h1.attempt


def test_a_failing_shim_leaves_its_traceback_in_shim_err(runner: ProcessRunner, tmp_path: Path) -> None:
    """shim.err is created only when a shim fails; the runner then reports what it says."""
    zygote = _held_zygote(runner, tmp_path)
    try:
        d1, h1 = _start(runner, tmp_path, 1)
        # The start's launch spec, broken where the shim reads it after claiming the start.
        launch = json.loads((d1 / "launch.json").read_text())
        (d1 / "launch.json").write_text(json.dumps({**launch, "max_bytes": "lots"}))
    finally:
        os.kill(zygote, signal.SIGCONT)

    def ended() -> Observation:
        obs = runner.observe(d1, h1)
        assert obs.state == "exited", obs
        return obs

    obs = eventually(ended, timeout=30, what="the failed shim seen")
    # The Python shim's traceback ends in a ValueError; the native shim names the field.
    err = (d1 / "shim.err").read_text()
    assert "lots" in err and ("ValueError" in err or "launch.json: max_bytes" in err), err
    assert obs.error is not None and obs.error.startswith("shim failed") and "lots" in obs.error, obs.error
    assert not (tmp_path / "instances" / "i0" / "shim.err").exists(), "the running one did not fail"


def test_a_claimed_start_stuck_before_its_program_is_killed_after_the_timeout(
    runner: ProcessRunner, tmp_path: Path
) -> None:
    """A shim that claimed its start and never reports a pid is killed once the start is given up,
    also by a controller started anew (nothing in memory: the claim names the shim)."""
    zygote = _held_zygote(runner, tmp_path)
    try:
        d1, h1 = _start(runner, tmp_path, 1)
        # Its shim claims the start, then blocks opening launch.json (a FIFO nobody writes to).
        launch = d1 / "launch.json"
        launch.unlink()
        os.mkfifo(launch)
    finally:
        os.kill(zygote, signal.SIGCONT)
    path = d1 / f"claim-{h1.attempt}.json"

    def claimed() -> dict[str, Any]:
        assert path.exists()
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    claim = eventually(claimed, timeout=10, what="the start claimed")
    shim = int(claim["shim_pid"])
    fresh = ProcessRunner(fork=False)
    adopted = Handle(attempt=h1.attempt)
    # Claimed, its shim alive and its time not up: still starting, with the shim the claim names.
    first = fresh.observe(d1, adopted)
    assert (first.state, first.handle.shim_pid) == ("starting", shim)

    def given_up() -> Observation:
        obs = fresh.observe(d1, adopted)
        assert obs.state == "exited", obs
        return obs

    obs = eventually(given_up, timeout=SPAWN_TIMEOUT_SECONDS + 10)
    assert obs.error == "instance did not start in time"
    eventually(lambda: not alive(shim, claim["shim_start"]), what="the shim killed")


def _on_a_copy(r: ProcessRunner, tmp_path: Path) -> tuple[str, Path]:
    """Have ``r`` start shims from a copy of the native shim it found (so that a test may delete
    it, and other tests keep theirs): the binary found, and the copy."""
    assert r.native is not None, "the native shim did not build"
    built = r.native
    copy = tmp_path / "rune-shim-copy"
    shutil.copy(built, copy)
    r.native = str(copy)
    return built, copy


def _end_all(r: ProcessRunner, tmp_path: Path) -> None:
    """Kill every instance started under ``tmp_path``, wait for their shims, and close ``r``."""
    shims = []
    for info in (tmp_path / "instances").glob("*/pid.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            pids = json.loads(info.read_text())
            shims.append(int(pids["shim_pid"]))
            os.killpg(int(pids["pid"]), signal.SIGKILL)
    # Shims this runner started itself (no zygote) are its children: reaped once they end.
    eventually(lambda: not any(alive(s, None) for s in shims), what="the shims ended")
    r.reap()
    r.close(wait=10)


@pytest.mark.parametrize("fork", [True, False], ids=["zygote", "no-zygote"])
def test_a_native_shim_deleted_under_the_runner_falls_back_and_is_found_again(
    tmp_path: Path, fork: bool, caplog: pytest.LogCaptureFixture
) -> None:
    r = ProcessRunner(fork=fork)
    try:
        built, copy = _on_a_copy(r, tmp_path)
        d0, h0 = _start(r, tmp_path, 0)
        assert os.readlink(f"/proc/{_wait_running(r, d0, h0).handle.shim_pid}/exe") == str(copy)
        copy.unlink()
        d1, h1 = _start(r, tmp_path, 1)
        python_shim = _wait_running(r, d1, h1).handle.shim_pid
        assert os.path.realpath(os.readlink(f"/proc/{python_shim}/exe")) == os.path.realpath(sys.executable)
        assert "cannot start the native shim" in caplog.text and str(copy) in caplog.text
        # Found (or built) again in the background: the next start is native once more.
        eventually(lambda: r.native == built, what="the native shim found again")
        d2, h2 = _start(r, tmp_path, 2)
        assert os.readlink(f"/proc/{_wait_running(r, d2, h2).handle.shim_pid}/exe") == built
        # The instance that started meanwhile runs on, under its Python shim.
        assert _running(r, d1, h1).handle.shim_pid == python_shim
    finally:
        _end_all(r, tmp_path)


def test_a_start_whose_native_shim_is_gone_runs_the_python_shim_though_it_is_found_again_before_the_retry(
    tmp_path: Path,
) -> None:
    """The start retried after its native shim was gone runs under the Python shim, also when the
    binary is back before the retry. Here the search is over before the retry every time (this
    runner joins it), where it once won the race only now and then."""

    class FoundAtOnce(ProcessRunner):
        def _native_lost(self, why: str) -> None:
            super()._native_lost(why)
            if self._finding_native is not None:
                self._finding_native.join(60)

    r = FoundAtOnce(fork=False)
    try:
        built, copy = _on_a_copy(r, tmp_path)
        copy.unlink()
        d, h = _start(r, tmp_path, 0)
        assert r.native == built, "the native shim was not found again before the retry"
        shim = _wait_running(r, d, h).handle.shim_pid
        assert os.path.realpath(os.readlink(f"/proc/{shim}/exe")) == os.path.realpath(sys.executable)
    finally:
        _end_all(r, tmp_path)
