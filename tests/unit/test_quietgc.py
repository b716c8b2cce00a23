"""Full garbage collections at a loop's quiet moments (runed.core.quietgc), with Python's real collector."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import pytest

from runed.core.quietgc import QuietCollector


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def full_collections() -> Iterator[list[int]]:
    """The full collections that run meanwhile (one entry each)."""
    seen: list[int] = []

    def cb(phase: str, info: dict[str, int]) -> None:
        if phase == "stop" and info["generation"] == 2:
            seen.append(1)

    gc.collect()
    gc.callbacks.append(cb)
    yield seen
    gc.callbacks.remove(cb)


def survivors(n: int = 300_000) -> list[list[int]]:
    """Objects that outlive the young collections: what makes Python start a full one."""
    return [[i] for i in range(n)]


def old_garbage() -> tuple[weakref.ref[Cycle], list[list[int]]]:
    """A cycle that is garbage only once old (the young collections moved it on while it was
    referenced), so only a full collection frees it; and the survivors that made it old."""
    garbage = Cycle()
    gone = weakref.ref(garbage)
    kept = survivors()
    del garbage
    return gone, kept


def test_allocations_start_no_full_collection_while_the_loop_works(full_collections: list[int]) -> None:
    kept = survivors()
    assert full_collections, "the same allocations start a full collection without the collector"
    del kept
    gc.collect()
    full_collections.clear()

    async def busy() -> QuietCollector:
        qc = QuietCollector(quiet=0.5)
        qc.install()
        try:
            kept = []
            for _ in range(3):
                kept.append(survivors())
                qc.worked()
            assert not full_collections
            return qc
        finally:
            qc.close()

    asyncio.run(busy())
    # Given back: Python starts them again.
    survivors()
    assert full_collections


def test_a_full_collection_runs_once_the_loop_is_quiet_and_frees_cycles(full_collections: list[int]) -> None:
    async def quiet() -> None:
        qc = QuietCollector(quiet=0.1)
        qc.install()
        try:
            gone, kept = old_garbage()
            qc.worked()
            await asyncio.sleep(0.05)
            assert gone() is not None and qc.runs == 0
            qc.worked()  # more work: the quiet starts again
            await asyncio.sleep(0.3)
            assert gone() is None and qc.runs == 1 and full_collections
            assert kept
            # Nothing new since: the next quiet moment walks nothing.
            qc.worked()
            await asyncio.sleep(0.3)
            assert qc.runs == 1
        finally:
            qc.close()

    asyncio.run(quiet())


def test_a_loop_that_never_goes_quiet_collects_at_the_latest_every_most_seconds() -> None:
    async def never_quiet() -> None:
        qc = QuietCollector(quiet=10.0, most=0.2)
        qc.install()
        try:
            gone, kept = old_garbage()
            qc.worked()
            await asyncio.sleep(0.25)
            assert gone() is not None
            qc.worked()
            assert gone() is None and qc.runs == 1
            assert kept
        finally:
            qc.close()

    asyncio.run(never_quiet())
