"""Deleted instances' directories: removed in the background, and what a crash left in the trash removed at start."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

from rune.api import service_pb2
from runed.controller.trash import TRASH_NAME
from runed.runner.shim import proc_start_time
from tests.harness import RunedFactory
from tests.integration.orch import Orch, runefile_args
from tests.support import attributes, eventually, fs_type

SLEEPER = textwrap.dedent(
    """
    import time
    print("up", flush=True)
    time.sleep(3600)
    """
)


def _alive(pid: int, start: int | None) -> bool:
    now = proc_start_time(pid)
    return now is not None and now == start


def test_a_deleted_scaled_service_leaves_no_process_no_directory_and_an_empty_trash(own_orch: Orch) -> None:
    o = own_orch
    o.cast("many", o.program("sleeper", SLEEPER), scale=5)
    insts = eventually(lambda: o.running("many", 5), timeout=30)
    dirs = [Path(i["log_dir"]) for i in insts]
    procs = []
    for d in dirs:
        info = json.loads((d / "pid.json").read_text())
        procs += [(int(info["pid"]), info["pid_start"]), (int(info["shim_pid"]), info["shim_start"])]
    assert all(_alive(p, s) for p, s in procs)
    root = o.runed.data_dir / "instances"
    if fs_type(root).startswith("ext"):
        assert "T" in attributes(root), "instance directories are spread over the block groups (runed.core.dirspread)"

    o.services.DeleteService(service_pb2.DeleteServiceRequest(name="many", now=True), metadata=o.auth)
    eventually(lambda: o.instances("many") == [], timeout=20, what="the instance records gone")
    eventually(lambda: not any(_alive(p, s) for p, s in procs), timeout=10, what="every shim and process gone")
    # Removed in the background once their records' deletions are committed (``Trash.remove``).
    eventually(lambda: not any(d.exists() for d in dirs), timeout=10, what="every instance directory removed")
    trash = o.runed.data_dir / TRASH_NAME
    assert not trash.exists() or os.listdir(trash) == [], "nothing is left in the trash"


def test_what_a_crash_left_in_the_trash_is_removed_at_start(runed_factory: RunedFactory, tmp_path: Path) -> None:
    data = tmp_path / "data"
    left = data / TRASH_NAME / "0123abcd.17"
    (left / "mounts" / "secret").mkdir(parents=True)
    (left / "mounts" / "secret" / "token").write_text("plaintext")
    (left / "log.jsonl").write_text("{}\n")
    runed_factory(data, args=runefile_args(tmp_path))
    eventually(lambda: not left.exists(), timeout=15, what="the trash left by a crash emptied at start")
