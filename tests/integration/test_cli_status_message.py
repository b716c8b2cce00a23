"""`rune get services -o wide` and `rune describe service` say why a service is Completed (its status_message)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rune.api import common_pb2, service_pb2
from tests.e2e.rune import Rune, kill_all
from tests.integration.orch import EXITER, Orch
from tests.support import eventually


@pytest.fixture
def rune(orch: Orch, tmp_path: Path) -> Iterator[Rune]:
    """The `rune` CLI logged in to the module's runed with its root token."""
    procs: list[Any] = []
    r = Rune(home=tmp_path / "home", server=orch.runed.grpc_target, procs=procs)
    token = dict(orch.auth)["authorization"].removeprefix("Bearer ")
    login = r("login", "--token", token)
    assert login.returncode == 0, login.stderr
    yield r
    kill_all(procs)


def test_get_wide_and_describe_show_why_a_service_completed(orch: Orch, rune: Rune) -> None:
    orch.cast("job", orch.program("exiter", EXITER), "0", "0.2", restart_policy=common_pb2.RESTART_POLICY_ON_FAILURE)

    def completed() -> str:
        svc: service_pb2.Service = orch.services.GetService(
            service_pb2.GetServiceRequest(name="job"), metadata=orch.auth
        ).service
        assert svc.status == service_pb2.SERVICE_STATUS_COMPLETED and svc.status_message, svc
        return svc.status_message

    message = eventually(completed, timeout=20)
    assert "1/1 instances completed" in message
    wide = rune("get", "services", "-o", "wide")
    assert wide.returncode == 0, wide.stderr
    head, *rows = wide.stdout.splitlines()
    assert "MESSAGE" in head.split()
    row = next(r for r in rows if r.startswith("job "))
    assert message[:60] in row, row
    described = rune("describe", "service", "job")
    assert described.returncode == 0, described.stderr
    assert f"Message:     {message}" in described.stdout.splitlines(), described.stdout
    assert "statusMessage" not in described.stdout
