"""Integration fixtures: a runed with fast controller settings, shared by a module or a test's own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import RunedFactory, run_runed
from tests.integration.orch import Orch, runefile_args


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
