"""A role freezes what start-up left on its heap, so full collections no longer walk it while serving."""

from __future__ import annotations

import gc
import weakref

from runed.server.roles import settle_heap


class _Node:
    other: object = None


def test_settle_heap_freezes_live_objects_and_collects_start_up_garbage() -> None:
    kept = [_Node()]  # a list is always tracked
    garbage = _Node()
    garbage.other = garbage  # a cycle: only the collector frees it
    gone = weakref.ref(garbage)
    del garbage
    frozen = gc.get_freeze_count()
    try:
        settle_heap()
        assert gone() is None, "start-up garbage must be collected, not frozen"
        assert gc.get_freeze_count() > frozen
        # Frozen objects are outside every generation: a full collection no longer walks them.
        assert not any(o is kept for o in gc.get_objects())
    finally:
        gc.unfreeze()
    assert any(o is kept for o in gc.get_objects())
