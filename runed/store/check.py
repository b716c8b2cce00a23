"""Is the configured store usable: reachable, and at the schema version this runed knows?

Shared by ``runed validate`` (before a start: an empty or older schema is fine, the start migrates
it) and ``/readyz`` (a running runed: the schema must be exactly current). Read-only: nothing here
creates a file, a table or a migration. Connects on its own (short timeout) rather than through an
open store, so it works before a start and answers for the database, not for a pool's state.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from runed.core import errors
from runed.store import faults

CONNECT_TIMEOUT_SECONDS = 3


@dataclass(frozen=True)
class SchemaState:
    """What the store at a URL looks like; ``error`` is set (and the rest meaningless) when unreachable."""

    where: str
    version: int = 0
    latest: int = 0
    error: str = ""

    @property
    def reachable(self) -> bool:
        return not self.error

    @property
    def current(self) -> bool:
        return self.reachable and self.version == self.latest

    def startable(self) -> tuple[bool, str]:
        """Whether a runed may start on it (it migrates an empty or older schema), and why in words."""
        if self.error:
            return False, f"store {self.where} is not reachable: {self.error}"
        if self.version > self.latest:
            return False, (
                f"store {self.where} has schema version {self.version}, newer than this runed knows "
                f"({self.latest}): upgrade runed"
            )
        if self.version == 0:
            return True, f"store {self.where} reachable, no schema yet (created on first start)"
        if self.version < self.latest:
            return (
                True,
                f"store {self.where} reachable, schema version {self.version} (migrated to {self.latest} on start)",
            )
        return True, f"store {self.where} reachable, schema version {self.version} (current)"

    def ready(self) -> tuple[bool, str]:
        """Whether a running runed may serve from it: reachable and exactly migrated."""
        if self.error:
            return False, f"store {self.where} is not reachable: {self.error}"
        if not self.current:
            return False, f"store {self.where} has schema version {self.version}, this runed needs {self.latest}"
        return True, f"store {self.where} reachable, schema version {self.version} (current)"


def _latest(package: str) -> int:
    names = [e.name for e in resources.files(package).iterdir() if e.name.endswith(".sql")]
    return max((int(n.split("_", 1)[0]) for n in names), default=0)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _sqlite(path: Path) -> SchemaState:
    latest = _latest("runed.store.migrations")
    where = str(path)
    if not path.exists():
        return SchemaState(where, 0, latest)
    try:
        with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            has = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'")
            row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone() if has.fetchone() else None
    except sqlite3.Error as e:
        return SchemaState(where, latest=latest, error=_first_line(e))
    return SchemaState(where, int(row[0] or 0) if row else 0, latest)


def _postgres(url: str) -> SchemaState:
    import psycopg

    from runed.store.postgres.store import redact_url

    latest = _latest("runed.store.postgres.migrations")
    where = redact_url(url)
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
            has = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
            row = conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone() if has and has[0] else None
    except psycopg.Error as e:
        return SchemaState(where, latest=latest, error=_first_line(e))
    return SchemaState(where, int(row[0] or 0) if row else 0, latest)


def schema_state(url: str) -> SchemaState:
    """Look at the store ``url`` names (``sqlite:///path`` or ``postgresql://…``) without changing it."""
    if url.startswith("sqlite:///"):
        return _sqlite(Path(url[len("sqlite://") :]))
    if url.startswith(("postgresql://", "postgres://")):
        return _postgres(url)
    return SchemaState(url, error="not a store URL runed knows (sqlite:///path or postgresql://…)")


def read_object(url: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """One stored object's data, read-only (None when absent), for checks run before a start.

    Raises:
        StoreUnavailable: the store cannot be read.
    """
    sql = "SELECT data FROM objects WHERE kind = {p} AND namespace = {p} AND name = {p}"
    try:
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite://") :])
            if not path.exists():
                return None
            with sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=CONNECT_TIMEOUT_SECONDS) as conn:
                row = conn.execute(sql.format(p="?"), (kind, namespace, name)).fetchone()
        else:
            import psycopg

            with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as pg:
                row = pg.execute(sql.format(p="%s"), (kind, namespace, name)).fetchone()
    except Exception as e:
        if isinstance(e, sqlite3.Error) or faults.is_unavailable(e) or type(e).__module__.startswith("psycopg"):
            raise errors.StoreUnavailable(f"cannot read the store: {_first_line(e)}") from None
        raise
    return None if row is None else orjson.loads(row[0])  # type: ignore[no-any-return]
