"""Scale-1 start, stage by stage: CreateService -> controller launch -> shim -> exec -> Running, against a bare spawn.

Each stage's end is read from what the step leaves behind, on the wall clock all processes share:

- ``launch``: ``launch.json`` written (the controller was woken by the store change, ran its pass,
  built the launch: ports, environment, directories) and the shim asked for;
- ``shim``: the shim runs its own code (its exit record's reservation is written first thing);
- ``exec``: the program was exec'd (``ts`` of ``pid.json``, written once the exec succeeded);
- ``running``: the controller saw it and recorded the instance Running (its ``Started`` event);
- ``seen``: GetService reports the service RUNNING to a client polling every 2 ms;
- ``printed``: the program's first line is in its log (what the bare baseline waits for).

The baseline, in the same run: spawning the same program with ``Popen`` (own session) until it
printed its first line. ``BENCH_START_ROUNDS`` rounds (default 7); medians.
"""

from __future__ import annotations

import json
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
ROUNDS = setting("BENCH_START_ROUNDS", 7)
STAGES = ("launch", "shim", "exec", "running", "seen", "printed")


def _bare(script: Path) -> float:
    t0 = time.time()
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, start_new_session=True)
    assert p.stdout is not None
    p.stdout.readline()
    elapsed = time.time() - t0
    p.kill()
    p.wait()
    return elapsed


def _dirs(instances: Path) -> set[str]:
    return {p.name for p in instances.iterdir() if p.is_dir()} if instances.exists() else set()


def _first(path: Path, key: str, match: str = "") -> float | None:
    """The wall-clock time of the first JSON line of ``path`` whose ``line`` contains ``match``."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for raw in text.splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if match in str(rec.get("line", "")):
            value = rec.get(key)
            if isinstance(value, str):
                return _rfc3339(value)
            return float(value) if value is not None else None
    return None


def _rfc3339(ts: str) -> float:
    base, frac = ts.rstrip("Z").split(".")
    secs = time.mktime(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) - time.timezone
    return secs + float("0." + frac)


def _one_start(
    stub: service_pb2_grpc.ServiceServiceStub, md: list[tuple[str, str]], name: str, script: Path, instances: Path
) -> dict[str, float]:
    svc = service_pb2.Service(
        name=name,
        namespace="default",
        scale=1,
        runtime="process",
        process=common_pb2.ProcessSpec(command=sys.executable, args=[str(script)]),
    )
    known = _dirs(instances)
    get = service_pb2.GetServiceRequest(name=name, namespace="default")
    t0 = time.time()
    stub.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=md)
    while stub.GetService(get, metadata=md).service.status != service_pb2.SERVICE_STATUS_RUNNING:
        if time.time() - t0 > 60:
            raise RuntimeError(f"{name} not Running within 60 s")
        time.sleep(0.002)
    seen = time.time()
    (new,) = [instances / d for d in _dirs(instances) - known]
    deadline = time.time() + 30
    while _first(new / "log.jsonl", "ts", "started") is None and time.time() < deadline:
        time.sleep(0.005)
    at = {
        "launch": (new / "launch.json").stat().st_mtime,
        "shim": (new / "exit.json.reserve").stat().st_mtime,
        "exec": float(json.loads((new / "pid.json").read_text())["ts"]),
        "running": _first(new / "events.jsonl", "ts", "Started") or seen,
        "seen": seen,
        "printed": _first(new / "log.jsonl", "ts", "started") or seen,
    }
    stub.DeleteService(service_pb2.DeleteServiceRequest(name=name, namespace="default", grace_period=1), metadata=md)
    return {k: v - t0 for k, v in at.items()}


def run() -> None:
    with tempfile.TemporaryDirectory() as tmp, running_runed() as addrs:
        script = Path(tmp) / "prog.py"
        script.write_text(PROGRAM)
        instances = Path(addrs["data_dir"]) / "instances"
        md = [("authorization", f"Bearer {bootstrap_token(addrs['grpc'])}")]
        with grpc.insecure_channel(addrs["grpc"]) as ch:
            stub = service_pb2_grpc.ServiceServiceStub(ch)
            bare, runs = [], []
            # One warm-up round: the controller's first start also starts its zygote.
            _one_start(stub, md, "warm", script, instances)
            for i in range(ROUNDS):
                bare.append(_bare(script))
                runs.append(_one_start(stub, md, f"start-{i}", script, instances))
        b = statistics.median(bare)
        med = {k: statistics.median(r[k] for r in runs) for k in STAGES}
        prev = 0.0
        parts = []
        for k in STAGES:
            parts.append(f"{k} +{(med[k] - prev) * 1000:.1f}")
            prev = max(prev, med[k])
        print(f"   stages (median ms after CreateService, each from the previous): {', '.join(parts)}")
        print(
            f"   CreateService -> Running seen {med['seen'] * 1000:.1f} ms, -> printing {med['printed'] * 1000:.1f} ms"
            f" | bare spawn -> printing {b * 1000:.1f} ms | ratio {med['seen'] / b:.2f}x (Running),"
            f" {med['printed'] / b:.2f}x (printing)"
        )
