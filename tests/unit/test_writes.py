"""The controller's queued record writes (``runed.controller.writes``) on a real SQLite store: a
long commit runs beside the event loop, and its records count as not stored until it is done."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from runed.controller.writes import LONG_COMMIT, Writes
from runed.store.sqlite import open_store


def test_a_long_commit_runs_beside_the_loop_and_its_records_stay_unstored_until_it_is_done(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    writes = Writes(store)
    entered, release = threading.Event(), threading.Event()
    threads: list[int] = []

    def slow(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        threads.append(threading.get_ident())
        entered.set()
        assert release.wait(10)
        return {"n": 1}

    async def scenario() -> None:
        for i in range(LONG_COMMIT):
            writes.put("instance", "default", f"i{i}", {"i": i})
        writes.update("service", "default", "web", slow)
        flushing = asyncio.create_task(writes.flush())
        # The loop goes on while the commit waits in its worker.
        while not entered.is_set():
            await asyncio.sleep(0.01)
        assert ("instance", "default", "i0") in writes
        assert ("service", "default", "web") in writes
        assert len(writes) == LONG_COMMIT + 1
        release.set()
        await flushing
        assert len(writes) == 0 and ("instance", "default", "i0") not in writes

    try:
        asyncio.run(scenario())
        assert threads and threads[0] != threading.get_ident()
        rec = store.get("service", "default", "web")
        assert rec is not None and rec.data == {"n": 1}
        assert store.get("instance", "default", f"i{LONG_COMMIT - 1}") is not None
    finally:
        release.set()
        store.close()


def test_a_short_commit_stays_on_the_loop_on_sqlite(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    writes = Writes(store)
    threads: list[int] = []

    def mark(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        threads.append(threading.get_ident())
        return {"n": 2}

    async def scenario() -> None:
        writes.update("service", "default", "web", mark)
        await writes.flush()

    asyncio.run(scenario())
    assert threads == [threading.get_ident()]
    rec = store.get("service", "default", "web")
    assert rec is not None and rec.data == {"n": 2}
    store.close()
