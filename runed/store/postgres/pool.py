"""The PostgreSQL store's connection pool, set up to ride out a database restart or outage.

What psycopg_pool does by default does not fit a control plane whose calls wait on it:

* A connection the server closed while it sat idle in the pool (a restart) would fail the next
  statement run on it. ``check`` finds it at checkout instead: one non-blocking poll of its socket,
  and a round trip only when something arrived there (the server's goodbye), so a healthy
  checkout costs no extra round trip. The pool then drops it and hands out (or makes) another.
* Waiting for a connection: 30 s by default. A call waits :data:`DOWN_WAIT_SECONDS`, and longer
  (up to :data:`POOL_WAIT_SECONDS`) only while the pool's connection attempts are not failing: all
  connections busy is worth waiting for, a database that refuses them is not. Once a call has found
  the database unavailable, later calls wait only the short time, so they fail fast with
  UNAVAILABLE (and retry information) instead of stalling; the first call that gets through ends that.
* Reconnecting backs off up to minutes by default; a short ``reconnect_timeout`` ends each attempt
  soon, and the next call starts a fresh one at once, so runed is back within a second or two of
  the database.

Every failure that means "the database cannot serve now" leaves here as
:class:`runed.core.errors.StoreUnavailable` (see :mod:`runed.store.faults`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from runed.core import fdwait
from runed.store import faults

# How long a call waits for a pooled connection while the database is healthy (all busy).
POOL_WAIT_SECONDS = 5.0
# ... and once a call found it unavailable, until one gets through again.
DOWN_WAIT_SECONDS = 0.25
# How long one reconnection attempt keeps retrying in the background before the next call starts anew.
RECONNECT_TIMEOUT_SECONDS = 2.0
# How long a session may sit inside a transaction without a statement (ms): runed's transactions
# are a few statements in a row; a host that stops midway has lost its network or its process.
IDLE_IN_TRANSACTION_MS = 10_000
# libpq connection settings: give up connecting after 3 s; find a dead peer (not a refused port:
# a host gone silent) on an idle connection within ~25 s, and on a busy one after 10 s unacknowledged.
CONNECT_KWARGS: dict[str, object] = {
    "autocommit": True,
    "connect_timeout": 3,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
    # The server's side of the same: a host cut off in the middle of a transaction holds the revision
    # row lock, and with it every other host's writes, until the server drops its session. Idle in a
    # transaction for IDLE_IN_TRANSACTION or silent on the wire for ~25 s, it is dropped.
    "options": (
        f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
        " -c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
        " -c tcp_user_timeout=10000"
    ),
}


def _check_idle(conn: psycopg.Connection) -> None:
    """Raise if an idle pooled connection is broken; see the module docstring."""
    if conn.closed or conn.pgconn.status != psycopg.pq.ConnStatus.OK:
        raise psycopg.OperationalError("the pooled connection is closed")
    if fdwait.ready(conn.fileno(), 0)[0]:
        ConnectionPool.check_connection(conn)


class Pool:
    """A psycopg pool whose checkouts fail fast, as StoreUnavailable, while the database is down."""

    def __init__(self, url: str, size: int) -> None:
        self.down = False
        self._errors_seen = 0
        self._pool: ConnectionPool[psycopg.Connection] = ConnectionPool(
            url,
            min_size=1,
            max_size=size,
            kwargs=dict(CONNECT_KWARGS),
            check=_check_idle,
            timeout=POOL_WAIT_SECONDS,
            reconnect_timeout=RECONNECT_TIMEOUT_SECONDS,
            open=True,
            name="runed-store",
        )

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection for the body; a database failure in it (or in getting it) is StoreUnavailable."""
        try:
            conn = self._getconn()
            try:
                with conn:
                    yield conn
            finally:
                self._pool.putconn(conn)
        except Exception as e:
            if not faults.is_unavailable(e):
                raise
            self.down = True
            raise faults.unavailable(e) from None
        self.down = False
        self._errors_seen = self._connect_errors()

    def _connect_errors(self) -> int:
        return self._pool.get_stats().get("connections_errors", 0)

    def _getconn(self) -> psycopg.Connection:
        """Wait briefly; wait longer only if the pool's connection attempts are not failing (all busy, not down)."""
        if self.down:
            return self._pool.getconn(timeout=DOWN_WAIT_SECONDS)
        try:
            return self._pool.getconn(timeout=DOWN_WAIT_SECONDS)
        except PoolTimeout:
            if self._connect_errors() > self._errors_seen:
                raise
        return self._pool.getconn(timeout=POOL_WAIT_SECONDS - DOWN_WAIT_SECONDS)

    def close(self) -> None:
        self._pool.close()
