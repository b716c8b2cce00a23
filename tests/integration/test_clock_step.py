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


def test_a_gradual_scaling_step_dated_after_the_step_back_does_not_hold_the_next(
    runed_factory: RunedFactory, tmp_path: Path
) -> None:
    first = runed_factory(tmp_path / "data", args=runefile_args(tmp_path))
    o = Orch.on(first, tmp_path)
    o.cast_shell("grad", "while :; do sleep 1; done", scale=1)
    eventually(lambda: o.running("grad", 1), timeout=30, what="one running")
    first.stop()
    # A gradual scale-up whose last step is dated an hour ahead, as a clock stepped back leaves it.
    st = o.store()
    try:
        now = time.time()
        st.create(
            "scaling_operation",
            "default",
            "scale-grad-1",
            {
                "id": "scale-grad-1",
                "service": "grad",
                "target": 3,
                "mode": "gradual",
                "step": 1,
                "interval_seconds": 1,
                "status": "in_progress",
                "current": 1,
                "started_at": now,
                "last_step_at": now + 3600,
                "ended_at": None,
                "message": "",
            },
        )
    finally:
        st.close()
    o.runed = runed_factory(first.data_dir, args=first.args)
    eventually(lambda: o.running("grad", 3), timeout=30, what="scaled to 3 in steps")
