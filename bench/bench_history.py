"""A long history: the controller's CPU for the same scalings with 5,000 finished deletions recorded, against none.

Finished scaling and deletion operations stay in the store (ListDeletionOperations lists them) and
nothing changes them any more. Two runeds, one with :data:`HISTORY` finished deletion operations
written to its store before it starts (as DeleteService and the controller leave them), one with
none; on each in turn, a service scaled between 1 and 2 instances :data:`ROUNDS` times, each scaling
until its instances run. Reported: the controller's CPU over those scalings (every thread, from
/proc/<pid>/task/*/schedstat), with the history against without, and the wall time of each; then
both controllers' CPU while idle over :data:`IDLE_SECONDS` (an idle controller still makes a pass
over every service every ``controller.resync_seconds``).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bench_scale import Api, cast_running, runed_pids, thread_cpu
from bench.common import bootstrap_token, setting
from rune.api import instance_pb2, instance_pb2_grpc, service_pb2
from runed.model import objects
from runed.store.sqlite import open_store
from tests.harness import Runed, run_runed

HISTORY = setting("BENCH_HISTORY_OPS", 5000)
ROUNDS = setting("BENCH_HISTORY_ROUNDS", 10)
# Each runed's scalings in turn, this many times (the machine's drift falls on both alike).
TURNS = 3
IDLE_SECONDS = setting("BENCH_HISTORY_IDLE_SECONDS", 30.0)
PROGRAM = ["/bin/sleep", "3600"]
WAIT_SECONDS = 120.0


def _history(data: Path, n: int) -> None:
    """``n`` finished deletion operations in the store of ``data``, as DeleteService and the controller leave them."""
    store = open_store(data)
    now = int(time.time())
    fins = [
        {
            "id": t,
            "type": t,
            "status": "completed",
            "error": "",
            "created_at": now,
            "updated_at": now,
            "completed_at": now,
        }
        for t in objects.DELETION_FINALIZERS
    ]
    try:
        with store.transaction():
            for i in range(n):
                op_id = f"delete-default-old{i}-{now}-{i:06x}"
                op: dict[str, Any] = {
                    "id": op_id,
                    "namespace": "default",
                    "service_name": f"old{i}",
                    "total_instances": 2,
                    "deleted_instances": 2,
                    "failed_instances": 0,
                    "start_time": now,
                    "end_time": now,
                    "status": "completed",
                    "failure_reason": "",
                    "pending_operations": [],
                    "finalizers": fins,
                    "finalizer_order": list(objects.DELETION_FINALIZERS),
                    "finalizer_status": ", ".join(f"{t}=completed" for t in objects.DELETION_FINALIZERS),
                    "grace_period": 10,
                    "timeout_seconds": 0,
                    "force": False,
                    "requested_by": "admin",
                }
                store.create(objects.DELETION_OPERATION, "default", op_id, op)
    finally:
        store.close()


def _running(api: Api, name: str) -> int:
    stub = instance_pb2_grpc.InstanceServiceStub(api.channel)
    req = instance_pb2.ListInstancesRequest(namespace="default", service_name=name)
    items = stub.ListInstances(req, metadata=api.md).instances
    return sum(1 for i in items if i.status == instance_pb2.INSTANCE_STATUS_RUNNING)


def _scale(api: Api, name: str, scale: int) -> None:
    req = service_pb2.ScaleServiceRequest(name=name, namespace="default", scale=scale)
    api.services.ScaleService(req, metadata=api.md)
    deadline = time.monotonic() + WAIT_SECONDS
    while _running(api, name) != scale:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: {scale} running not reached within {WAIT_SECONDS:g}s")
        time.sleep(0.02)


def _scalings(r: Runed, api: Api) -> tuple[float, float]:
    """The controller's CPU seconds and the wall seconds of ROUNDS scalings up and down."""
    ctl = runed_pids(r)["controller"]
    cpu, t0 = thread_cpu(ctl), time.perf_counter()
    for _ in range(ROUNDS):
        _scale(api, "web", 2)
        _scale(api, "web", 1)
    return thread_cpu(ctl) - cpu, time.perf_counter() - t0


def run() -> None:
    print(f"   {HISTORY} finished deletion operations against none; {ROUNDS} scalings 1 -> 2 -> 1, {TURNS} turns each")
    env = {"RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "0"}
    got: dict[str, list[tuple[float, float]]] = {"none": [], "history": []}
    with tempfile.TemporaryDirectory() as tmp:
        _history(Path(tmp) / "history", HISTORY)
        with (
            run_runed(Path(tmp) / "none", args=["--log-level", "warning"], env=env, timeout=60) as bare,
            run_runed(Path(tmp) / "history", args=["--log-level", "warning"], env=env, timeout=60) as hist,
        ):
            apis = {}
            for key, r in (("none", bare), ("history", hist)):
                apis[key] = (r, Api(r.channel(), [("authorization", f"Bearer {bootstrap_token(r.grpc_target)}")]))
                cast_running(apis[key][1], "web", PROGRAM, 1)
            time.sleep(2)
            for _ in range(TURNS):
                for key, (r, api) in apis.items():
                    got[key].append(_scalings(r, api))
            # Both idle at once, once the scalings' last writes are in.
            time.sleep(2)
            ctls = {k: runed_pids(r)["controller"] for k, (r, _) in apis.items()}
            before = {k: thread_cpu(p) for k, p in ctls.items()}
            time.sleep(IDLE_SECONDS)
            idle = {k: (thread_cpu(p) - before[k]) / IDLE_SECONDS * 100 for k, p in ctls.items()}
    cpu = {k: statistics.median(c for c, _ in v) for k, v in got.items()}
    wall = {k: statistics.median(w for _, w in v) for k, v in got.items()}
    print(
        f"   controller CPU   {cpu['history'] * 1000:7.0f} ms with the history, {cpu['none'] * 1000:7.0f} ms without"
        f"   ratio {cpu['history'] / cpu['none']:5.2f}x"
    )
    print(
        f"   wall time        {wall['history']:7.2f} s  with the history, {wall['none']:7.2f} s  without"
        f"   ratio {wall['history'] / wall['none']:5.2f}x"
    )
    print(
        f"   idle controller  {idle['history']:7.2f}% of a core with the history, {idle['none']:.2f}% without "
        f"(over {IDLE_SECONDS:g} s)"
    )
