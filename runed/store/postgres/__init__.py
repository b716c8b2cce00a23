"""The PostgreSQL store (psycopg 3, a connection pool, numbered migrations, LISTEN/NOTIFY wake-ups).

Same semantics as :mod:`runed.store.sqlite`: records, one global revision, a retained change log,
audit, meta, nested transactions. Revisions are handed out under a row lock held until commit, so
commit order is revision order and a watcher reading the change log never skips one.
"""

from __future__ import annotations

from runed.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
