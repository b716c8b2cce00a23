"""Fixtures for driving the real `rune` binary as a subprocess against a real runed."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.rune import Rune, kill_all
from tests.e2e.shop import cast_file
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


@pytest.fixture(scope="module")
def rune(shared_runed: Runed, rune_factory: Callable[[str], Rune], tmp_path_factory: pytest.TempPathFactory) -> Rune:
    """A logged-in CLI: bootstrap writes the token to a file, login verifies it with WhoAmI."""
    r = rune_factory(shared_runed.grpc_target)
    token_file = tmp_path_factory.mktemp("tok") / "root.token"
    boot = r("admin", "bootstrap", "--out-file", str(token_file))
    assert boot.returncode == 0, boot.stderr
    assert token_file.stat().st_mode & 0o777 == 0o600
    login = r("login", "--token-file", str(token_file))
    assert login.returncode == 0, login.stderr
    assert "as root" in login.stdout
    return r


@pytest.fixture(scope="module")
def cast_app(rune: Rune, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shop app cast (and running) on the module's runed; its cast file."""
    f = cast_file(tmp_path_factory.mktemp("cast"))
    r = rune("cast", str(f), "--timeout", "60s", timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    return f
