"""A wall clock stepped back (NTP at boot, an operator's `date -s`) must not hold the controller up.

Back-off deadlines are wall-clock times in the instance records (they hold across restarts); one
set before the clock went back an hour lies an hour ahead. A real runed, a crash-looping service,
and its record's deadline moved an hour ahead while runed was stopped, as the step would leave it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.harness import RunedFactory
from tests.integration.orch import Orch, runefile_args
from tests.support import eventually


def test_a_back_off_set_before_the_clock_went_back_waits_no_longer_than_the_longest(
    runed_factory: RunedFactory, tmp_path: Path
) -> None:
    first = runed_factory(tmp_path / "data", args=runefile_args(tmp_path))
    o = Orch.on(first, tmp_path)
    o.cast_shell("crash", "exit 3")
    eventually(lambda: o.one("crash")["restart_count"] >= 1, timeout=30, what="crash-looping")
    first.stop()
    inst = o.one("crash")
    ahead = time.time() + 3600

    def stepped(data: dict[str, Any] | None) -> dict[str, Any] | None:
        assert data is not None
        return {**data, "state": "BACKOFF", "next_restart_at": ahead}

    st = o.store()
    try:
        st.update("instance", "default", inst["id"], stepped)
    finally:
        st.close()
    o.runed = runed_factory(first.data_dir, args=first.args)
    # restart_backoff_max_seconds is 1.2 in these tests' runefile: the restart comes within it.
    eventually(lambda: o.one("crash")["restart_count"] > inst["restart_count"], timeout=15, what="restarted")
    assert (o.one("crash")["next_restart_at"] or 0) < ahead
