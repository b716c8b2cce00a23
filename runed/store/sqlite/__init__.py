"""The SQLite store (WAL, numbered migrations, short IMMEDIATE transactions) shared by all runed roles.

Layered by concern: ``schema`` (migrations), ``connection`` (pragmas, lock, transactions, wake-ups),
``changelog`` (revisions, pruning, watch) and ``store`` (objects, audit, meta: the Store protocol).
"""

from __future__ import annotations

from runed.store.sqlite.changelog import SAFETY_POLL_SECONDS
from runed.store.sqlite.connection import StoreError
from runed.store.sqlite.store import SQLiteStore, open_store

__all__ = ["SAFETY_POLL_SECONDS", "SQLiteStore", "StoreError", "open_store"]
