"""The process runner: each instance is a local process under its own shim, in its own session."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from runed.runner.base import Handle, LaunchSpec, Observation, RunnerError
from runed.runner.shim import EXIT_NAME, LAUNCH_NAME, PID_NAME, SHIM_ENV_PREFIX, proc_start_time, write_json_atomic

SHIM_PATH = str(Path(__file__).with_name("shim.py"))
# How long a shim may take to report its child's pid before the start counts as failed.
SPAWN_TIMEOUT_SECONDS = 15.0


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def alive(pid: int, start: int | None) -> bool:
    """True when ``pid`` still names the process that was started (pid reuse is ruled out)."""
    if pid <= 0:
        return False
    now = proc_start_time(pid)
    return now is not None and (start is None or now == start)


class ProcessRunner:
    """Starts ``python -m runed.runner.shim <dir>`` detached; the shim starts and watches the instance."""

    name = "process"

    def __init__(self) -> None:
        # Shims this process started: polled so they never linger as zombies.
        self._shims: dict[int, subprocess.Popen[bytes]] = {}
        self._spawned_at: dict[int, float] = {}

    def unavailable_reason(self) -> str | None:
        return None

    def start(self, spec: LaunchSpec) -> Handle:
        d = spec.directory
        d.mkdir(parents=True, exist_ok=True)
        if not spec.argv or not spec.argv[0]:
            raise RunnerError("process runtime needs a command (service.process.command or service.command)")
        for name in (EXIT_NAME, PID_NAME):
            (d / name).unlink(missing_ok=True)
        write_json_atomic(
            d / LAUNCH_NAME,
            {
                "argv": spec.argv,
                "cwd": spec.cwd,
                "uid": spec.uid,
                "gid": spec.gid,
                "rlimit_as": spec.rlimit_as,
                "max_bytes": spec.log_max_bytes,
                "backups": spec.log_backups,
            },
        )
        env = {k: v for k, v in spec.env.items() if not k.startswith(SHIM_ENV_PREFIX)}
        shim_env = dict(env)
        with (d / "shim.err").open("ab") as err:
            try:
                p = subprocess.Popen(
                    # Run by path without site: the shim needs only the standard library, and a
                    # bare interpreter starts markedly faster (it doubles every instance start).
                    [sys.executable, "-S", "-E", SHIM_PATH, str(d)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    env=shim_env,
                    cwd=str(d),
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as e:
                raise RunnerError(f"cannot start shim: {e}") from None
        self._shims[p.pid] = p
        self._spawned_at[p.pid] = time.monotonic()
        return Handle(shim_pid=p.pid)

    def reap(self) -> None:
        for pid, p in list(self._shims.items()):
            if p.poll() is not None:
                del self._shims[pid]
                self._spawned_at.pop(pid, None)

    def observe(self, directory: Path, handle: Handle) -> Observation:
        ex = _read_json(directory / EXIT_NAME)
        if handle.pid == 0:
            info = _read_json(directory / PID_NAME)
            if info is not None:
                handle = Handle(
                    pid=int(info["pid"]),
                    pid_start=info.get("pid_start"),
                    shim_pid=int(info.get("shim_pid") or handle.shim_pid),
                )
        if ex is not None:
            return Observation("exited", handle, ex.get("code"), ex.get("signal"), str(ex.get("error") or ""))
        if handle.pid:
            if alive(handle.pid, handle.pid_start):
                return Observation("running", handle)
            # Gone without an exit record: the shim itself was killed (e.g. kill -9 of everything).
            ex = _read_json(directory / EXIT_NAME)
            if ex is not None:
                return Observation("exited", handle, ex.get("code"), ex.get("signal"), str(ex.get("error") or ""))
            return Observation("exited", handle, None, None, "process vanished without an exit record")
        # No pid yet: the shim is still starting, unless it died or took too long.
        shim = self._shims.get(handle.shim_pid)
        shim_gone = shim.poll() is not None if shim is not None else not alive(handle.shim_pid, None)
        if shim_gone:
            err = (
                (directory / "shim.err").read_text(errors="replace")[-500:] if (directory / "shim.err").exists() else ""
            )
            return Observation("exited", handle, None, None, f"shim failed to start the instance {err.strip()}")
        started = self._spawned_at.get(handle.shim_pid)
        if started is not None and time.monotonic() - started > SPAWN_TIMEOUT_SECONDS:
            return Observation("exited", handle, None, None, "instance did not start in time")
        return Observation("starting", handle)

    async def stop(self, directory: Path, handle: Handle, grace: float) -> Observation:
        obs = self.observe(directory, handle)
        deadline = time.monotonic() + SPAWN_TIMEOUT_SECONDS
        while obs.state == "starting" and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            obs = self.observe(directory, obs.handle)
        if obs.state != "running":
            return obs
        pgid = obs.handle.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + max(0.0, grace)
        while time.monotonic() < deadline:
            obs = self.observe(directory, obs.handle)
            if obs.state == "exited":
                break
            await asyncio.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        # Give the shim a moment to write how it ended.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            obs = self.observe(directory, obs.handle)
            if obs.state == "exited" and (directory / EXIT_NAME).exists():
                break
            await asyncio.sleep(0.02)
        # Stragglers in the group (children that ignored SIGTERM) go too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        self.reap()
        return obs
