"""Integration fixtures: runeds with fast controller settings or no rate limit, shared by a module or a test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Runed, RunedFactory, run_runed
from tests.integration.orch import Orch, runefile_args
from tests.support import Metadata, bootstrap_metadata


@pytest.fixture(scope="module")
def shared_orch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orch]:
    """One runed per test module: starting runed dominates a test's time, services are per test."""
    tmp = tmp_path_factory.mktemp("orch")
    with run_runed(tmp / "data", args=runefile_args(tmp)) as r:
        yield Orch.on(r, tmp)


@pytest.fixture
def orch(shared_orch: Orch) -> Iterator[Orch]:
    """The module's runed; every service a test cast is deleted (instances killed) afterwards."""
    yield shared_orch
    shared_orch.clear()


@pytest.fixture
def own_orch(runed_factory: RunedFactory, tmp_path: Path) -> Orch:
    """A runed of the test's own, for tests that kill or restart it (or leave state behind)."""
    return Orch.on(runed_factory(tmp_path / "data", args=runefile_args(tmp_path)), tmp_path)


@pytest.fixture(scope="module")
def module_runed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, Metadata]]:
    """One runed per module with its root-token metadata, for tests that each add objects of their own."""
    with run_runed(tmp_path_factory.mktemp("module") / "data") as r:
        yield r, bootstrap_metadata(r.channel())


@pytest.fixture(scope="module")
def unthrottled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Runed, Metadata]]:
    """One runed per module without the per-token rate limit, so every request reaches its handler."""
    tmp = tmp_path_factory.mktemp("unthrottled")
    with run_runed(tmp / "data", env={"RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "0"}) as r:
        yield r, bootstrap_metadata(r.channel())
