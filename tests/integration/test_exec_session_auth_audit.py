"""Failed authentications on the REST exec session paths (output, input) are audited like any other call."""

from __future__ import annotations

import hashlib

import httpx

from rune.api import admin_pb2, admin_pb2_grpc
from tests.harness import Runed
from tests.support import bearer, eventually

STREAM_EXEC = "/rune.api.ExecService/StreamExec"


def test_a_bad_token_on_an_exec_session_is_audited(runed: Runed, root_token: str) -> None:
    base = runed.http_base + "/v1/namespaces/default/exec/sessions/some-session"
    bad_output, bad_input = "rune_" + "O" * 43, "rune_" + "I" * 43
    r = httpx.get(base + "/output", headers={"authorization": f"Bearer {bad_output}"}, timeout=10)
    assert r.status_code == 401
    r = httpx.post(base + "/input", headers={"authorization": f"Bearer {bad_input}"}, json={"close": True}, timeout=10)
    assert r.status_code == 401

    def audited() -> list[admin_pb2.AuditEvent]:
        stub = admin_pb2_grpc.AdminServiceStub(runed.channel())
        req = admin_pb2.ListAuditEventsRequest(limit=1000)
        events = stub.ListAuditEvents(req, metadata=bearer(root_token)).events
        found = [e for e in events if e.code == "UNAUTHENTICATED" and e.method == STREAM_EXEC]
        assert len(found) == 2, found
        return found

    found = eventually(audited, timeout=10)
    details = " ".join(e.detail for e in found)
    for secret in (bad_output, bad_input):
        assert secret not in details
        assert "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12] in details
    assert all("over rest" in e.detail and e.outcome == "failure" for e in found)
