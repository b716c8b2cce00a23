"""The controller at scale: idle it wakes on events, not on a tick; it can hold a descriptor per instance."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import pytest

from tests.harness import RunedFactory
from tests.integration.orch import RUNEFILE, Orch, runefile_args
from tests.support import eventually, wakeups

SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(3600)\n"
WINDOW = 2.0


def _controller_wakeups(orch: Orch) -> list[int]:
    """The controller role's wake-ups in each of three windows of :data:`WINDOW` seconds: a test
    takes the quietest (the last status writes of a cast may still wake it in the first)."""
    pid = int(json.loads((orch.runed.data_dir / "run" / "controller.json").read_text())["pid"])
    counts = []
    for _ in range(3):
        before = wakeups(pid)
        time.sleep(WINDOW)  # a measuring window, not a wait for something to happen
        counts.append(wakeups(pid) - before)
    return counts


def test_an_idle_controller_does_not_poll_its_instances(orch: Orch) -> None:
    """Ten running instances, nothing changing: the controller role wakes about twice a second at most.

    What may wake it: the change log's safety poll (1 s) and the full resync (``resync_seconds``, 1 s
    in these tests). A controller that polls on a tick (every 0.1 s) wakes ten times a second or more.
    """
    orch.cast("quiet", orch.program("sleeper", SLEEPER), scale=10)
    insts = eventually(lambda: orch.running("quiet", 10), timeout=30)
    eventually(lambda: all("started" in orch.log_lines(i) for i in insts), timeout=30)
    counts = _controller_wakeups(orch)
    assert min(counts) <= 5 * WINDOW, f"the controller woke {counts} times per {WINDOW:g} s while nothing changed"


def test_the_safety_net_s_full_passes_keep_to_their_share_of_a_core(
    runed_factory: RunedFactory, tmp_path: Path
) -> None:
    """With ``resync_seconds`` far below what a full pass costs to run that often (10 ms), the full
    passes come only as often as their share of a core allows: a few times a second, not a hundred."""
    text = RUNEFILE.replace("resync_seconds: 1\n", "resync_seconds: 0.01\n")
    assert "resync_seconds: 0.01\n" in text
    cfg = tmp_path / "runefile.yaml"
    cfg.write_text(text)
    orch = Orch.on(runed_factory(tmp_path / "data", args=["--config", str(cfg)]), tmp_path)
    orch.cast("many", orch.program("sleeper", SLEEPER), scale=30)
    eventually(lambda: orch.running("many", 30), timeout=60)
    counts = _controller_wakeups(orch)
    # Every 10 ms, as configured, is 100 passes a second, each a wake-up or more.
    assert min(counts) <= 30 * WINDOW, f"the controller woke {counts} times per {WINDOW:g} s while nothing changed"
    # The operator is told, once, how far apart they come instead.
    told = [ln for ln in orch.runed.output().splitlines() if "full passes (the safety net) every" in ln]
    assert told and "controller.resync_seconds: 0.01" in told[0], told


LIMITS = (
    "import resource, time\n"
    "print('nofile', resource.getrlimit(resource.RLIMIT_NOFILE)[0], flush=True)\n"
    "time.sleep(60)\n"
)


def _soft_open_files(pid: int) -> int:
    line = next(ln for ln in Path(f"/proc/{pid}/limits").read_text().splitlines() if ln.startswith("Max open files"))
    return int(line.split()[3])


def test_the_controller_raises_its_open_files_limit_and_instances_keep_runeds(
    runed_factory: RunedFactory, tmp_path: Path
) -> None:
    """One pidfd per running instance must not run into the usual 1024 soft limit; instances get runed's own."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 512)
    if hard != resource.RLIM_INFINITY and hard <= low:
        pytest.skip("the hard limit leaves nothing to raise")
    # runed inherits a low soft limit from whoever starts it (a shell, a service manager).
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        orch = Orch.on(runed_factory(tmp_path / "data", args=runefile_args(tmp_path)), tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    orch.cast("limits", orch.program("limits", LIMITS))
    (inst,) = eventually(lambda: orch.running("limits", 1), timeout=30)
    line = eventually(lambda: next((ln for ln in orch.log_lines(inst) if ln.startswith("nofile")), None))
    assert line == f"nofile {low}", "the instance starts with the limit runed was given"
    pid = int(json.loads((orch.runed.data_dir / "run" / "controller.json").read_text())["pid"])
    assert _soft_open_files(pid) > low, "the controller raised its own"
