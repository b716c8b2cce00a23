"""What the ``rune admin`` commands share: the output option, structured dumps, times and secret files."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

import click

from rune.cli.output import dump


def write_secret(path: str, secret: str) -> None:
    """Write a token secret to ``path``, readable by its owner only (0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secret + "\n")
    os.chmod(path, 0o600)


def unix(ts: int) -> str:
    """Unix seconds as RFC 3339 UTC (``-`` for 0)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else "-"


def emit(data: Any, fmt: str) -> bool:
    """Dump ``data`` when a structured format was asked for; True when done."""
    if fmt in ("json", "yaml"):
        dump(data, fmt)
        return True
    return False


# -o for admin lists: no "wide" or "name" forms there.
fmt_option = click.option("-o", "--output", "fmt", type=click.Choice(["table", "json", "yaml"]), default="table")
