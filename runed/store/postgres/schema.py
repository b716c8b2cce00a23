"""The PostgreSQL schema: numbered migration files (``runed/store/postgres/migrations``) applied once each."""

from __future__ import annotations

import time
from importlib import resources

import psycopg

# Taken (for the migrating transaction) so runed processes starting together migrate one at a time.
_MIGRATE_LOCK = 0x52554E45


def _migrations() -> list[tuple[int, str, str]]:
    out = []
    for entry in resources.files("runed.store.postgres.migrations").iterdir():
        if entry.name.endswith(".sql"):
            out.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(out)


def apply_migrations(conn: psycopg.Connection) -> None:
    """Apply every migration not yet recorded in ``schema_migrations``, in one transaction."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
        )
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            conn.execute(sql.encode())  # several statements: no parameters, simple query protocol
            conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                (version, name, time.time()),
            )


def schema_version(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0) if row else 0
