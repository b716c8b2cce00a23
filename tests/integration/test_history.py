"""Service history over real gRPC: revisions with who/when/why, retention, rollback as a new revision."""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import pytest

from rune.api import admin_pb2, admin_pb2_grpc, service_pb2, service_pb2_grpc
from tests.harness import Runed, RunedFactory

Auth = list[tuple[str, str]]


def _svc(env: dict[str, str] | None = None, scale: int = 1) -> service_pb2.Service:
    svc = service_pb2.Service(name="web", runtime="process", env=env or {}, scale=scale)
    svc.process.command = sys.executable
    svc.process.args.extend(["-c", "import time; time.sleep(60)"])
    return svc


def _revisions(stub: service_pb2_grpc.ServiceServiceStub, auth: Auth) -> list[service_pb2.ServiceRevision]:
    return list(stub.ListServiceRevisions(service_pb2.ListServiceRevisionsRequest(name="web"), metadata=auth).revisions)


def test_every_spec_change_is_a_revision_with_who_when_why(api_runed: Runed, api_auth: Auth) -> None:
    stub = service_pb2_grpc.ServiceServiceStub(api_runed.channel())
    stub.CreateService(service_pb2.CreateServiceRequest(service=_svc(), change_cause="initial cast"), metadata=api_auth)
    stub.UpdateService(
        service_pb2.UpdateServiceRequest(service=_svc({"V": "2"}), deployment_tag="v2"), metadata=api_auth
    )
    # No change, no revision.
    stub.UpdateService(service_pb2.UpdateServiceRequest(service=_svc({"V": "2"})), metadata=api_auth)
    stub.UpdateService(
        service_pb2.UpdateServiceRequest(service=_svc({"V": "3"}), change_cause="hotfix", deployment_tag="v3"),
        metadata=api_auth,
    )
    revs = _revisions(stub, api_auth)
    assert [r.revision for r in revs] == [3, 2, 1]
    assert [r.change_cause for r in revs] == ["hotfix", "v2", "initial cast"]
    assert [r.generation for r in revs] == [3, 2, 1]
    assert all(r.created_by == "root" and r.created_at.endswith("Z") for r in revs)
    assert [dict(r.service.env) for r in revs] == [{"V": "3"}, {"V": "2"}, {}]
    assert revs[0].spec_hash != revs[1].spec_hash
    with pytest.raises(grpc.RpcError) as e:
        stub.ListServiceRevisions(service_pb2.ListServiceRevisionsRequest(name="nope"), metadata=api_auth)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_rollback_restores_a_spec_as_a_new_revision_and_keeps_scale(api_runed: Runed, api_auth: Auth) -> None:
    stub = service_pb2_grpc.ServiceServiceStub(api_runed.channel())
    stub.CreateService(service_pb2.CreateServiceRequest(service=_svc({"V": "1"})), metadata=api_auth)
    stub.UpdateService(service_pb2.UpdateServiceRequest(service=_svc({"V": "2"})), metadata=api_auth)
    stub.UpdateService(service_pb2.UpdateServiceRequest(service=_svc({"V": "3"}, scale=4)), metadata=api_auth)
    prev = stub.RollbackService(service_pb2.RollbackServiceRequest(name="web"), metadata=api_auth)
    assert dict(prev.service.env) == {"V": "2"} and prev.service.scale == 4
    assert prev.service.metadata.generation == 4 and prev.status.message == "Rolled back to revision 2"
    to_one = stub.RollbackService(
        service_pb2.RollbackServiceRequest(name="web", to_revision=1, change_cause="back to basics"), metadata=api_auth
    )
    assert dict(to_one.service.env) == {"V": "1"}
    revs = _revisions(stub, api_auth)
    assert [(r.revision, r.rollback_of) for r in revs[:2]] == [(5, 1), (4, 2)]
    assert revs[0].change_cause == "back to basics" and revs[1].change_cause == "rollback to revision 2"
    got = stub.GetService(service_pb2.GetServiceRequest(name="web"), metadata=api_auth).service
    assert dict(got.env) == {"V": "1"} and got.metadata.generation == 5
    with pytest.raises(grpc.RpcError) as e:
        stub.RollbackService(service_pb2.RollbackServiceRequest(name="web", to_revision=99), metadata=api_auth)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_rollback_to_a_revision_that_differs_in_scale_alone_says_so(api_runed: Runed, api_auth: Auth) -> None:
    """Nothing to restore but the scale, which a rollback keeps: the answer says so (it said only
    "already at the spec of revision 1", and the CLI printed "rolled back")."""
    stub = service_pb2_grpc.ServiceServiceStub(api_runed.channel())
    stub.CreateService(service_pb2.CreateServiceRequest(service=_svc({"V": "1"}, scale=2)), metadata=api_auth)
    stub.UpdateService(service_pb2.UpdateServiceRequest(service=_svc({"V": "1"}, scale=3)), metadata=api_auth)
    back = stub.RollbackService(service_pb2.RollbackServiceRequest(name="web"), metadata=api_auth)
    assert back.service.scale == 3 and back.service.metadata.generation == 2
    assert back.status.message == (
        "already at the spec of revision 1, whose scale (2) differs: a rollback keeps the current scale 3;"
        " scale the service to change it"
    )
    assert [r.revision for r in _revisions(stub, api_auth)] == [2, 1]


def test_retention_keeps_the_configured_number_of_revisions(runed_factory: RunedFactory, tmp_path: Path) -> None:
    cfg = tmp_path / "runefile.yaml"
    cfg.write_text("history:\n  revisions: 3\n")

    r = runed_factory(tmp_path / "d", args=["--config", str(cfg)], role="grpc")
    token = admin_pb2_grpc.AdminServiceStub(r.channel()).AdminBootstrap(admin_pb2.AdminBootstrapRequest())
    auth = [("authorization", f"Bearer {token.token_secret}")]
    stub = service_pb2_grpc.ServiceServiceStub(r.channel())
    stub.CreateService(service_pb2.CreateServiceRequest(service=_svc({"V": "0"})), metadata=auth)
    for i in range(1, 6):
        stub.UpdateService(service_pb2.UpdateServiceRequest(service=_svc({"V": str(i)})), metadata=auth)
    assert [r.revision for r in _revisions(stub, auth)] == [6, 5, 4]
    with pytest.raises(grpc.RpcError) as e:
        stub.RollbackService(service_pb2.RollbackServiceRequest(name="web", to_revision=2), metadata=auth)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not retained" in (e.value.details() or "")
