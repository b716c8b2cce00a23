"""An idle controller sleeps: with instances running and nothing changing it wakes on events, not on a tick."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.integration.orch import Orch
from tests.support import eventually

SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(3600)\n"
WINDOW = 2.0


def _wakeups(pid: int) -> int:
    """Context switches of every thread of ``pid`` so far: each sleep that ended is one."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if "ctxt_switches:" in line:
                total += int(line.split()[1])
    return total


def test_an_idle_controller_does_not_poll_its_instances(orch: Orch) -> None:
    """Ten running instances, nothing changing: the controller role wakes about twice a second at most.

    What may wake it: the change log's safety poll (1 s) and the full resync (``resync_seconds``, 1 s
    in these tests). A controller that polls on a tick (every 0.1 s) wakes ten times a second or more.
    """
    orch.cast("quiet", orch.program("sleeper", SLEEPER), scale=10)
    insts = eventually(lambda: orch.running("quiet", 10), timeout=30)
    eventually(lambda: all("started" in orch.log_lines(i) for i in insts), timeout=30)
    pid = int(json.loads((orch.runed.data_dir / "run" / "controller.json").read_text())["pid"])
    # The quietest of a few windows: the last status writes of the cast may still wake it in the first.
    counts = []
    for _ in range(3):
        before = _wakeups(pid)
        time.sleep(WINDOW)  # a measuring window, not a wait for something to happen
        counts.append(_wakeups(pid) - before)
    assert min(counts) <= 5 * WINDOW, f"the controller woke {counts} times per {WINDOW:g} s while nothing changed"
