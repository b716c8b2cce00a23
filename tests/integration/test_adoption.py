"""runed kill -9 and restart: live instances are re-adopted (no duplicates), dead ones restarted per
policy, and probes go on with the spec and environment the instances run with; on SQLite and on
PostgreSQL (there the records live in the database, the instance directories in the data dir)."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rune.api import common_pb2, configmap_pb2, configmap_pb2_grpc
from tests.harness import RunedFactory
from tests.integration.orch import SERVER, Orch, runefile_args
from tests.pgsupport import fresh_database
from tests.support import alive, eventually


@pytest.fixture(params=["sqlite", "postgresql"])
def own_orch(request: pytest.FixtureRequest, runed_factory: RunedFactory, tmp_path: Path) -> Iterator[Orch]:
    """A runed of the test's own on each store (a database of its own on PostgreSQL)."""
    if request.param == "sqlite":
        yield Orch.on(runed_factory(tmp_path / "data", args=runefile_args(tmp_path)), tmp_path)
        return
    with fresh_database() as url:
        env = {"RUNE_STORE_URL": url}
        orch = Orch.on(runed_factory(tmp_path / "data", args=runefile_args(tmp_path), env=env), tmp_path)
        yield orch
        orch.runed.stop()  # before its database is dropped


def test_kill9_restart_readopts_without_duplicates(own_orch: Orch, runed_factory: RunedFactory) -> None:
    own_orch.cast(
        "keep", own_orch.program("server", SERVER), ports=[common_pb2.ServicePort(name="http", port=80)], scale=3
    )
    before = eventually(lambda: own_orch.running("keep", 3), timeout=20)
    eventually(lambda: all("started" in own_orch.log_lines(i) for i in before), what="programs printed their start")
    first = own_orch.runed
    assert first.proc is not None
    # kill -9 of runed's whole process group: supervisor and every role at once.
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    assert all(alive(i["pid"]) for i in before), "instances survive runed's death"
    # One instance dies while runed is down: it must be restarted, the others adopted.
    victim = before[1]
    os.killpg(victim["pid"], signal.SIGKILL)
    eventually(lambda: not alive(victim["pid"]))
    second = runed_factory(first.data_dir, args=first.args, env=first.env)
    own_orch.runed = second

    def converged() -> list[dict[str, object]]:
        insts = own_orch.running("keep", 3)
        by_id = {i["id"]: i for i in insts}
        assert set(by_id) == {i["id"] for i in before}, "same instance records, none added"
        assert by_id[victim["id"]]["restart_count"] == 1 and by_id[victim["id"]]["pid"] != victim["pid"]
        return insts

    after = eventually(converged, timeout=20)
    for b in before:
        if b["id"] != victim["id"]:
            a = next(i for i in after if i["id"] == b["id"])
            assert a["pid"] == b["pid"] and a["restart_count"] == 0, "re-adopted, not restarted"
    # Exactly one process per instance: no duplicates started behind the records' backs.
    programs = [
        p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p).endswith(str(own_orch.tmp / "server.py"))
    ]
    assert len(programs) == 3, [_cmdline(p) for p in programs]
    # The restarted instance's log keeps counting: seq never goes back.
    log = Path(str(victim["log_dir"])) / "log.jsonl"
    seqs = [json.loads(line)["seq"] for line in log.read_text().splitlines()]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    eventually(lambda: sum(1 for line in log.read_text().splitlines() if json.loads(line)["line"] == "started") == 2)
    seqs = [json.loads(line)["seq"] for line in log.read_text().splitlines()]
    assert seqs == list(range(1, len(seqs) + 1))


def test_an_adopted_instance_s_exec_probe_runs_with_its_environment(
    own_orch: Orch, runed_factory: RunedFactory
) -> None:
    configmap_pb2_grpc.ConfigmapServiceStub(own_orch.runed.channel()).CreateConfigmap(
        configmap_pb2.CreateConfigmapRequest(
            configmap=configmap_pb2.Configmap(name="conf", namespace="default", data={"token": "t1"})
        ),
        metadata=own_orch.auth,
    )
    # Ready while the instance's environment has the configmap's value and the file "go" exists.
    check = "import os, sys; sys.exit(0 if os.environ.get('TOKEN') == 't1' and os.path.exists('go') else 1)"
    probe = common_pb2.Probe(
        type=common_pb2.PROBE_TYPE_COMMAND, command=[sys.executable, "-c", check], period_seconds=1
    )
    own_orch.cast(
        "exe",
        own_orch.program("server", SERVER),
        ports=[common_pb2.ServicePort(name="http", port=80)],
        env={"TOKEN": "{{configmap:conf/token}}"},
        health=common_pb2.HealthCheck(readiness=probe),
    )

    def ready(want: bool) -> dict[str, Any]:
        inst = own_orch.one("exe")
        assert inst["state"] == "RUNNING" and inst["ready"] is want, (inst["state"], inst["ready"])
        return inst

    inst = eventually(lambda: ready(False), timeout=20)
    go = Path(str(inst["workdir"])) / "go"
    go.write_text("1")
    eventually(lambda: ready(True), timeout=20)
    own_orch.kill_runed()
    go.unlink()
    own_orch.restart_runed(runed_factory)
    # Re-adopted, its probe runs again (not ready without the file), with the resolved environment
    # (ready again with it): the environment was resolved anew for the probe after the restart.
    eventually(lambda: ready(False), timeout=20)
    go.write_text("1")
    after = eventually(lambda: ready(True), timeout=20)
    assert after["pid"] == inst["pid"] and after["restart_count"] == 0, "re-adopted, not restarted"


def _cmdline(p: Path) -> str:
    try:
        return p.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
