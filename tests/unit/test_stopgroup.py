"""The stops of one deletion run together (``runed.controller.stopgroup``): the record deletions of
the last members to end wait for the pass their end rushes, and go in its commit, with a real store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from runed.controller.alarm import Alarm
from runed.controller.instance import Key
from runed.controller.stopgroup import StopGroup
from runed.controller.writes import Writes
from runed.runner.base import Observation
from runed.store.sqlite import open_store


def test_the_last_ends_are_committed_with_the_writes_of_the_pass_they_rush(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    writes = Writes(store)
    keys: list[Key] = [("default", f"i{i}") for i in range(4)]
    for _, name in keys:
        store.put("instance", "default", name, {"name": name})
    store.put("service", "default", "web", {"deletion": {}})

    def stored() -> set[str]:
        return {n for _, n in keys if store.get("instance", "default", n) is not None}

    async def scenario() -> None:
        alarm = Alarm()

        def finish(ended: list[Key], linger: float) -> None:
            writes.delete_all([("instance", ns, n) for ns, n in ended], linger=linger)

        group = StopGroup(alarm, finish)
        _, ended = group.members(keys)
        for i in range(len(keys)):
            ended(i, Observation("exited"))
        # The batch is finished on the loop's next turn; the pass it rushed is due.
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert alarm.rushed.is_set()
        assert stored() == {n for _, n in keys}, "the last ends were committed before the pass they rushed"
        # The pass: the service goes, in the same commit as its last instances.
        since = store.current_revision()
        writes.delete("service", "default", "web")
        await writes.flush()
        assert stored() == set() and store.get("service", "default", "web") is None
        changes = store.changes_since(since, ["instance", "service"])
        assert len(changes) == len(keys) + 1
        # One transaction: nothing committed before the pass's flush, everything after it.
        assert [c.kind for c in changes] == ["instance"] * len(keys) + ["service"]

    try:
        asyncio.run(scenario())
    finally:
        store.close()
