"""The SQLite schema: numbered migration files (``runed/store/migrations``) applied once each, in order."""

from __future__ import annotations

import sqlite3
import time
from importlib import resources


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every packaged migration file, in order."""
    out = []
    for entry in resources.files("runed.store.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text()))
    return sorted(out)


def _split_sql(sql: str) -> list[str]:
    """Split a migration into statements (migrations hold no semicolons inside literals)."""
    lines = [ln for ln in sql.splitlines() if not ln.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def apply_migrations(conn: sqlite3.Connection) -> None:
    """Apply every migration not yet recorded in ``schema_migrations``; the caller holds the transaction.

    Raises:
        sqlite3.Error: a statement failed (the caller rolls back).
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
    for version, name, sql in _migrations():
        if version in done:
            continue
        for stmt in _split_sql(sql):
            conn.execute(stmt)
        conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
            (version, name, time.time()),
        )


def schema_version(conn: sqlite3.Connection) -> int:
    """The highest migration applied."""
    row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)
