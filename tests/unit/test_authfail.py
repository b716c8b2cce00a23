"""Failed authentications in the audit log: what is stored of a credential, and the per-window budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runed.core import errors
from runed.pipeline.authfail import AuthFailureLog, presented
from runed.pipeline.context import CallContext
from runed.pipeline.methods import all_methods
from runed.store.sqlite import open_store

WHOAMI = next(m for m in all_methods() if m.full_name == "/rune.api.AuthService/WhoAmI")
TOKEN = "rune_" + "x" * 43


def _ctx(peer: str, token: str = TOKEN) -> CallContext:
    deps: Any = None  # the failure log reads the call's metadata and peer only
    return CallContext(deps, WHOAMI, "grpc", {"authorization": f"Bearer {token}"}, peer, request_id="r1")


def test_presented_credentials_are_named_never_stored() -> None:
    for header in (f"Bearer {TOKEN}", TOKEN, f"Basic {TOKEN}", f"{TOKEN} {TOKEN}", "Bearer a.b.c"):
        shown = presented({"authorization": header}, "")
        assert TOKEN not in shown and "sha256:" in shown, shown
    assert presented({"authorization": f"Bearer {TOKEN}"}, "").startswith("rune token sha256:")
    assert presented({}, "alice") == "client certificate CN='alice'"
    assert presented({}, "") == "no credentials"


def test_a_flood_is_recorded_up_to_the_budget_then_summarised(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    now = [1000.0]
    failures = AuthFailureLog(store.audit, window_seconds=60, per_window=3, clock=lambda: now[0])
    try:
        err = errors.Unauthenticated("invalid or expired credentials")
        for i in range(10):
            failures.record(_ctx("10.0.0.1" if i % 2 else "10.0.0.2"), err)
        rows = store.list_audit(limit=100)
        assert len(rows) == 3 and all(r.code == "UNAUTHENTICATED" and r.resource == "auth" for r in rows)
        assert all(TOKEN not in r.detail for r in rows)
        now[0] += 61  # the next failure opens a new window: the summary of the last one comes first
        failures.record(_ctx("10.0.0.3"), err)
        rows = store.list_audit(limit=100)
        summary, fresh = rows[3], rows[4]
        assert summary.method == "authentication" and summary.detail.startswith("7 more failed authentications")
        assert "10.0.0.1 x4" in summary.detail and "10.0.0.2 x3" in summary.detail
        assert fresh.peer == "10.0.0.3" and len(rows) == 5
    finally:
        store.close()
