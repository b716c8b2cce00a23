"""The SQLite store (WAL, numbered migrations, short IMMEDIATE transactions) shared by all runed roles.

Layered by concern: ``schema`` (migrations), ``connection`` (pragmas, lock, transactions, wake-ups),
and ``store`` (the dialect under the shared :mod:`runed.store.core`: revisions from the change log's
AUTOINCREMENT id).
"""

from __future__ import annotations

from runed.store.core import SAFETY_POLL_SECONDS
from runed.store.sqlite.connection import StoreError
from runed.store.sqlite.store import SQLiteStore, open_store

__all__ = ["SAFETY_POLL_SECONDS", "SQLiteStore", "StoreError", "open_store"]
