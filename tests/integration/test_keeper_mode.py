"""``controller.shim: shared``: one keeper supervises every instance, as a shim per instance would.

Each test runs a real runed with the keeper, real instance processes and the real records: the
instances share one keeper process and no shim runs; exits (a chatty job's among them), logs,
deletes, a killed keeper and a runed killed and started again behave as under shims.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rune.api import common_pb2, service_pb2
from runed.runner import native
from tests.harness import RunedFactory
from tests.integration.orch import SERVER, Orch, runefile_args
from tests.integration.test_exits import CHATTY, _cast_sh, _events
from tests.support import GRACEFUL, alive, eventually

pytestmark = pytest.mark.skipif(native.shim_path() is None, reason="no C compiler: no keeper")

SHARED = {"RUNE_CONTROLLER_SHIM": "shared"}
PER_SERVICE = {"RUNE_CONTROLLER_SHIM": "service"}


@pytest.fixture
def korch(runed_factory: RunedFactory, tmp_path: Path) -> Iterator[Orch]:
    o = Orch.on(runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env=SHARED), tmp_path)
    yield o
    o.clear()


def _shim_of(inst: dict[str, Any]) -> int:
    info = json.loads((Path(str(inst["log_dir"])) / "pid.json").read_text())
    assert info["pid"] == inst["pid"], (info, inst["pid"])
    return int(info["shim_pid"])


def _said(o: Orch, inst: dict[str, Any], line: str) -> Callable[[], bool]:
    return lambda: line in o.log_lines(inst)


def _gone(inst: dict[str, Any]) -> Callable[[], bool]:
    return lambda: not alive(int(inst["pid"]))


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _children(pid: int) -> set[int]:
    return {int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _restarted_once(o: Orch, service: str, n: int) -> Callable[[], list[dict[str, Any]]]:
    """The service's ``n`` instances, once all run again after one restart each (for eventually())."""

    def restarted() -> list[dict[str, Any]]:
        now = o.running(service, n)
        assert all(i["restart_count"] == 1 for i in now), [(i["restart_count"], i["pid"]) for i in now]
        return now

    return restarted


def _socket_of(keeper: int, o: Orch) -> Path:
    """The socket ``keeper`` listens on (named by its command line, relative to the instances' directory)."""
    path = o.runed.data_dir / "instances" / Path(f"/proc/{keeper}/cmdline").read_bytes().split(b"\0")[2].decode()
    assert path.exists(), path
    return path


def _leaves(keeper: int, socket: Path) -> None:
    """``keeper``, supervising nothing, leaves: gone and reaped by runed (which started it), its socket with it."""
    eventually(lambda: not Path(f"/proc/{keeper}").exists(), timeout=10, what=f"keeper {keeper} gone and reaped")
    assert not socket.exists(), socket


def test_every_instance_runs_under_one_keeper_and_no_shim(korch: Orch) -> None:
    ports = [common_pb2.ServicePort(name="http", port=80)]
    korch.cast("web", korch.program("server", SERVER), scale=3, ports=ports, env={"GREETING": "hello"})
    insts = eventually(lambda: korch.running("web", 3), timeout=30, what="three instances running")
    keepers = {_shim_of(i) for i in insts}
    assert len(keepers) == 1, keepers
    (keeper,) = keepers
    assert _comm(keeper) == "rune-keeper"
    # The instances are the keeper's own children: no process stands between them.
    assert {int(i["pid"]) for i in insts} <= _children(keeper)
    for inst in insts:
        eventually(_said(korch, inst, "started"), what="the instance's output in its log")
    # The instance's environment reached it (it prints its own), and the keeper's is empty.
    env_line = next(line for line in korch.log_lines(insts[0]) if line.startswith("env "))
    assert json.loads(env_line[4:])["GREETING"] == "hello"
    assert Path(f"/proc/{keeper}/environ").read_bytes() == b""
    socket = _socket_of(keeper, korch)
    # A delete ends every process and the service, and the keeper, supervising nothing, leaves.
    korch.services.DeleteService(service_pb2.DeleteServiceRequest(name="web", namespace="default"), metadata=korch.auth)
    eventually(lambda: korch.instances("web") == [], timeout=30, what="the instances deleted")
    for inst in insts:
        eventually(_gone(inst), what="the instance's process gone")
    _leaves(keeper, socket)


@pytest.mark.parametrize("policy", [common_pb2.RESTART_POLICY_ON_FAILURE, common_pb2.RESTART_POLICY_NEVER])
def test_a_chatty_job_under_the_keeper_completes_with_code_0(korch: Orch, policy: common_pb2.RestartPolicy) -> None:
    _cast_sh(korch, "chatty", CHATTY, policy)

    def settled() -> dict[str, Any]:
        inst = korch.one("chatty")
        assert inst["state"] in ("EXITED", "BACKOFF") or inst["restart_count"] > 0, inst["state"]
        return inst

    inst = eventually(settled, timeout=30, what="the job ended")
    assert inst["state"] == "EXITED" and inst["last_exit_code"] == 0, (inst["state"], inst["reason"])
    assert str(inst["reason"]).startswith("Completed: exit code 0"), inst["reason"]
    last = json.loads((Path(str(inst["log_dir"])) / "log.jsonl").read_text().splitlines()[-1])
    assert (last["seq"], last["line"]) == (200000, "200000")
    info = json.loads((Path(str(inst["log_dir"])) / "pid.json").read_text())
    assert _comm(int(info["shim_pid"])) == "rune-keeper"


def test_a_job_that_ends_at_once_under_the_keeper_is_recorded_with_its_code(korch: Orch) -> None:
    """The keeper's answer to a start is taken as running, not looked at again: an end right after
    it must still come through the start's end pipe, with its code."""
    _cast_sh(korch, "brief", "exit 7", common_pb2.RESTART_POLICY_NEVER)

    def ended() -> dict[str, Any]:
        inst = korch.one("brief")
        assert inst["state"] == "EXITED", (inst["state"], inst["reason"])
        return inst

    inst = eventually(ended, timeout=30, what="the job recorded as ended")
    assert inst["last_exit_code"] == 7, inst
    assert str(inst["reason"]).startswith("Error: exit code 7"), inst["reason"]


def test_a_killed_keeper_is_noticed_and_its_instances_restarted(korch: Orch) -> None:
    korch.cast(
        "orphans", korch.program("server", SERVER), scale=2, ports=[common_pb2.ServicePort(name="http", port=80)]
    )
    before = eventually(lambda: korch.running("orphans", 2), timeout=30, what="two instances running")
    for inst in before:
        eventually(_said(korch, inst, "started"), what="the program printed its start")
    keeper = _shim_of(before[0])
    os.kill(keeper, signal.SIGKILL)

    after = eventually(_restarted_once(korch, "orphans", 2), timeout=30, what="both restarted under a new keeper")
    (new_keeper,) = {_shim_of(i) for i in after}
    assert new_keeper != keeper and _comm(new_keeper) == "rune-keeper"
    for old in before:
        # Its process lost its output with the keeper: its group was killed, not left running.
        eventually(_gone(old), what="the orphaned process gone")
    for inst in after:
        assert any(e.startswith("Exited: shim died") for e in _events(inst)), _events(inst)


@pytest.mark.parametrize("env", [SHARED, PER_SERVICE], ids=["shared", "service"])
def test_instances_outlive_runed_and_are_adopted_from_the_keeper(
    tmp_path: Path, runed_factory: RunedFactory, env: dict[str, str]
) -> None:
    o = Orch.on(runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env=env), tmp_path)
    o.cast("kept", o.program("server", SERVER), scale=2, ports=[common_pb2.ServicePort(name="http", port=80)])
    before = eventually(lambda: o.running("kept", 2), timeout=30, what="two instances running")
    keeper = _shim_of(before[0])
    first = o.runed
    assert first.proc is not None
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    # Nothing ends with runed: the keeper and its instances run on.
    assert alive(keeper) and all(alive(int(i["pid"])) for i in before)
    o.runed = runed_factory(first.data_dir, args=first.args, env=env)

    def adopted() -> list[dict[str, Any]]:
        now = o.running("kept", 2)
        assert [(i["pid"], i["restart_count"]) for i in now] == [(i["pid"], 0) for i in before], now
        return now

    eventually(adopted, timeout=30, what="the same processes adopted")
    # The new controller learns of their ends from the keeper again: an exit is seen as it happens.
    os.kill(int(before[0]["pid"]), signal.SIGKILL)

    def replaced() -> dict[str, Any]:
        (inst,) = [i for i in o.running("kept", 2) if i["index"] == before[0]["index"]]
        assert inst["restart_count"] == 1 and inst["last_signal"] == 9, (inst["restart_count"], inst["last_signal"])
        return inst

    again = eventually(replaced, timeout=30, what="the killed instance restarted")
    # The new controller found the keeper by its socket: the restart went to it, not to a new one.
    assert _shim_of(again) == keeper
    o.clear()
    for inst in before:
        eventually(_gone(inst), what="every process gone")


@pytest.mark.parametrize("shim", ["auto", "python", "shared", "service"])
def test_a_sigterm_to_every_process_as_systemctl_stop_sends_lets_instances_shut_down_and_records_it(
    tmp_path: Path, runed_factory: RunedFactory, shim: str
) -> None:
    """``systemctl stop`` signals every process of runed's unit at once: runed's roles, the shims or
    the keeper, the instances. Each instance shuts down by its own SIGTERM (here, 0.3 s of work);
    what supervises it records the exit and then leaves by itself. A keeper ended by the SIGTERM
    took every instance with it, SIGKILLed mid-shutdown; a shim ended by it recorded nothing."""
    o = Orch.on(
        runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env={"RUNE_CONTROLLER_SHIM": shim}), tmp_path
    )
    o.cast_shell("calm", GRACEFUL, scale=2)
    insts = eventually(lambda: o.running("calm", 2), timeout=30, what="two instances running")
    for inst in insts:
        eventually(_said(o, inst, "up"), what="the trap set")
    supervisors = {_shim_of(inst) for inst in insts}
    assert len(supervisors) == (1 if shim in ("shared", "service") else 2)
    runed = o.runed.proc
    assert runed is not None
    os.killpg(runed.pid, signal.SIGTERM)
    for pid in supervisors:
        os.kill(pid, signal.SIGTERM)
    for inst in insts:
        os.killpg(int(inst["pid"]), signal.SIGTERM)
    runed.wait(30)
    eventually(
        lambda: not any(alive(p) for p in supervisors), timeout=10, what="the shims or keeper left once nothing ran"
    )
    for inst in insts:
        assert o.log_lines(inst)[-1] == "graceful", o.log_lines(inst)
        assert json.loads((Path(str(inst["log_dir"])) / "exit.json").read_text())["code"] == 7


def test_a_delete_under_the_keeper_waits_the_grace_then_kills_what_ignores_sigterm(korch: Orch) -> None:
    """The keeper signals a deletion's instances: one that ignores SIGTERM still runs within the
    grace period, is killed after it, and the service goes."""
    korch.cast_shell("stubborn", "trap '' TERM; echo up; while :; do sleep 1; done", scale=3)
    insts = eventually(lambda: korch.running("stubborn", 3), timeout=30, what="three instances running")
    for inst in insts:
        eventually(_said(korch, inst, "up"), what="the trap set")
    req = service_pb2.DeleteServiceRequest(name="stubborn", namespace="default", grace_period=3)
    korch.services.DeleteService(req, metadata=korch.auth)
    eventually(lambda: all(i["state"] == "STOPPING" for i in korch.instances("stubborn")), what="stopping")
    assert all(alive(int(i["pid"])) for i in insts), "SIGTERM ignored: alive within the grace period"
    eventually(lambda: korch.instances("stubborn") == [], timeout=30, what="the instances deleted")
    for inst in insts:
        assert not alive(int(inst["pid"])), "killed after the grace period"
    dirs = [Path(str(inst["log_dir"])) for inst in insts]
    eventually(lambda: not any(d.exists() for d in dirs), what="their directories removed")
    eventually(lambda: korch.service_gone("stubborn"), what="the service deleted")


@pytest.mark.parametrize("scale", [2, 1], ids=["stopped together", "stopped alone"])
def test_a_deletion_ends_with_its_processes_not_with_the_keeper_s_reaping(
    korch: Orch, tmp_path: Path, scale: int
) -> None:
    """A deleted instance's end is its process's end: the service goes while its keeper, stopped
    (SIGSTOP), has reaped nothing, and what the instance left in its group goes with the stop, not
    with the keeper's finishing. The keeper, continued, reaps, and leaves (it supervises nothing);
    the next cast runs under a keeper anew. The stops of a deletion of many wait together, the stop
    of one alone: both."""
    release, kids = tmp_path / "release", tmp_path / "children"
    kids.mkdir()
    # Deaf to SIGTERM (its background sleep too: an ignored signal stays ignored), it ends once released.
    script = f"trap '' TERM; sleep 3600 & echo $! > {kids}/$$; echo up; while [ ! -e {release} ]; do sleep 0.05; done"
    korch.cast_shell("held", script, scale=scale)
    insts = eventually(lambda: korch.running("held", scale), timeout=30, what="the instances running")
    for inst in insts:
        eventually(_said(korch, inst, "up"), what="the trap set")
    children = [int((kids / str(i["pid"])).read_text()) for i in insts]
    keeper = _shim_of(insts[0])
    socket = _socket_of(keeper, korch)
    req = service_pb2.DeleteServiceRequest(name="held", namespace="default", grace_period=600)
    korch.services.DeleteService(req, metadata=korch.auth)
    eventually(lambda: all(i["state"] == "STOPPING" for i in korch.instances("held")), what="stopping")
    os.kill(keeper, signal.SIGSTOP)
    try:
        release.touch()
        # The instances' processes exit (zombies: their keeper cannot reap them), and that is their end.
        eventually(lambda: korch.service_gone("held"), timeout=30, what="the service deleted, its keeper stopped")
        assert korch.instances("held") == []
        eventually(lambda: not any(alive(p) for p in children), what="the instances' children, deaf to SIGTERM, killed")
        # Not reaped yet: the deletion did not wait for the keeper.
        assert [_state(int(i["pid"])) for i in insts] == ["Z"] * scale
    finally:
        os.kill(keeper, signal.SIGCONT)
    pids = [int(i["pid"]) for i in insts]
    eventually(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), what="reaped by the keeper")
    _leaves(keeper, socket)
    korch.cast_shell("next", "echo up; exec sleep 3600")
    (inst,) = eventually(lambda: korch.running("next", 1), timeout=30, what="the next cast running")
    assert _comm(_shim_of(inst)) == "rune-keeper"


def test_a_deletion_whose_keeper_is_stopped_before_it_ends_when_its_grace_period_does(korch: Orch) -> None:
    """The keeper cannot send the SIGTERM nor, once the grace period is over, the SIGKILL: the
    controller kills what outlived it (its group, not reaped yet) and the service goes, instead of
    after the 11 s more that an exit record is waited for."""
    korch.cast_shell("frozen", "echo up; exec sleep 3600", scale=2)
    insts = eventually(lambda: korch.running("frozen", 2), timeout=30, what="two instances running")
    keeper = _shim_of(insts[0])
    os.kill(keeper, signal.SIGSTOP)
    try:
        began = time.monotonic()
        req = service_pb2.DeleteServiceRequest(name="frozen", namespace="default", grace_period=1)
        korch.services.DeleteService(req, metadata=korch.auth)
        eventually(lambda: korch.service_gone("frozen"), timeout=30, what="the service deleted, its keeper stopped")
        assert time.monotonic() - began < 8, "the stop waited for an exit record after the grace period"
        assert [_state(int(i["pid"])) for i in insts] == ["Z", "Z"]
    finally:
        os.kill(keeper, signal.SIGCONT)


def test_each_service_runs_under_a_keeper_of_its_own_which_ends_with_it(
    tmp_path: Path, runed_factory: RunedFactory
) -> None:
    """``controller.shim: service``: a service's instances share a keeper, another service's run
    under another. A keeper killed ends and restarts its service's instances only; a service
    deleted or scaled to zero leaves no keeper behind, and one scaled up again gets a keeper anew."""
    o = Orch.on(runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env=PER_SERVICE), tmp_path)
    o.cast_shell("a", "echo up; exec sleep 3600", scale=3)
    o.cast_shell("b", "echo up; exec sleep 3600", scale=2)
    a = eventually(lambda: o.running("a", 3), timeout=30, what="a's three instances running")
    b = eventually(lambda: o.running("b", 2), timeout=30, what="b's two instances running")
    (ka,), (kb,) = {_shim_of(i) for i in a}, {_shim_of(i) for i in b}
    assert ka != kb and _comm(ka) == _comm(kb) == "rune-keeper"
    assert {int(i["pid"]) for i in a} == _children(ka) and {int(i["pid"]) for i in b} == _children(kb)
    sock_a, sock_b = _socket_of(ka, o), _socket_of(kb, o)

    os.kill(kb, signal.SIGKILL)

    b = eventually(_restarted_once(o, "b", 2), timeout=30, what="b's instances restarted under a new keeper")
    (kb2,) = {_shim_of(i) for i in b}
    assert kb2 not in (ka, kb) and _comm(kb2) == "rune-keeper"
    assert [(i["pid"], i["restart_count"]) for i in o.running("a", 3)] == [(i["pid"], 0) for i in a], "a untouched"

    o.services.DeleteService(service_pb2.DeleteServiceRequest(name="a", namespace="default"), metadata=o.auth)
    eventually(lambda: o.service_gone("a"), timeout=30, what="a deleted")
    _leaves(ka, sock_a)
    assert alive(kb2) and [i["pid"] for i in o.running("b", 2)] == [i["pid"] for i in b], "b untouched"
    sock_b = _socket_of(kb2, o)

    o.services.ScaleService(service_pb2.ScaleServiceRequest(name="b", scale=0), metadata=o.auth)
    eventually(lambda: o.instances("b") == [], timeout=30, what="b scaled to zero")
    _leaves(kb2, sock_b)
    o.services.ScaleService(service_pb2.ScaleServiceRequest(name="b", scale=1), metadata=o.auth)
    (inst,) = eventually(lambda: o.running("b", 1), timeout=30, what="b scaled to one")
    assert _shim_of(inst) not in (ka, kb, kb2) and _comm(_shim_of(inst)) == "rune-keeper"
    o.clear()
