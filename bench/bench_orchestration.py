"""Time from CreateService to all instances Running (scale 1 and 20) against spawning the same programs directly."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.common import bootstrap_token, running_runed, setting
from rune.api import common_pb2, service_pb2, service_pb2_grpc

PROGRAM = "import time\nprint('started', flush=True)\nwhile True:\n    time.sleep(1)\n"
ROUNDS = setting("BENCH_ORCH_ROUNDS", 3)


def _baseline(script: Path, n: int) -> float:
    """Spawn ``n`` programs directly (own process groups, as runed does) until each printed its first line."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, start_new_session=True)
        for _ in range(n)
    ]
    for p in procs:
        assert p.stdout is not None
        p.stdout.readline()
    elapsed = time.perf_counter() - t0
    for p in procs:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return elapsed


def _states(db: Path, name: str) -> list[dict[str, object]]:
    from runed.store.sqlite import SQLiteStore

    st = SQLiteStore(db, notify=False)
    try:
        return [r.data for r in st.list("instance", "default").items if r.data.get("service") == name]
    finally:
        st.close()


def _started(data: dict[str, object]) -> bool:
    path = Path(str(data["log_dir"])) / "log.jsonl"
    return path.exists() and b'"started"' in path.read_bytes()


def _kill_instances(data_dir: Path) -> None:
    for pid_file in (data_dir / "instances").glob("*/pid.json"):
        try:
            info = json.loads(pid_file.read_text())
            os.killpg(int(info["pid"]), signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


def _cast(
    stub: service_pb2_grpc.ServiceServiceStub, md: list[tuple[str, str]], name: str, script: Path, n: int, db: Path
) -> tuple[float, float]:
    """Seconds until all ``n`` instances are RUNNING, and until all have printed their first line."""
    svc = service_pb2.Service(
        name=name,
        namespace="default",
        scale=n,
        runtime="process",
        process=common_pb2.ProcessSpec(command=sys.executable, args=[str(script)]),
    )
    t0 = time.perf_counter()
    stub.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=md)
    running_at = 0.0
    deadline = t0 + 120
    while time.perf_counter() < deadline:
        insts = _states(db, name)
        if len(insts) == n and all(d["state"] == "RUNNING" for d in insts):
            running_at = running_at or time.perf_counter() - t0
            if all(_started(d) for d in insts):
                return running_at, time.perf_counter() - t0
        time.sleep(0.005)
    raise RuntimeError(f"{name}: instances did not start within 120s")


def _delete(stub: service_pb2_grpc.ServiceServiceStub, md: list[tuple[str, str]], name: str, db: Path) -> None:
    stub.DeleteService(service_pb2.DeleteServiceRequest(name=name, grace_period=1), metadata=md)
    deadline = time.monotonic() + 60
    while _states(db, name) and time.monotonic() < deadline:
        time.sleep(0.05)


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp, running_runed() as addrs:
        script = Path(tmp) / "prog.py"
        script.write_text(PROGRAM)
        data_dir = Path(addrs["data_dir"])
        db = data_dir / "runed.db"
        md = [("authorization", f"Bearer {bootstrap_token(addrs['grpc'])}")]
        try:
            with grpc.insecure_channel(addrs["grpc"]) as ch:
                stub = service_pb2_grpc.ServiceServiceStub(ch)
                for n in (1, 20):
                    base, running, started = [], [], []
                    for i in range(ROUNDS):
                        base.append(_baseline(script, n))
                        r, s = _cast(stub, md, f"bench-{n}-{i}", script, n, db)
                        running.append(r)
                        started.append(s)
                        _delete(stub, md, f"bench-{n}-{i}", db)
                    b, r, s = statistics.median(base), statistics.median(running), statistics.median(started)
                    print(
                        f"   scale {n:>2}: bare spawn {b * 1000:7.1f} ms | CreateService -> all Running "
                        f"{r * 1000:7.1f} ms ({r / b:4.1f}x) | -> all printing {s * 1000:7.1f} ms ({s / b:4.1f}x)"
                    )
        finally:
            _kill_instances(data_dir)
