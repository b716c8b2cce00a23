"""Wake-ups over LISTEN/NOTIFY: each commit that logged a change notifies ``runed_changes``.

A hint, not the data: watchers always read the change log, so a lost notification (or a listening
connection that broke) only delays a wake-up until the next safety poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

log = logging.getLogger("runed.store")

CHANNEL = "runed_changes"


class PgNotifier:
    """One listening connection per store; the event loop reads it when it becomes readable."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._connect()

    def _connect(self) -> None:
        try:
            conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error as e:
            log.warning("cannot listen for store changes (polling instead): %s", e)
            return
        self._conn = conn

    def _detach(self) -> None:
        if self._loop is not None and not self._loop.is_closed() and self._conn is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._conn.fileno())

    def _attach(self) -> asyncio.Event:
        loop = asyncio.get_running_loop()
        if self._conn is None:
            self._connect()
            self._loop = None
        if self._loop is not loop or self._event is None:
            self._detach()
            self._loop = loop
            self._event = asyncio.Event()
            if self._conn is not None:
                loop.add_reader(self._conn.fileno(), self._on_readable)
        return self._event

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
            # The server went away: stop reading a dead socket; the next wait reconnects.
            self._detach()
            with contextlib.suppress(Exception):
                conn.close()
            self._conn = None
            self._loop = None
        self._wake_local()

    def _wake_local(self) -> None:
        ev = self._event
        if ev is not None:
            self._event = asyncio.Event()
            ev.set()

    def notify(self) -> None:
        """Wake this process's watchers at once (other processes hear the commit's NOTIFY)."""
        if self._loop is None or self._loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wake_local()
        else:
            self._loop.call_soon_threadsafe(self._wake_local)

    async def wait(self, timeout: float) -> bool:
        """Wait for a wake-up or the timeout; True when woken."""
        ev = self._attach()
        try:
            async with asyncio.timeout(timeout):
                await ev.wait()
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self._detach()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
