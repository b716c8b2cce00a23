"""A process holding over 1,023 descriptors, as a controller supervising a thousand instances does
(a pidfd or an end pipe each): a socket it opens then is numbered above select(2)'s limit, and the
keeper's connection and the PostgreSQL store's pool must still serve on it (real keeper, real server).
"""

from __future__ import annotations

import contextlib
import gc
import os
import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from runed.runner import native
from runed.runner.keeper import ALL, Keepers
from runed.store.postgres.pool import Pool
from tests.pgsupport import pg_database, pg_url  # noqa: F401  (fixtures)

# The lowest descriptor the crowd leaves free: above select(2)'s FD_SETSIZE (1,024).
ABOVE = 1100


@contextlib.contextmanager
def _crowded() -> Iterator[None]:
    """Descriptors 0..ABOVE taken (of /dev/null), so the next one opened is numbered above them.

    Garbage is collected first and not meanwhile: an earlier test's socket closed by a collection
    in between would free a low number for the connection to take (a run once failed with the
    pool's connection on descriptor 13)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * ABOVE:
        pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} is below {2 * ABOVE}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2 * ABOVE), hard))
    gc.collect()
    gc.disable()
    fds: list[int] = []
    try:
        while not fds or fds[-1] < ABOVE:
            fds.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
        yield
    finally:
        gc.enable()
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.skipif(native.shim_path() is None, reason="no C compiler: no keeper")
def test_a_keeper_is_reached_on_a_descriptor_over_1023(tmp_path: Path) -> None:
    program = native.shim_path()
    assert program is not None
    keepers = Keepers(program)
    with _crowded():
        keeper = keepers.ours(tmp_path / "instances", ALL)  # started, connected and asked once (a ping)
        try:
            assert keeper.sock.fileno() > 1023
            reply, _ = keeper.call({"op": "ping"})
            assert reply["pid"] == keeper.pid
            assert keeper.connected()
        finally:
            keepers.close()  # with nothing running and nobody connected, the keeper leaves
    for proc in keepers._procs:
        proc.wait(15)


def test_the_postgresql_pool_serves_on_a_descriptor_over_1023(pg_url: str) -> None:  # noqa: F811
    with _crowded():
        pool = Pool(pg_url, 2)
        try:
            for _ in range(3):  # a checkout of an idle connection is checked (its socket polled)
                with pool.connection() as conn:
                    assert conn.fileno() > 1023
                    assert conn.execute("SELECT 1").fetchone() == (1,)
        finally:
            pool.close()
