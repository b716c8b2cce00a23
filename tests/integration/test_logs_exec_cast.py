"""Logs and exec against real cast services: the controller's shim writes, rotates and restarts."""

from __future__ import annotations

import queue
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rune.api import common_pb2, exec_pb2, exec_pb2_grpc, logs_pb2, logs_pb2_grpc, service_pb2
from tests.harness import RunedFactory
from tests.integration.orch import Orch, runefile_args
from tests.support import eventually

# Prints numbered lines (every 4th to stderr), then exits so the controller restarts it.
CHATTY = textwrap.dedent(
    """
    import os, sys, time
    name = os.environ["RUNE_INSTANCE_NAME"]
    for i in range(60):
        print(f"{name} tick {i} " + "x" * 40, file=sys.stderr if i % 4 == 3 else sys.stdout, flush=True)
        time.sleep(0.01)
    sys.exit(0)
    """
)


@pytest.fixture
def cast(runed_factory: RunedFactory, tmp_path: Path) -> Iterator[Orch]:
    # Small log files so the shim rotates several times within the test.
    args = runefile_args(tmp_path, "  log_max_bytes: 2048\n  log_backups: 5\n")
    o = Orch.on(runed_factory(tmp_path / "data", args=args), tmp_path)
    script = o.program("chatty", CHATTY)
    svc = service_pb2.Service(
        name="chatty",
        namespace="default",
        scale=2,
        runtime="process",
        process=common_pb2.ProcessSpec(command=sys.executable, args=[str(script)]),
    )
    o.services.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=o.auth)
    yield o


def test_follow_a_real_service_across_rotation_and_restarts(cast: Orch) -> None:
    stub = logs_pb2_grpc.LogServiceStub(cast.runed.channel())
    q: queue.Queue[logs_pb2.LogRequest | None] = queue.Queue()
    q.put(logs_pb2.LogRequest(resource_target="service/chatty", follow=True))

    def requests() -> Iterator[logs_pb2.LogRequest]:
        while (r := q.get()) is not None:
            yield r

    call = stub.StreamLogs(requests(), metadata=cast.auth, timeout=60)
    seqs: dict[str, list[int]] = {}
    streams: set[str] = set()
    try:
        for r in call:
            assert r.service_name == "chatty" and r.content.startswith(r.instance_name)
            seqs.setdefault(r.instance_id, []).append(r.seq)
            streams.add(r.stream)
            if len(seqs) == 2 and all(len(v) > 150 for v in seqs.values()):
                insts = {i["id"]: i for i in cast.instances("chatty")}
                if all(insts[i]["restart_count"] >= 1 for i in seqs if i in insts):
                    break
    finally:
        call.cancel()
        q.put(None)
    # Every line of every instance exactly once, in order, across rotations and restarts.
    for iid, got in seqs.items():
        assert got == list(range(got[0], got[0] + len(got))), iid
        assert (Path(cast.instances("chatty")[0]["log_dir"]).parent / iid / "log.jsonl.1").exists()
    assert streams == {"stdout", "stderr"}


def test_exec_in_a_real_instance_and_logs_over_rest(cast: Orch) -> None:
    insts = eventually(lambda: cast.running("chatty", 2), timeout=20)
    stub = exec_pb2_grpc.ExecServiceStub(cast.runed.channel())
    init = exec_pb2.ExecInitRequest(service_name="chatty", command=["sh", "-c", 'echo "$RUNE_INSTANCE_NAME"; pwd'])
    out = b""
    code = None
    for r in stub.StreamExec(iter([exec_pb2.ExecRequest(init=init)]), metadata=cast.auth, timeout=20):
        out += r.stdout
        if r.HasField("exit"):
            code = r.exit.code
    assert code == 0
    name, cwd = out.decode().split()
    assert name in {i["instance"]["name"] for i in insts}
    assert cwd in {i["workdir"] for i in insts}

    def tail() -> list[str]:
        r = httpx.get(
            cast.runed.http_base + "/v1/namespaces/default/logs/chatty",
            params={"tail": "5", "filter": "/tick [0-9]+ /"},
            headers={"authorization": cast.auth[0][1]},
            timeout=20,
        )
        assert r.status_code == 200, r.text
        got = r.text.splitlines()
        assert len(got) == 5, got  # the instances may not have ticked five times yet
        return got

    lines = eventually(tail, timeout=20, what="five tick lines")
    assert len(lines) == 5 and all('"serviceName":"chatty"' in ln.replace(" ", "") for ln in lines)
