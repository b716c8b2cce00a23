"""Shared fixtures: a real runed on free ports with a temporary data dir, and the run's orphan check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Runed, RunedFactory, Runeds, reap_orphans
from tests.pgsupport import fresh_database
from tests.support import Metadata, bootstrap_metadata

# Integration modules whose ``runed`` / ``api_runed`` run on both stores, SQLite and PostgreSQL
# (None: every module). A list, not all: the PostgreSQL variant of every module on these fixtures
# took ~1.4x their SQLite time, more than the suite's 15-minute budget has left; these are the ones
# whose outcome depends on the store (objects, transactions, revisions and the change log, paging,
# watches, history). Left out: transport/ops modules (server_core, server_version, grpc_reflection),
# audit-only modules, and modules that read the SQLite file of the runed directly (dry_run,
# instances_api, secrets: at-rest checks; auth: `runed bootstrap` on the data dir). PostgreSQL
# orchestration is covered by test_store_postgres and test_store_faults.
PG_STORE_MODULES: frozenset[str] | None = frozenset(
    {
        "test_services_api",
        "test_services_ops",
        "test_namespaces",
        "test_configmaps",
        "test_history",
        "test_watch",
    }
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each listed module's tests that start a runed through the shared fixtures once per store."""
    module = metafunc.module.__name__
    on_both = module.startswith("tests.integration.") and (
        PG_STORE_MODULES is None or module.rsplit(".", 1)[1] in PG_STORE_MODULES
    )
    if on_both and "runed_store_args" in metafunc.fixturenames:
        metafunc.parametrize("runed_store_args", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def runed_store_args(request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """The flags that pick a shared-fixture runed's store: none (its data dir's SQLite file) or a fresh
    PostgreSQL database of its own (skipped with the reason without a server; a failure when CI=true)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield []
        return
    with fresh_database() as url:
        yield ["--store-url", url]


@pytest.fixture
def runed_factory() -> Iterator[RunedFactory]:
    """Start runeds for a test (``runed_factory(data_dir, args=..., role=...)``); all are reaped afterwards."""
    runeds = Runeds()
    try:
        yield runeds.start
    finally:
        runeds.close()


@pytest.fixture
def runed(runed_factory: RunedFactory, tmp_path: Path, runed_store_args: list[str]) -> Iterator[Runed]:
    """One running runed (supervisor and all roles) with a fresh data dir (and store)."""
    r = runed_factory(tmp_path / "data", args=runed_store_args)
    yield r
    r.stop()  # before its PostgreSQL database is dropped


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
def api_runed(runed_factory: RunedFactory, tmp_path: Path, runed_store_args: list[str]) -> Iterator[Runed]:
    """The gRPC role alone (no controller): for API behaviour that must not depend on the controller."""
    r = runed_factory(tmp_path / "api-data", args=runed_store_args, role="grpc")
    yield r
    r.stop()  # before its PostgreSQL database is dropped


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
