"""The `rune` CLI as a subprocess: its own HOME and contexts file, pointed at one runed (fixtures in conftest)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


def rune_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m rune.cli``."""
    script = Path(sys.executable).parent / "rune"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rune.cli"]


@dataclass
class Rune:
    """Runs `rune` with its own HOME and contexts file, pointed at one runed."""

    home: Path
    server: str
    procs: list[subprocess.Popen[bytes]]

    @property
    def config_path(self) -> Path:
        return self.home / ".rune" / "config.yaml"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNE_")}
        env.update(HOME=str(self.home), RUNE_CLI_CONFIG=str(self.config_path), RUNE_SERVER=self.server)
        env.update(extra)
        return env

    def __call__(
        self, *args: str, input: str | bytes | None = None, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*rune_command(), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(**(env or {})),
            start_new_session=True,
        )

    def popen(self, *args: str, out: Path) -> subprocess.Popen[bytes]:
        """Start a long-running `rune` (e.g. ``logs -f``) writing to ``out``; killed by :meth:`kill_all`."""
        with open(out, "wb") as f:
            p = subprocess.Popen(
                [*rune_command(), *args], stdout=f, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
            )
        self.procs.append(p)
        return p


def kill_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """Kill each long-running `rune` with its process group and reap it."""
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
