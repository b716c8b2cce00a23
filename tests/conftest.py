"""Shared fixtures: a real runed on free ports with a temporary data dir, and the run's orphan check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Runed, RunedFactory, Runeds, reap_orphans
from tests.support import Metadata, bootstrap_metadata


@pytest.fixture
def runed_factory() -> Iterator[RunedFactory]:
    """Start runeds for a test (``runed_factory(data_dir, args=..., role=...)``); all are reaped afterwards."""
    runeds = Runeds()
    try:
        yield runeds.start
    finally:
        runeds.close()


@pytest.fixture
def runed(runed_factory: RunedFactory, tmp_path: Path) -> Runed:
    """One running runed (supervisor and all roles) with a fresh data dir."""
    return runed_factory(tmp_path / "data")


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
def auth(root_token: str) -> Metadata:
    """gRPC call metadata carrying the root token."""
    return [("authorization", f"Bearer {root_token}")]


@pytest.fixture
def api_runed(runed_factory: RunedFactory, tmp_path: Path) -> Runed:
    """The gRPC role alone (no controller): for API behaviour that must not depend on the controller."""
    return runed_factory(tmp_path / "api-data", role="grpc")


@pytest.fixture
def api_auth(api_runed: Runed) -> Metadata:
    """Root-token call metadata for ``api_runed``."""
    return bootstrap_metadata(api_runed.channel())


@pytest.fixture(scope="session", autouse=True)
def no_orphans_survive() -> Iterator[None]:
    """After the whole run, nothing a runed of this run started may be left alive.

    Only this run's own processes are looked at (see ``tests.harness.reap_orphans``): runed
    supervisors and roles by the marker in their environment, instances, shims and exec children
    by the data dirs of the runeds this run started. Each one found is killed and the run fails,
    naming it; a process that merely mentions a temp dir (the runner's parent, say) is left alone.
    """
    yield
    orphans = reap_orphans()
    assert not orphans, "processes outlived the test run:\n" + "\n".join(orphans)
