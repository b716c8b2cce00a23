"""Shared fixtures: a real runed on free ports with a temporary data dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Runed


@pytest.fixture
def runed_factory(tmp_path: Path) -> Iterator[type[Runed]]:
    """Start runed processes for a test; all are stopped (and their groups killed) afterwards."""
    started: list[Runed] = []

    class _Runed(Runed):
        def start(self, timeout: float = 30.0) -> Runed:
            started.append(self)
            return super().start(timeout)

    yield _Runed
    for r in started:
        r.stop()


@pytest.fixture
def runed(runed_factory: type[Runed], tmp_path: Path) -> Runed:
    """One running runed (supervisor and all roles) with a fresh data dir."""
    return runed_factory(data_dir=tmp_path / "data").start()


@pytest.fixture
def root_token(runed: Runed) -> str:
    """The root token from AdminBootstrap on the test's runed (loopback, so allowed)."""
    from rune.api import admin_pb2, admin_pb2_grpc

    stub = admin_pb2_grpc.AdminServiceStub(runed.channel())
    resp = stub.AdminBootstrap(admin_pb2.AdminBootstrapRequest())
    token: str = resp.token_secret
    assert token
    return token


@pytest.fixture
def auth(root_token: str) -> list[tuple[str, str]]:
    """gRPC call metadata carrying the root token."""
    return [("authorization", f"Bearer {root_token}")]


@pytest.fixture
def api_runed(runed_factory: type[Runed], tmp_path: Path) -> Runed:
    """The gRPC role alone (no controller): for API behaviour that must not depend on the controller."""

    class _ApiOnly(runed_factory):  # type: ignore[valid-type,misc]
        def ready(self) -> bool:
            return (self.data_dir / "run" / "grpc.json").exists()

    runner: Runed = _ApiOnly(data_dir=tmp_path / "api-data", args=["serve", "--role", "grpc"])
    return runner.start()


@pytest.fixture
def api_auth(api_runed: Runed) -> list[tuple[str, str]]:
    """Root-token call metadata for ``api_runed``."""
    from rune.api import admin_pb2, admin_pb2_grpc

    resp = admin_pb2_grpc.AdminServiceStub(api_runed.channel()).AdminBootstrap(admin_pb2.AdminBootstrapRequest())
    return [("authorization", f"Bearer {resp.token_secret}")]


@pytest.fixture(scope="session", autouse=True)
def no_orphans_survive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the whole run, no process started from this run's temp dirs may be left alive.

    Everything a test starts (runed roles, shims, instances, exec children) lives under the
    session's base temp dir (data dirs, scripts, working directories); whatever still refers to
    it at the end is an orphan: it is killed and the run fails, naming it.
    """
    yield
    import os
    import signal

    base = str(tmp_path_factory.getbasetemp())
    me = os.getpid()
    orphans: list[str] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if base in cmdline or cwd.startswith(base):
            orphans.append(f"{entry.name}: {cmdline.strip()[:160]}")
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not orphans, "processes outlived the test run:\n" + "\n".join(orphans)
