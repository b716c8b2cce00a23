"""``rune admin audit``: the audit log (mutations and secret reads, never values)."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.admin.shared import emit, fmt_option
from rune.cli.commands.common import pass_session
from rune.cli.output import table, to_dict


@click.command()
@click.option("--subject", default="", help="Only this subject's events.")
@click.option("--since-id", type=int, default=0)
@click.option("--limit", type=int, default=100, show_default=True)
@fmt_option
@pass_session
def audit(s: Session, subject: str, since_id: int, limit: int, fmt: str) -> None:
    """Show the audit log (mutations and secret reads, never values)."""
    req = pb2("admin").ListAuditEventsRequest(since_id=since_id, limit=limit, subject=subject)
    resp = s.call("AdminService", "ListAuditEvents", req)
    if emit({"events": [to_dict(e) for e in resp.events], "nextSinceId": resp.next_since_id}, fmt):
        return
    rows = [
        [
            str(e.id),
            datetime.fromtimestamp(e.timestamp_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            e.subject or "-",
            e.method.rsplit("/", 1)[-1],
            f"{e.resource}/{e.name}" if e.name else e.resource,
            e.namespace or "-",
            e.code or e.outcome,
        ]
        for e in resp.events
    ]
    table(rows, ["ID", "TIME", "SUBJECT", "METHOD", "OBJECT", "NAMESPACE", "RESULT"])
