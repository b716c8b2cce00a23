"""``rune admin audit``: the audit log (mutations and secret reads, never values)."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import Any

import click

from rune.cli.client import Session, pb2
from rune.cli.commands.admin.shared import emit, fmt_option
from rune.cli.commands.common import pass_session
from rune.cli.errors import EXIT_USAGE, CliError
from rune.cli.output import table, to_dict

# The largest page runed serves.
_PAGE = 1000


@click.command()
@click.option("--subject", default="", help="Only this subject's events.")
@click.option("--since-id", type=int, default=0, help="The oldest records after this id (default: the newest).")
@click.option("--limit", type=int, default=100, show_default=True, help="At most this many records.")
@fmt_option
@pass_session
def audit(s: Session, subject: str, since_id: int, limit: int, fmt: str) -> None:
    """Show the audit log (mutations and secret reads, never values): the newest LIMIT records, oldest first."""
    if limit < 1:
        raise CliError("--limit must be at least 1", EXIT_USAGE)
    apb = pb2("admin")
    if since_id:
        resp = s.call(
            "AdminService",
            "ListAuditEvents",
            apb.ListAuditEventsRequest(since_id=since_id, limit=limit, subject=subject),
        )
        events, next_id = list(resp.events), resp.next_since_id
    else:
        # runed pages forward from an id: read to the end, keeping the last LIMIT (the newest).
        newest: deque[Any] = deque(maxlen=limit)
        cursor = 0
        while True:
            req = apb.ListAuditEventsRequest(since_id=cursor, limit=_PAGE, subject=subject)
            resp = s.call("AdminService", "ListAuditEvents", req)
            newest.extend(resp.events)
            if not resp.events or not resp.next_since_id or resp.next_since_id == cursor:
                break
            cursor = resp.next_since_id
        events, next_id = list(newest), 0
    if emit({"events": [to_dict(e) for e in events], "nextSinceId": next_id}, fmt):
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
        for e in events
    ]
    table(rows, ["ID", "TIME", "SUBJECT", "METHOD", "OBJECT", "NAMESPACE", "RESULT"])
