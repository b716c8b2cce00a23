"""Fixtures for driving the real `rune` binary as a subprocess against a real runed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import Runed


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
        """Start a long-running `rune` (e.g. ``logs -f``) writing to ``out``; killed at teardown."""
        with open(out, "wb") as f:
            p = subprocess.Popen(
                [*rune_command(), *args], stdout=f, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True
            )
        self.procs.append(p)
        return p


def _kill(p: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait(10)


@pytest.fixture(scope="module")
def shared_runed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runed]:
    """One runed for a whole module: the CLI workflow tests build on each other's state."""
    r = Runed(data_dir=tmp_path_factory.mktemp("e2e") / "data").start(timeout=60)
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture(scope="module")
def rune_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Rune]]:
    procs: list[subprocess.Popen[bytes]] = []

    def make(server: str) -> Rune:
        return Rune(home=tmp_path_factory.mktemp("home"), server=server, procs=procs)

    yield make
    for p in procs:
        _kill(p)


@pytest.fixture
def offline_rune(tmp_path: Path) -> Iterator[Rune]:
    """A `rune` pointed at a port where nothing listens."""
    procs: list[subprocess.Popen[bytes]] = []
    yield Rune(home=tmp_path, server="127.0.0.1:1", procs=procs)
    for p in procs:
        _kill(p)
