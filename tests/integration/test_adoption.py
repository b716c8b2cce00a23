"""runed kill -9 and restart: live instances are re-adopted (no duplicates), dead ones restarted per policy."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from rune.api import common_pb2
from tests.harness import RunedFactory
from tests.integration.orch import SERVER, Orch
from tests.support import alive, eventually


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
    second = runed_factory(first.data_dir, args=first.args)
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


def _cmdline(p: Path) -> str:
    try:
        return p.joinpath("cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
