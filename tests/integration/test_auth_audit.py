"""The audit log records failed authentications (bounded under a flood) and the local bootstrap commands."""

from __future__ import annotations

import getpass
import hashlib

import grpc
import httpx

from rune.api import admin_pb2, admin_pb2_grpc, auth_pb2, auth_pb2_grpc
from runed.pipeline.authfail import RECORDS_PER_WINDOW
from tests.harness import Runed, run_cli
from tests.support import bearer, code_of

WHOAMI = "/rune.api.AuthService/WhoAmI"


def _events(r: Runed, token: str) -> list[admin_pb2.AuditEvent]:
    stub = admin_pb2_grpc.AdminServiceStub(r.channel())
    return list(stub.ListAuditEvents(admin_pb2.ListAuditEventsRequest(limit=1000), metadata=bearer(token)).events)


def _failures(r: Runed, token: str) -> list[admin_pb2.AuditEvent]:
    return [e for e in _events(r, token) if e.code == "UNAUTHENTICATED"]


def test_failed_authentications_are_audited_without_the_token(runed: Runed, root_token: str) -> None:
    who = auth_pb2_grpc.AuthServiceStub(runed.channel()).WhoAmI
    bad = "rune_" + "B" * 43
    assert code_of(who, auth_pb2.WhoAmIRequest(), metadata=bearer(bad))[0] == grpc.StatusCode.UNAUTHENTICATED
    auth = auth_pb2_grpc.AuthServiceStub(runed.channel())
    tok = auth.CreateToken(auth_pb2.CreateTokenRequest(name="gone", subject_name="carol"), metadata=bearer(root_token))
    auth.RevokeToken(auth_pb2.RevokeTokenRequest(id=tok.id), metadata=bearer(root_token))
    assert code_of(who, auth_pb2.WhoAmIRequest(), metadata=bearer(tok.secret))[0] == grpc.StatusCode.UNAUTHENTICATED
    rest = httpx.get(
        runed.http_base + "/v1/namespaces", headers={"authorization": "Bearer not-a-rune-token"}, timeout=10
    )
    assert rest.status_code == 401
    assert httpx.get(runed.http_base + "/v1/namespaces", timeout=10).status_code == 401

    failures = _failures(runed, root_token)
    listing = b"".join(e.SerializeToString() for e in failures)
    for secret in (bad, tok.secret, "not-a-rune-token"):
        assert secret.encode() not in listing
    unknown, revoked, rest_bad, rest_none = failures[:4]
    assert (unknown.method, unknown.subject, unknown.peer, unknown.outcome) == (
        WHOAMI,
        "anonymous",
        "127.0.0.1",
        "failure",
    )
    assert "unknown token" in unknown.detail
    assert "sha256:" + hashlib.sha256(bad.encode()).hexdigest()[:12] in unknown.detail
    assert revoked.subject == "carol" and f"revoked token {tok.id}" in revoked.detail
    assert rest_bad.method == "/rune.api.NamespaceService/ListNamespaces" and "over rest" in rest_bad.detail
    assert "not a rune token" in rest_bad.detail
    assert "no credentials" in rest_none.detail


def test_a_flood_of_bad_tokens_adds_a_bounded_number_of_records(runed: Runed, root_token: str) -> None:
    who = auth_pb2_grpc.AuthServiceStub(runed.channel()).WhoAmI
    flood = 5 * RECORDS_PER_WINDOW
    for i in range(flood):
        code, _ = code_of(who, auth_pb2.WhoAmIRequest(), metadata=bearer(f"rune_flood{i:040d}"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    # One window's budget (two if the flood straddled a window end); the rest are counted for a summary.
    recorded = [e for e in _failures(runed, root_token) if e.method == WHOAMI]
    assert 0 < len(recorded) <= 2 * RECORDS_PER_WINDOW < flood


def test_bootstrap_from_the_server_host_is_audited(runed: Runed, root_token: str) -> None:
    again = run_cli(["--data-dir", str(runed.data_dir), "bootstrap"])
    assert again.returncode != 0 and "already bootstrapped" in again.stderr
    out = run_cli(["--data-dir", str(runed.data_dir), "bootstrap", "--reset"])
    assert out.returncode == 0, out.stderr
    new = out.stdout.strip()
    events = [e for e in _events(runed, new) if e.method.startswith("runed bootstrap")]
    actor = f"local:{getpass.getuser()}"
    assert [(e.method, e.subject, e.outcome, e.code, e.peer) for e in events] == [
        ("runed bootstrap", actor, "failure", "FAILED_PRECONDITION", "local"),
        ("runed bootstrap --reset", actor, "success", "OK", "local"),
    ]
    assert "revoked 1 root token(s)" in events[1].detail and new not in events[1].detail
