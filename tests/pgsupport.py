"""A PostgreSQL database for tests: one fresh ``runed_test_<uuid>`` per test run, dropped at the end.

The server is ``RUNE_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``, used only to
create and drop the run's database). Without a reachable server the PostgreSQL cases skip with the
reason; with ``CI=true`` they fail instead, so CI never passes by skipping them.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

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
