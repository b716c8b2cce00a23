"""A delete interrupted by a killed process: the controller (the next one finishes it), or what
supervises the instances (a shim, the keeper: the controller ends what they left).

Real runed (supervisor and roles), real instance processes under a shim each or one keeper, the
controller role killed with SIGKILL while the instances are ending: before their Stopping records
are written (they are held half a second, see ``STOPPING_RECORD_AFTER_SECONDS``) and after. The next
controller must end what still runs, delete every record and directory, complete the deletion, and
start nothing again on the way (a record still saying Running must not be taken for a crash).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from rune.api import service_pb2
from runed.runner import native
from tests.harness import RunedFactory
from tests.integration.orch import Orch, runefile_args
from tests.support import alive, eventually

SCALE = 12
# Each instance takes a second to end on SIGTERM, so the delete is under way when the controller dies.
SCRIPT = "echo $$ >> {started}; trap 'sleep 1; exit 0' TERM; echo up; while :; do sleep 1 & wait; done"

SHIMS = ["auto", pytest.param("shared", marks=pytest.mark.skipif(native.shim_path() is None, reason="no keeper"))]


def _controller_pid(o: Orch) -> int:
    """The ready controller role's pid (0 while none is ready)."""
    try:
        return int(json.loads((o.runed.data_dir / "run" / "controller.json").read_text())["pid"])
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("shim", SHIMS)
@pytest.mark.parametrize("after", [0.1, 0.8], ids=["records-held", "records-stopping"])
def test_a_delete_whose_controller_is_killed_midway_is_finished_by_the_next(
    shim: str, after: float, runed_factory: RunedFactory, tmp_path: Path
) -> None:
    env = {"RUNE_CONTROLLER_SHIM": shim}
    o = Orch.on(runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env=env), tmp_path)
    started = tmp_path / "started"
    o.cast_shell("slow", SCRIPT.format(started=started), scale=SCALE)
    insts = eventually(lambda: o.running("slow", SCALE), timeout=60, what="every instance running")
    eventually(lambda: all("up" in o.log_lines(i) for i in insts), what="every trap set")
    controller = _controller_pid(o)
    req = service_pb2.DeleteServiceRequest(name="slow", namespace="default", grace_period=10)
    o.services.DeleteService(req, metadata=o.auth)
    time.sleep(after)
    os.kill(controller, signal.SIGKILL)
    # Still ending (a second each): the next controller finds the stops under way.
    assert any(alive(int(i["pid"])) for i in insts), "every instance ended before the controller was killed"
    eventually(lambda: _controller_pid(o) not in (0, controller), timeout=30, what="the controller started again")
    eventually(lambda: o.service_gone("slow"), timeout=60, what="the service deleted")
    assert o.instances("slow") == []
    eventually(lambda: not any(alive(int(i["pid"])) for i in insts), what="every instance's process gone")
    # Removed in the background once their records' deletions are committed (``Trash.remove``).
    eventually(
        lambda: not any(Path(str(i["log_dir"])).exists() for i in insts), what="the instances' directories removed"
    )
    # Nothing was started again on the way: one start per instance, ever.
    time.sleep(1.0)
    assert len(started.read_text().split()) == SCALE, started.read_text()
    leftover = [d.name for d in (o.runed.data_dir / "instances").iterdir() if d.is_dir() and len(d.name) > 2]
    assert leftover == [], leftover


def _supervisor_of(inst: dict[str, object]) -> int:
    return int(json.loads((Path(str(inst["log_dir"])) / "pid.json").read_text())["shim_pid"])


@pytest.mark.parametrize("shim", SHIMS)
def test_a_shim_or_keeper_killed_during_a_delete_leaves_no_instance_running(
    shim: str, runed_factory: RunedFactory, tmp_path: Path
) -> None:
    """The instances ignore SIGTERM; what supervises them dies within the grace period, before it
    killed them: their ends are reported (end of file) with their groups still running, so the
    controller kills what is left of each group itself."""
    o = Orch.on(
        runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env={"RUNE_CONTROLLER_SHIM": shim}), tmp_path
    )
    o.cast_shell("deaf", "trap '' TERM; echo up; while :; do sleep 1; done", scale=3)
    insts = eventually(lambda: o.running("deaf", 3), timeout=30, what="three instances running")
    eventually(lambda: all("up" in o.log_lines(i) for i in insts), what="every trap set")
    supervisors = {_supervisor_of(i) for i in insts}
    req = service_pb2.DeleteServiceRequest(name="deaf", namespace="default", grace_period=20)
    o.services.DeleteService(req, metadata=o.auth)
    eventually(lambda: all(i["state"] == "STOPPING" for i in o.instances("deaf")), what="stopping")
    assert all(alive(int(i["pid"])) for i in insts), "SIGTERM ignored"
    for pid in supervisors:
        os.kill(pid, signal.SIGKILL)
    eventually(lambda: o.instances("deaf") == [], timeout=30, what="the instances deleted")
    eventually(lambda: not any(alive(int(i["pid"])) for i in insts), what="every instance's process gone")


def _parent(pid: int) -> int:
    return int((Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())[1])


def _programs(marker: str) -> list[int]:
    """Pids of the process group leaders whose command line holds ``marker`` (an instance leads its
    group; a shell's child, before its exec, has the shell's command line, not its group)."""
    found = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                leads = int((p / "stat").read_text().rsplit(")", 1)[1].split()[2]) == int(p.name)
                if leads and marker.encode() in (p / "cmdline").read_bytes():
                    found.append(int(p.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


@pytest.mark.parametrize("shim", SHIMS)
def test_a_keeper_or_zygote_killed_during_a_cast_leaves_one_process_per_instance(
    shim: str, runed_factory: RunedFactory, tmp_path: Path
) -> None:
    """What starts the instances dies while a cast of many is under way (some started, some asked
    for, some not yet): in the end every instance runs once, and no process it started is left
    running beside them."""
    o = Orch.on(
        runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env={"RUNE_CONTROLLER_SHIM": shim}), tmp_path
    )
    marker = f"cast-{tmp_path.name}"
    o.cast_shell("many", f"while :; do sleep 1; done # {marker}", scale=40)

    def starter() -> int:
        for i in o.instances("many"):
            try:
                # The keeper starts the instances; a zygote starts the shims that start them.
                return _supervisor_of(i) if shim == "shared" else _parent(_supervisor_of(i))
            except (OSError, ValueError, KeyError):
                continue
        raise AssertionError("nothing started yet")

    os.kill(eventually(starter, timeout=30, what="the first start"), signal.SIGKILL)
    eventually(lambda: o.running("many", 40), timeout=90, what="all forty running")

    def one_each() -> bool:
        # Read again each time: records may still name instances that died with what started them,
        # running until the controller has seen that (and started them anew, with new pids).
        insts = o.running("many", 40)
        pids = sorted(_programs(marker))
        extra = set(pids) - {int(i["pid"]) for i in insts}
        why = {p: (_parent(p), os.readlink(f"/proc/{p}/cwd")) for p in extra}
        assert pids == sorted(int(i["pid"]) for i in insts), (len(pids), len(insts), why)
        return True

    eventually(one_each, timeout=30, what="one process per instance, no other")


@pytest.mark.parametrize("shim", SHIMS)
def test_a_shim_or_keeper_killed_while_runed_is_down_is_noticed_by_the_next_runed(
    shim: str, runed_factory: RunedFactory, tmp_path: Path
) -> None:
    """runed is killed (its instances run on), then what supervises one instance (its shim; the
    keeper of all): the next runed restarts what lost its supervisor, adopts the rest, and no
    process of the old runs is left beside the new ones."""
    env = {"RUNE_CONTROLLER_SHIM": shim}
    first = runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env=env)
    o = Orch.on(first, tmp_path)
    marker = f"down-{tmp_path.name}"
    o.cast_shell("kept", f"while :; do sleep 1; done # {marker}", scale=3)
    before = eventually(lambda: o.running("kept", 3), timeout=30, what="three instances running")
    assert first.proc is not None
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    victim = before[0]
    os.kill(_supervisor_of(victim), signal.SIGKILL)
    o.runed = runed_factory(first.data_dir, args=first.args, env=env)
    lost = {i["id"] for i in before} if shim == "shared" else {victim["id"]}

    def recovered() -> list[dict[str, Any]]:
        now = o.running("kept", 3)
        for old, new in zip(before, now, strict=True):
            assert old["id"] == new["id"]
            restarted = new["restart_count"] == 1 and new["pid"] != old["pid"]
            assert restarted if old["id"] in lost else new["pid"] == old["pid"], (old["id"] in lost, new)
        return now

    after = eventually(recovered, timeout=60, what="the lost instances restarted, the others adopted")
    eventually(
        lambda: sorted(_programs(marker)) == sorted(int(i["pid"]) for i in after),
        timeout=30,
        what="one process per instance, no other",
    )
    o.clear()


@pytest.mark.parametrize("shim", SHIMS)
def test_a_killed_shim_or_keeper_leaves_nothing_of_the_instance_s_group(
    shim: str, runed_factory: RunedFactory, tmp_path: Path
) -> None:
    """What supervises an instance dies: the instance's whole group goes (its leader and what it
    started), and the instance starts again."""
    o = Orch.on(
        runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env={"RUNE_CONTROLLER_SHIM": shim}), tmp_path
    )
    o.cast_shell("parent", "sleep 600 & echo child $!; wait")
    inst = eventually(lambda: o.running("parent", 1)[0], timeout=30, what="the instance running")
    line = eventually(lambda: next((x for x in o.log_lines(inst) if x.startswith("child ")), ""), what="its child")
    child = int(line.split()[1])
    os.kill(_supervisor_of(inst), signal.SIGKILL)
    eventually(lambda: o.running("parent", 1)[0]["restart_count"] == 1, timeout=30, what="the instance restarted")
    eventually(lambda: not alive(child) and not alive(int(inst["pid"])), what="the old group gone, child and all")


@pytest.mark.parametrize("shim", SHIMS)
def test_a_controller_killed_during_a_cast_leaves_one_process_per_instance(
    shim: str, runed_factory: RunedFactory, tmp_path: Path
) -> None:
    """The controller dies while a cast of many is under way (starts asked for and not answered,
    records not written yet): the next one runs every instance once, adopting what was started."""
    o = Orch.on(
        runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env={"RUNE_CONTROLLER_SHIM": shim}), tmp_path
    )
    marker = f"ccast-{tmp_path.name}"
    controller = _controller_pid(o)
    o.cast_shell("many", f"while :; do sleep 1; done # {marker}", scale=40)
    eventually(lambda: _programs(marker), timeout=30, what="the first start")
    os.kill(controller, signal.SIGKILL)
    insts = eventually(lambda: o.running("many", 40), timeout=90, what="all forty running")

    def one_each() -> bool:
        pids = sorted(_programs(marker))
        assert pids == sorted(int(i["pid"]) for i in insts), (len(pids), len(insts))
        return True

    eventually(one_each, timeout=30, what="one process per instance, no other")
