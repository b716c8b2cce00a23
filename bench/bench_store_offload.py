"""Store work off the event loop: REST throughput while a write waits on PostgreSQL, and the SQLite hop cost.

Two figures, each a ratio within one run:

* PostgreSQL: GetNamespace over REST from 8 connections, alternating rounds without and with a
  concurrent slow store call (another session holds the revision row lock, so one CreateNamespace on
  the same REST process waits in the database for the whole round). With store calls on the event
  loop the second figure is ~0 (everything waits behind the write); off the loop it should stay near
  the first.
* SQLite, in one process: ``store.get`` called inline vs handed to a store worker thread, one at a
  time and 16 at once: what sending SQLite through the workers would cost (see runed/store/offload.py).
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psycopg
import uvloop

from bench.common import Load, bootstrap_token, drive, running_runed, setting
from runed.store.offload import Offload
from runed.store.sqlite import SQLiteStore

SECONDS = setting("BENCH_SECONDS", 5.0)
ROUNDS = 3
SQLITE_CALLS = 20_000


def _sqlite_hop() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "runed.db", notify=False)
        try:
            store.put("service", "default", "web", {"name": "web", "spec": {"scale": 1, "image": "x"}})
            t0 = time.perf_counter()
            for _ in range(SQLITE_CALLS):
                store.get("service", "default", "web")
            inline = (time.perf_counter() - t0) / SQLITE_CALLS
            offload = Offload(4, inline=False)

            async def threaded() -> tuple[float, float]:
                t0 = time.perf_counter()
                for _ in range(SQLITE_CALLS // 4):
                    await offload(store.get, "service", "default", "web")
                one = (time.perf_counter() - t0) / (SQLITE_CALLS // 4)

                async def worker() -> None:
                    for _ in range(SQLITE_CALLS // 16):
                        await offload(store.get, "service", "default", "web")

                t0 = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(16)))
                return one, (time.perf_counter() - t0) / SQLITE_CALLS

            one, many = uvloop.run(threaded())
            offload.close()
        finally:
            store.close()
    print(f"   SQLite store.get inline:                {inline * 1e6:7.1f} µs/call")
    print(f"   SQLite store.get via a worker, serial:  {one * 1e6:7.1f} µs/call   x{one / inline:.1f} of inline")
    print(f"   SQLite store.get via a worker, 16 at once: {many * 1e6:4.1f} µs/call   x{many / inline:.1f} of inline")


def _postgres() -> None:
    try:
        from tests.pgsupport import fresh_database

        with fresh_database() as url:
            _postgres_on(url)
    except (psycopg.Error, Exception) as e:
        print(f"   PostgreSQL part skipped: {type(e).__name__}: {e}")


def _postgres_on(url: str) -> None:
    with running_runed("--store-url", url) as addrs:
        token = bootstrap_token(addrs["grpc"])
        base = f"http://{addrs['rest']}"
        headers = {"authorization": f"Bearer {token}"}

        async def run() -> tuple[list[Load], list[Load], int]:
            calm: list[Load] = []
            slowed: list[Load] = []
            limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
            async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=60) as client:

                async def get() -> object:
                    r = await client.get("/v1/namespaces/default")
                    r.raise_for_status()
                    return r

                waited = 0
                for i in range(ROUNDS):
                    calm.append(await drive(get, SECONDS / ROUNDS))
                    with psycopg.connect(url) as locker:
                        locker.execute("SELECT value FROM revision WHERE id = 1 FOR UPDATE")
                        done = threading.Event()

                        def write(n: int = i, done: threading.Event = done) -> None:
                            httpx.post(
                                f"{base}/v1/namespaces", json={"name": f"slow-{n}"}, headers=headers, timeout=120
                            )
                            done.set()

                        writer = threading.Thread(target=write)
                        writer.start()
                        await asyncio.sleep(0.3)  # the write reaches the database and waits there
                        slowed.append(await drive(get, SECONDS / ROUNDS))
                        waited += not done.is_set()
                        locker.rollback()
                    writer.join(120)
                return calm, slowed, waited

        calm, slowed, waited = uvloop.run(run())
    best_calm = max(calm, key=lambda x: x.rate)
    best_slowed = max(slowed, key=lambda x: x.rate)
    print("   " + best_calm.line("PostgreSQL REST GetNamespace"))
    print("   " + best_slowed.line("  ... while a write waits on a lock"))
    print(
        f"   with/without a waiting write: {best_slowed.rate / best_calm.rate:.2f} throughput, "
        f"p99 x{best_slowed.pct(99) / best_calm.pct(99):.2f} "
        f"(the write still waited at the end of {waited}/{ROUNDS} rounds)"
    )


def run() -> None:
    _postgres()
    _sqlite_hop()
