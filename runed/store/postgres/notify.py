"""Wake-ups over LISTEN/NOTIFY: each commit that logged a change notifies ``runed_changes``.

A hint, not the data: watchers always read the change log, so a lost notification (or a listening
connection that broke) only delays a wake-up until the next safety poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

from runed.store.notify import Wakeups
from runed.store.postgres.pool import CONNECT_KWARGS

log = logging.getLogger("runed.store")

CHANNEL = "runed_changes"


# The least time between two attempts to listen again while the server is unreachable.
RECONNECT_SECONDS = 1.0


class PgNotifier(Wakeups):
    """One listening connection per store; the event loop reads it when it becomes readable.

    When the connection breaks, watchers fall back to the safety poll and the connection is made
    again in a worker thread (a connect may wait seconds for an unreachable server: never on the
    loop), at most once per :data:`RECONNECT_SECONDS`. One warning per outage, one line when it ends.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._conn: psycopg.Connection | None = None
        self._connecting: asyncio.Future[psycopg.Connection | None] | None = None
        self._next_attempt = 0.0
        # True while listening fails (warned once until it works again).
        self._down = False
        self._closed = False
        self._conn = self._connect()

    def _connect(self) -> psycopg.Connection | None:
        """A listening connection, or None (blocking: at start-up, or in a worker thread)."""
        try:
            # The pool's settings: TCP keepalives notice a server gone silent (a LISTEN connection only reads).
            conn = psycopg.connect(self.url, **CONNECT_KWARGS)  # type: ignore[arg-type]
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as e:
            if not self._down:
                self._down = True
                log.warning("cannot listen for store changes (polling until it works again): %s", e)
            return None
        if self._down:
            self._down = False
            log.info("listening for store changes again")
        return conn

    def _detach(self) -> None:
        if self._loop is not None and not self._loop.is_closed() and self._conn is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._conn.fileno())

    def _attach(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._event is None:
            self._detach()
            self._loop = loop
            self._event = asyncio.Event()
            if self._conn is not None:
                loop.add_reader(self._conn.fileno(), self._on_readable)
        if self._conn is None:
            self._reconnect(loop)
        return self._event

    def _reconnect(self, loop: asyncio.AbstractEventLoop) -> None:
        """Listen again, in a worker thread; the loop adds the connection when it is made."""
        if self._connecting is not None or loop.time() < self._next_attempt:
            return
        self._next_attempt = loop.time() + RECONNECT_SECONDS
        fut = loop.run_in_executor(None, self._connect)
        self._connecting = fut

        def done(f: asyncio.Future[psycopg.Connection | None]) -> None:
            self._connecting = None
            conn = None if f.cancelled() or f.exception() is not None else f.result()
            if conn is None:
                return
            if self._closed or self._loop is not loop or loop.is_closed() or self._conn is not None:
                conn.close()
                return
            self._conn = conn
            loop.add_reader(conn.fileno(), self._on_readable)
            # Changes committed while nobody listened: watchers read the log again now.
            self._wake_local()

        fut.add_done_callback(done)

    def _on_readable(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            pg = conn.pgconn
            pg.consume_input()
            while pg.notifies() is not None:
                pass
            broken = pg.status != psycopg.pq.ConnStatus.OK
        except psycopg.Error:
            broken = True
        if broken:
            # The server went away: stop reading a dead socket; the next wait listens again.
            self._detach()
            with contextlib.suppress(Exception):
                conn.close()
            self._conn = None
            if not self._down:
                self._down = True
                log.warning("lost the store's change notifications (polling until they work again)")
        self._wake_local()

    def notify(self) -> None:
        """Wake this process's watchers at once (other processes hear the commit's NOTIFY)."""
        self._wake_here()

    def close(self) -> None:
        self._closed = True
        self._detach()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
