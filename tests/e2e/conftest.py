"""Fixtures for driving the real `rune` binary as a subprocess against a real runed."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.rune import Rune, kill_all
from tests.harness import Runed, run_runed


@pytest.fixture(scope="module")
def shared_runed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runed]:
    """One runed for a whole module: the CLI workflow tests build on each other's state."""
    with run_runed(tmp_path_factory.mktemp("e2e") / "data", timeout=60) as r:
        yield r


@pytest.fixture(scope="module")
def rune_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Rune]]:
    """Makes a `rune` with a fresh HOME pointed at a server; its long-running commands die with the module."""
    procs: list[subprocess.Popen[bytes]] = []

    def make(server: str) -> Rune:
        return Rune(home=tmp_path_factory.mktemp("home"), server=server, procs=procs)

    yield make
    kill_all(procs)


@pytest.fixture
def offline_rune(tmp_path: Path) -> Iterator[Rune]:
    """A `rune` pointed at a port where nothing listens."""
    procs: list[subprocess.Popen[bytes]] = []
    yield Rune(home=tmp_path, server="127.0.0.1:1", procs=procs)
    kill_all(procs)
