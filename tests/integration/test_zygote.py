"""Shims forked by the controller's zygote: detached, recorded, re-adopted after kill -9, a dead zygote replaced."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rune.api import common_pb2, service_pb2
from runed.core.errors import Conflict
from runed.model.lease import CONTROLLER, KIND, NAMESPACE
from runed.store.sqlite import SQLiteStore
from tests.harness import RunedFactory, run_runed
from tests.integration.orch import Orch, runefile_args
from tests.support import alive, eventually, wakeups

ZYGOTE = {"RUNE_CONTROLLER_SHIM": "auto"}
# Runs until the file named by argv[1] appears, then exits 7.
WAITER = (
    "import os, sys, time\n"
    "print('started', flush=True)\n"
    "while not os.path.exists(sys.argv[1]):\n"
    "    time.sleep(0.05)\n"
    "sys.exit(7)\n"
)


@pytest.fixture(scope="module")
def shared_orch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orch]:
    """The module's runed, with a shim per instance (forked by the zygote; the default, a keeper per
    service, has no zygote)."""
    tmp = tmp_path_factory.mktemp("orch")
    with run_runed(tmp / "data", args=runefile_args(tmp), env=ZYGOTE) as r:
        yield Orch.on(r, tmp)


@pytest.fixture
def own_orch(runed_factory: RunedFactory, tmp_path: Path) -> Orch:
    return Orch.on(runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env=ZYGOTE), tmp_path)


def _pid_info(inst: dict[str, Any]) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((Path(str(inst["log_dir"])) / "pid.json").read_text())
    assert info["pid"] == inst["pid"]
    return info


def _stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rfind(")") + 2 :].split()


def _parent(pid: int) -> int:
    return int(_stat(pid)[1])


def _is_zygote(pid: int) -> bool:
    return b"runed.runner.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes()


def _zygote_of(inst: dict[str, Any]) -> int:
    """The zygote that forked the instance's shim (the shim's parent)."""
    parent = _parent(int(_pid_info(inst)["shim_pid"]))
    assert _is_zygote(parent), Path(f"/proc/{parent}/cmdline").read_bytes()
    return parent


def test_shims_are_forked_detached_and_record_exit_codes(orch: Orch) -> None:
    stop = orch.tmp / "stop-forked"
    orch.cast(
        "forked", orch.program("waiter", WAITER), str(stop), scale=2, restart_policy=common_pb2.RESTART_POLICY_NEVER
    )
    insts = eventually(lambda: orch.running("forked", 2), timeout=30)
    eventually(lambda: all("started" in orch.log_lines(i) for i in insts), what="the programs printed their start")
    zygotes = {_zygote_of(i) for i in insts}
    assert len(zygotes) == 1, "one zygote forks every shim"
    for inst in insts:
        shim = int(_pid_info(inst)["shim_pid"])
        # Its own session (not runed's, not the zygote's), the instance in a group of its own under it.
        assert os.getsid(shim) == shim and os.getsid(shim) not in (os.getsid(next(iter(zygotes))), os.getsid(0))
        assert _parent(int(inst["pid"])) == shim and os.getpgid(int(inst["pid"])) == int(inst["pid"])
        # Nothing of the zygote's (its socket, the start-report pipe) reaches the instance.
        assert sorted(int(fd) for fd in os.listdir(f"/proc/{inst['pid']}/fd")) == [0, 1, 2]
    woken = wakeups(next(iter(zygotes)))
    stop.touch()

    def exited() -> list[dict[str, Any]]:
        done = orch.instances("forked")
        assert [(d["state"], d["last_exit_code"]) for d in done] == [("EXITED", 7)] * 2, done
        return done

    eventually(exited, timeout=30, what="both exits recorded with their code")
    # The zygote's shims are reaped: none is left as a zombie ...
    shims = [int(_pid_info(i)["shim_pid"]) for i in insts]
    eventually(lambda: not any(Path(f"/proc/{s}").exists() for s in shims), what="the shims reaped")
    # ... and their ends did not wake the zygote (the kernel reaps them: a delete of a thousand would
    # otherwise wake it as many times).
    zygote = next(iter(zygotes))
    assert wakeups(zygote) == woken, "the zygote was woken by its shims' ends"


def test_forked_shims_survive_kill9_and_are_readopted(own_orch: Orch, runed_factory: RunedFactory) -> None:
    stop = own_orch.tmp / "stop-kept"
    own_orch.cast(
        "kept", own_orch.program("waiter", WAITER), str(stop), scale=2, restart_policy=common_pb2.RESTART_POLICY_NEVER
    )
    before = eventually(lambda: own_orch.running("kept", 2), timeout=30)
    eventually(lambda: all("started" in own_orch.log_lines(i) for i in before), what="the programs printed their start")
    zygote = _zygote_of(before[0])
    shims = [int(_pid_info(i)["shim_pid"]) for i in before]
    first = own_orch.runed
    assert first.proc is not None
    # kill -9 of runed's whole process group: the zygote and the shims are in sessions of their own.
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    assert all(alive(p) for p in shims) and all(alive(int(i["pid"])) for i in before)
    second = runed_factory(first.data_dir, args=first.args, env=ZYGOTE)
    own_orch.runed = second

    def readopted() -> list[dict[str, Any]]:
        after = own_orch.running("kept", 2)
        assert [(a["pid"], a["restart_count"]) for a in after] == [(b["pid"], 0) for b in before]
        return after

    eventually(readopted, timeout=30, what="the same processes re-adopted")
    # The old zygote stopped serving (its controller is gone) but stays to reap its shims.
    assert alive(zygote)
    # A new instance gets a shim from a new zygote of the new controller.
    own_orch.services.ScaleService(_scale("kept", 3), metadata=own_orch.auth)
    (third,) = eventually(lambda: [i for i in own_orch.running("kept", 3) if i["index"] == 2], timeout=30)
    assert _zygote_of(third) != zygote
    # Exits of re-adopted instances are recorded with their codes by the new controller.
    stop.touch()

    def exited() -> bool:
        done = own_orch.instances("kept")
        assert [(d["state"], d["last_exit_code"]) for d in done] == [("EXITED", 7)] * 3, done
        return True

    eventually(exited, timeout=30, what="every exit recorded with its code")
    # Its shims gone, the old zygote ends too.
    eventually(lambda: not alive(zygote), what="the old zygote ended after its shims")


def test_a_killed_zygote_is_replaced(orch: Orch) -> None:
    stop = orch.tmp / "stop-replaced"
    orch.cast("replaced", orch.program("waiter", WAITER), str(stop), scale=1)
    (first,) = eventually(lambda: orch.running("replaced", 1), timeout=30)
    zygote = _zygote_of(first)
    os.kill(zygote, signal.SIGKILL)
    eventually(lambda: not alive(zygote), what="the zygote is gone")
    # Its shim was not its to end: the instance runs on, supervised.
    assert alive(int(_pid_info(first)["shim_pid"])) and alive(int(first["pid"]))
    orch.services.ScaleService(_scale("replaced", 2), metadata=orch.auth)
    insts = eventually(lambda: orch.running("replaced", 2), timeout=30)
    second = next(i for i in insts if i["index"] == 1)
    assert _zygote_of(second) != zygote
    assert next(i for i in insts if i["index"] == 0)["pid"] == first["pid"]


def _scale(name: str, n: int) -> service_pb2.ScaleServiceRequest:
    return service_pb2.ScaleServiceRequest(name=name, namespace="default", scale=n)


def _pipes(pid: int) -> int:
    """How many pipe descriptors ``pid`` holds."""
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith("pipe:")
        except OSError:
            continue  # closed meanwhile
    return count


def _marker(data_dir: Path) -> dict[str, Any]:
    marker: dict[str, Any] = json.loads((data_dir / "run" / "controller.json").read_text())
    return marker


def test_a_controller_that_loses_its_lease_lets_go_of_its_process_runner(
    runed_factory: RunedFactory, tmp_path: Path
) -> None:
    """Stepping down closes the runner (the zygote's report pipe): lease cycles leak no descriptors."""
    o = Orch.on(
        runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env={"RUNE_CONTROLLER_LEASE_SECONDS": "2"}),
        tmp_path,
    )
    o.cast("leased", o.program("waiter", WAITER), str(tmp_path / "never"), scale=1)
    (inst,) = eventually(lambda: o.running("leased", 1), timeout=30)
    data = o.runed.data_dir
    pid = int(_marker(data)["pid"])
    before = _pipes(pid)
    store = SQLiteStore(data / "runed.db", notify=False)
    try:
        for _ in range(2):

            def steal() -> bool:
                rec = store.get(KIND, NAMESPACE, CONTROLLER)
                assert rec is not None and rec.data["holder"] != "intruder"
                data_ = {"holder": "intruder", "ttl_seconds": 600.0}
                try:
                    store.put(KIND, NAMESPACE, CONTROLLER, data_, expect_revision=rec.revision)
                except Conflict as e:  # renewed meanwhile: again
                    raise AssertionError(e) from None
                return True

            eventually(steal, what="the lease taken by another holder")
            eventually(lambda: _marker(data)["address"] == "standby", timeout=30, what="the controller stood by")
            store.delete(KIND, NAMESPACE, CONTROLLER)
            eventually(lambda: _marker(data)["address"] != "standby", timeout=30, what="the controller leads again")
        assert int(_marker(data)["pid"]) == pid, "the same process stood by and led again"
        # It still supervises the instance it re-adopted.
        assert [i["pid"] for i in eventually(lambda: o.running("leased", 1), timeout=30)] == [inst["pid"]]
        assert _pipes(pid) == before
    finally:
        store.close()


@pytest.mark.parametrize("shim", ["auto", "python"])
def test_controller_shim_picks_the_supervisor_and_either_is_readopted(
    shim: str, runed_factory: RunedFactory, tmp_path: Path
) -> None:
    """``controller.shim``: the native shim by default, the Python one on request; either runs the
    instance, survives kill -9 of runed, is re-adopted and records the exit code."""
    from tests.integration.orch import Orch

    env = {"RUNE_CONTROLLER_SHIM": shim}
    first = runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env=env)
    orch = Orch.on(first, tmp_path)
    stop = tmp_path / "stop-picked"
    orch.cast("picked", orch.program("waiter", WAITER), str(stop), restart_policy=common_pb2.RESTART_POLICY_NEVER)
    (inst,) = eventually(lambda: orch.running("picked", 1), timeout=30)
    eventually(lambda: "started" in orch.log_lines(inst), what="the program printed its start")
    shim_pid = int(_pid_info(inst)["shim_pid"])
    exe = os.readlink(f"/proc/{shim_pid}/exe")
    if shim == "python":
        assert "python" in Path(exe).name, exe
    else:
        assert Path(exe).name.startswith("rune-shim-"), exe
    assert Path(f"/proc/{shim_pid}/comm").read_text().strip() == "rune-shim"
    assert _parent(shim_pid) == _zygote_of(inst)
    assert first.proc is not None
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    assert alive(shim_pid) and alive(int(inst["pid"]))
    orch.runed = runed_factory(first.data_dir, args=first.args, env=env)
    eventually(lambda: [i["pid"] for i in orch.running("picked", 1)] == [inst["pid"]], timeout=30, what="re-adopted")
    stop.touch()

    def exited() -> bool:
        done = orch.instances("picked")
        assert [(d["state"], d["last_exit_code"]) for d in done] == [("EXITED", 7)], done
        return True

    eventually(exited, timeout=30, what="the exit recorded with its code")
