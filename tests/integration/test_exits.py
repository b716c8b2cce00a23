"""How instances end: exits decided once the shim finished, dead shims noticed, back-off kept across restarts."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from rune.api import common_pb2, service_pb2
from runed.store.base import DELETED
from tests.harness import RunedFactory
from tests.integration.orch import SERVER, STUBBORN, Orch, runefile_args
from tests.support import alive, eventually

# Far more output than a pipe holds: the shim is still writing it when the process has already exited.
CHATTY = "seq 1 200000; exit 0"


def _one(o: Orch, name: str) -> dict[str, Any]:
    insts = o.instances(name)
    assert len(insts) == 1, insts
    return insts[0]


def _events(inst: dict[str, Any]) -> list[str]:
    path = Path(str(inst["log_dir"])) / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["line"] for line in path.read_text().splitlines() if line.strip()]


def _cast_sh(o: Orch, name: str, script: str, policy: common_pb2.RestartPolicy) -> None:
    svc = service_pb2.Service(
        name=name,
        namespace="default",
        scale=1,
        runtime="process",
        process=common_pb2.ProcessSpec(command="sh", args=["-c", script]),
        restart_policy=policy,
    )
    o.services.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=o.auth)


@pytest.mark.parametrize(
    "policy",
    [common_pb2.RESTART_POLICY_ON_FAILURE, common_pb2.RESTART_POLICY_NEVER],
    ids=["OnFailure", "Never"],
)
def test_a_chatty_job_that_succeeds_completes(orch: Orch, policy: common_pb2.RestartPolicy) -> None:
    _cast_sh(orch, "chatty", CHATTY, policy)

    def settled() -> dict[str, Any]:
        inst = _one(orch, "chatty")
        assert inst["state"] in ("EXITED", "BACKOFF") or inst["restart_count"] > 0, inst["state"]
        return inst

    inst = eventually(settled, timeout=30, what="the job ended")
    assert inst["state"] == "EXITED", (inst["state"], inst["reason"])
    assert inst["last_exit_code"] == 0 and inst["last_signal"] is None, inst["reason"]
    assert inst["restart_count"] == 0 and str(inst["reason"]).startswith("Completed: exit code 0"), inst["reason"]
    assert "Exited: exit code 0" in _events(inst)
    # The shim wrote every line (numbered by seq across rotations) before it recorded the exit.
    last = json.loads((Path(str(inst["log_dir"])) / "log.jsonl").read_text().splitlines()[-1])
    assert (last["seq"], last["line"]) == (200000, "200000")


def test_a_chatty_service_that_exits_0_is_restarted_with_its_code(orch: Orch) -> None:
    _cast_sh(orch, "chatty", CHATTY, common_pb2.RESTART_POLICY_ALWAYS)

    def restarted() -> dict[str, Any]:
        inst = _one(orch, "chatty")
        assert inst["restart_count"] >= 1, inst["restart_count"]
        return inst

    inst = eventually(restarted, timeout=30, what="the service ran again")
    assert inst["last_exit_code"] == 0 and inst["last_signal"] is None, inst["reason"]
    exits = [e for e in _events(inst) if e.startswith("Exited:")]
    assert exits and set(exits) == {"Exited: exit code 0"}, exits


def _shim_of(inst: dict[str, Any]) -> int:
    info = json.loads((Path(str(inst["log_dir"])) / "pid.json").read_text())
    assert info["pid"] == inst["pid"]
    return int(info["shim_pid"])


def test_a_killed_shim_is_noticed_and_the_instance_restarted(orch: Orch) -> None:
    orch.cast("orphan", orch.program("server", SERVER), ports=[common_pb2.ServicePort(name="http", port=80)])
    (inst,) = eventually(lambda: orch.running("orphan", 1), timeout=15)
    # Past its start-up output: once the shim is gone the process lives on, only its writes fail.
    eventually(lambda: "started" in orch.log_lines(inst), what="the program printed its start")
    shim = _shim_of(inst)
    os.kill(shim, signal.SIGKILL)

    def restarted() -> dict[str, Any]:
        (new,) = orch.running("orphan", 1)
        assert new["restart_count"] == 1 and new["pid"] != inst["pid"], (new["restart_count"], new["pid"])
        return new

    new = eventually(restarted, timeout=15, what="a new process under a new shim")
    assert new["id"] == inst["id"] and _shim_of(new) != shim
    # The orphaned process (without its stdout and stderr) did not outlive its shim.
    eventually(lambda: not alive(int(inst["pid"])), what="the orphaned process group is gone")
    assert any(e.startswith("Exited: shim died") for e in _events(new)), _events(new)
    assert new["last_exit_code"] is None and new["last_signal"] is None


# Fails its first three runs at once (the back-off grows), then runs until the file "die" appears.
FLAKY = textwrap.dedent(
    """
    import os, sys, time
    n = int(open("count").read()) if os.path.exists("count") else 0
    open("count", "w").write(str(n + 1))
    if n < 3:
        sys.exit(1)
    print("healthy", flush=True)
    while not os.path.exists("die"):
        time.sleep(0.05)
    sys.exit(1)
    """
)
RESET_SECONDS = 1.0


def test_backoff_is_reset_after_a_healthy_run_across_a_runed_restart(
    tmp_path: Path, runed_factory: RunedFactory
) -> None:
    extra = f"  restart_backoff_reset_seconds: {RESET_SECONDS}\n  restart_backoff_max_seconds: 30\n"
    args = runefile_args(tmp_path, extra)
    o = Orch.on(runed_factory(tmp_path / "data", args=args), tmp_path)
    workdir = tmp_path / "work"
    workdir.mkdir()
    _cast_flaky(o, workdir)

    def healthy() -> dict[str, Any]:
        inst = _one(o, "flaky")
        assert inst["state"] == "RUNNING" and inst["restart_count"] == 3, (inst["state"], inst["restart_count"])
        assert "healthy" in o.log_lines(inst)
        return inst

    inst = eventually(healthy, timeout=30, what="three quick failures, then a healthy run")
    assert inst["consecutive_failures"] == 3
    started = time.time()
    eventually(lambda: time.time() - started > 2 * RESET_SECONDS, what="a run longer than the reset window")
    first = o.runed
    assert first.proc is not None
    # runed goes down (kill -9 of every role at once); the instance fails while it is down.
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    (workdir / "die").touch()
    eventually(lambda: not alive(int(inst["pid"])), what="the instance exited")
    (workdir / "die").unlink()  # its next run is healthy again
    o.runed = runed_factory(first.data_dir, args=first.args)

    def running_again() -> dict[str, Any]:
        new = _one(o, "flaky")
        assert new["state"] == "RUNNING" and new["restart_count"] == 4, (new["state"], new["restart_count"])
        return new

    new = eventually(running_again, timeout=30, what="restarted after its back-off")
    # The healthy run ended the crash loop: the back-off started afresh at its initial delay.
    assert new["consecutive_failures"] == 1, new["consecutive_failures"]
    backoffs = [e for e in _events(new) if e.startswith("Back-off:")]
    assert backoffs[-1].startswith("Back-off: restarting in 0.3s"), backoffs


def _cast_flaky(o: Orch, workdir: Path) -> None:
    o.cast_command("flaky", [sys.executable, str(o.program("flaky", FLAKY))], process={"working_dir": str(workdir)})


def _instance_states_since(o: Orch, revision: int) -> list[tuple[str, str]]:
    """(instance id, state or "deleted") of every instance change after ``revision``, in order."""
    st = o.store()
    try:
        changes = st.changes_since(revision, ["instance"], limit=10_000)
    finally:
        st.close()
    return [(c.name, "deleted" if c.op == DELETED else str((c.data or {}).get("state"))) for c in changes]


def _revision(o: Orch) -> int:
    st = o.store()
    try:
        return st.current_revision()
    finally:
        st.close()


def test_instances_deleted_as_they_end_are_never_recorded_stopping(orch: Orch) -> None:
    """A deletion's Stopping records are written only for stops still under way after a moment:
    instances that end at once go from Running to deleted (no record written only to be deleted)."""
    orch.cast("prompt", orch.program("server", SERVER), scale=3, ports=[common_pb2.ServicePort(name="http", port=80)])
    insts = eventually(lambda: orch.running("prompt", 3), timeout=30)
    since = _revision(orch)
    orch.services.DeleteService(
        service_pb2.DeleteServiceRequest(name="prompt", namespace="default"), metadata=orch.auth
    )
    eventually(lambda: orch.instances("prompt") == [], timeout=30, what="the instances deleted")
    seen = _instance_states_since(orch, since)
    assert sorted(i for i, s in seen if s == "deleted") == sorted(i["id"] for i in insts), seen
    assert not [s for _, s in seen if s == "STOPPING"], seen


def test_an_instance_slow_to_stop_is_recorded_stopping_while_it_is(orch: Orch) -> None:
    orch.cast("slow", orch.program("stubborn", STUBBORN))
    (inst,) = eventually(lambda: orch.running("slow", 1), timeout=30)
    eventually(lambda: "started" in orch.log_lines(inst), what="the program ignores TERM")
    since = _revision(orch)
    req = service_pb2.DeleteServiceRequest(name="slow", namespace="default", grace_period=4)
    orch.services.DeleteService(req, metadata=orch.auth)

    def stopping() -> bool:
        assert (inst["id"], "STOPPING") in _instance_states_since(orch, since)
        return True

    # Recorded long before the grace period ends with SIGKILL.
    eventually(stopping, timeout=3, what="the Stopping record")
    assert alive(int(inst["pid"]))
    eventually(lambda: orch.instances("slow") == [], timeout=30, what="the instance deleted after its grace")
    assert _instance_states_since(orch, since)[-1] == (inst["id"], "deleted")
