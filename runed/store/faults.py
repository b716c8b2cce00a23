"""Which database failures mean "the store is unavailable right now" (UNAVAILABLE with retry), in one place.

A server that restarts, shuts down, refuses connections or cannot be reached surfaces in psycopg as
an ``OperationalError`` (connection lost, ``AdminShutdown``, ``CannotConnectNow``, a pool wait
that ran out: ``PoolTimeout``), and a server that became a read-only standby after a failover as
``ReadOnlySqlTransaction``. None of them means a bug in runed, so none may become INTERNAL: the
store turns them into :class:`runed.core.errors.StoreUnavailable` at its boundary, and the
pipeline maps any that escape another way with the same rule.
"""

from __future__ import annotations

import logging
import sys
import time

from runed.core import errors

log = logging.getLogger("runed.store")

# At most one warning per this many seconds while the store stays unavailable (a log line per call
# would flood the log during an outage).
_WARN_EVERY = 5.0
_last_warning = 0.0


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot serve now (as opposed to a bad statement or a bug)."""
    if isinstance(exc, errors.StoreUnavailable):
        return True
    # psycopg is loaded only by the PostgreSQL store: without it in sys.modules, nothing here is one of its errors.
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.errors.ReadOnlySqlTransaction)


def unavailable(exc: BaseException) -> errors.StoreUnavailable:
    """The client-facing error for ``exc`` (see :func:`is_unavailable`); the cause is logged, rate-limited."""
    if isinstance(exc, errors.StoreUnavailable):
        return exc
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= _WARN_EVERY:
        _last_warning = now
        log.warning(
            "store unavailable: %s", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        )
    return errors.store_unavailable()
