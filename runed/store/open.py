"""Opening the configured store from its URL: ``sqlite:///path`` or ``postgresql://user@host:port/db``."""

from __future__ import annotations

from pathlib import Path

from runed.core.config import Config
from runed.store.base import Store
from runed.store.sqlite.connection import BUSY_TIMEOUT_SECONDS, SYNCHRONOUS


def open_configured(cfg: Config) -> Store:
    """The store ``cfg`` names, with its history limits and SQLite's settings (as :func:`open_url`)."""
    return open_url(
        cfg.store.url,
        changelog_keep=cfg.history.changelog_entries,
        audit_keep=cfg.history.audit_entries,
        sqlite_busy_timeout=cfg.store.sqlite_busy_timeout_seconds,
        sqlite_synchronous=cfg.store.sqlite_synchronous,
    )


def open_url(
    url: str,
    *,
    changelog_keep: int = 100_000,
    audit_keep: int = 100_000,
    sqlite_busy_timeout: float = BUSY_TIMEOUT_SECONDS,
    sqlite_synchronous: str = SYNCHRONOUS,
) -> Store:
    """Open (creating and migrating) the store ``url`` names.

    Raises:
        StoreError: the database cannot be opened or migrated.
        ValueError: the URL names no store runed knows (config validation refuses those first).
    """
    if url.startswith("sqlite:///"):
        from runed.store.sqlite import SQLiteStore

        return SQLiteStore(
            Path(url[len("sqlite://") :]),
            changelog_keep=changelog_keep,
            audit_keep=audit_keep,
            busy_timeout=sqlite_busy_timeout,
            synchronous=sqlite_synchronous,
        )
    if url.startswith(("postgresql://", "postgres://")):
        # Imported only when configured: psycopg costs SQLite users nothing.
        from runed.store.postgres import PostgresStore

        return PostgresStore(url, changelog_keep=changelog_keep, audit_keep=audit_keep)
    raise ValueError(f"store.url: must be sqlite:///path or postgresql://user@host:port/database, got {url!r}")
