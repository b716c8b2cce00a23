"""Lifecycle events keep the log floor (controller.log_min_free_bytes) on a real runed."""

from __future__ import annotations

from pathlib import Path

from tests.harness import RunedFactory
from tests.integration.orch import EXITER, Orch, runefile_args
from tests.support import eventually

# More than any test disk has free: every event falls below the floor.
HUGE_FLOOR = 1 << 60


def test_events_below_the_floor_are_dropped(runed_factory: RunedFactory, tmp_path: Path) -> None:
    args = runefile_args(tmp_path, f"  log_min_free_bytes: {HUGE_FLOOR}\n")
    o = Orch.on(runed_factory(tmp_path / "data", args=args), tmp_path)
    o.cast("job", o.program("exiter", EXITER), "3", "0.1")

    def exited() -> dict[str, object]:
        inst = o.one("job")
        assert inst["restart_count"] >= 1, (inst["state"], inst.get("reason"))
        return inst

    inst = eventually(exited, timeout=30)
    # Started, exited (and restarted): the controller recorded events, every one under the floor.
    events = Path(str(inst["log_dir"])) / "events.jsonl"
    assert not events.exists() or events.read_text() == "", events.read_text()
