"""A PostgreSQL database for tests: one fresh ``runed_test_<uuid>`` per test run, dropped at the end.

The server is ``RUNE_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``, used only to
create and drop the run's database). Without a reachable server the PostgreSQL cases skip with the
reason; with ``CI=true`` they fail instead, so CI never passes by skipping them.

Tests that stop and start PostgreSQL use :func:`pg_cluster` instead: a private server (``initdb``
in a temp dir, a free port) that nobody else uses, removed at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    import psycopg

ADMIN_URL = os.environ.get("RUNE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _with_dbname(url: str, dbname: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{dbname}"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required in CI (CI=true): {reason}")
    pytest.skip(f"PostgreSQL not reachable: {reason}")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The URL of this run's own database (created here, dropped at the end of the session)."""
    with fresh_database() as url:
        yield url


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A database of its own on the server (``runed_test_<uuid>``) for one runed, dropped afterwards."""
    try:
        import psycopg
    except ImportError as e:
        _unavailable(f"psycopg is not installed ({e})")
        raise
    name = f"runed_test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as e:
        _unavailable(f"{ADMIN_URL}: {str(e).strip()}")
    try:
        yield _with_dbname(ADMIN_URL, name)
    finally:
        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as admin,
        ):
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reset_schema(url: str) -> None:
    """Empty the database (every table of the previous test's store goes)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """This run's database, emptied for the test."""
    reset_schema(pg_database)
    return pg_database


def _pg_bin() -> Path | None:
    """The directory of PostgreSQL's server programs (initdb, pg_ctl): on PATH, or Debian's newest."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    return versions[-1].parent if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    """A private PostgreSQL server of the test's own (a temp dir, a free port): stopping it disturbs no one else."""

    bindir: Path
    root: Path
    port: int
    # The addresses it listens on; clients of the subnets of the others may connect too (trust).
    listen: tuple[str, ...] = ("127.0.0.1",)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *argv: str) -> None:
        # initdb refuses to run as root: the server's programs run as the postgres account then.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        r = subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.datadir), "-A", "trust", "-U", "postgres", "--no-sync")
        if self.listen != ("127.0.0.1",):
            with open(self.datadir / "pg_hba.conf", "a") as hba:
                hba.write("host all all samenet trust\n")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses={','.join(self.listen)}"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.datadir),
            "-o",
            opts,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clients disconnected, a clean shutdown) or ``immediate`` (as a crash)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def private_cluster(listen: tuple[str, ...] = ("127.0.0.1",)) -> Iterator[PgCluster]:
    """A started :class:`PgCluster` (on ``listen``), stopped and removed afterwards (skipped/failed as
    above when it cannot be made)."""
    bindir = _pg_bin()
    if bindir is None:
        _unavailable("no PostgreSQL server programs (pg_ctl, initdb) found")
        raise AssertionError("unreachable")
    root = Path(tempfile.mkdtemp(prefix="runed-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    cluster = PgCluster(bindir, root, free_port(), listen)
    try:
        try:
            cluster.init()
            cluster.start()
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
            _unavailable(f"cannot start a private PostgreSQL server: {e}")
        yield cluster
    finally:
        with contextlib.suppress(OSError, RuntimeError, subprocess.TimeoutExpired):
            cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_cluster() -> Iterator[PgCluster]:
    """A private PostgreSQL server for one test module, which its tests may stop and start."""
    with private_cluster() as cluster:
        yield cluster


def lock_waiters(conn: psycopg.Connection) -> int:
    """Sessions of ``conn``'s database waiting for a lock (a second writer queues behind the first,
    not behind the holder)."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    assert row is not None
    return int(row[0])
