"""Nodes: placement throughput over three nodes vs one, and failover time after a node dies.

A control plane (a whole runed whose controller only schedules, ``node.enabled: false``) and three
nodes (``runed serve --role node`` on 127.0.0.2, .3 and .4) on one PostgreSQL database, as the
tests' cluster (``tests/integration/test_nodes.py``):

- placement throughput: CreateService with ``--scale`` sleeping processes until every instance is
  Running, with the service pinned to one node (``node_selector``) vs spread over the three, in
  alternated rounds; instances placed and Running per second, and the ratio three/one. On one
  machine the three nodes share its cores: this says what the scheduler and the spread cost or
  add, not what three machines would add.
- failover: a service of scale 3 (one instance per node), kill -9 of one node's whole process tree
  (its runed, shims and instances), time until the lost instance runs on another node; p50 over
  ``--failovers`` runs, as a multiple of the detection window (``not_ready_seconds`` +
  ``lost_after_seconds``, the floor: a node is replaced only once it has been quiet that long).

Needs a PostgreSQL server (``RUNE_TEST_PG_URL``). ``python -m bench nodes --scale 30 --failovers 5``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.bench_cluster import database
from bench.common import bootstrap_token
from rune.api import common_pb2, instance_pb2, instance_pb2_grpc, node_pb2, node_pb2_grpc, service_pb2, service_pb2_grpc
from tests.harness import Runed, Runeds, reap_data_dir

NODES = {"n1": "127.0.0.2", "n2": "127.0.0.3", "n3": "127.0.0.4"}
NOT_READY_SECONDS = 2.0
LOST_AFTER_SECONDS = 1.0
WINDOW = NOT_READY_SECONDS + LOST_AFTER_SECONDS
CONFIG = f"""
controller:
  resync_seconds: 5
  stop_grace_seconds: 2
node:
  heartbeat_seconds: 0.25
  not_ready_seconds: {NOT_READY_SECONDS:g}
  lost_after_seconds: {LOST_AFTER_SECONDS:g}
"""
KEY_FILES = ("auth.key", "kek.b64")
RUNNING = instance_pb2.INSTANCE_STATUS_RUNNING
SLEEPER = "import time\ntime.sleep(3600)\n"


class Cluster:
    """The control plane and three nodes, and the calls the bench makes."""

    def __init__(self, runeds: Runeds, tmp: Path, url: str) -> None:
        self.runeds, self.tmp, self.url = runeds, tmp, url
        self.api = runeds.start(tmp / "cp", args=self._config("cp", "  enabled: false\n"), env=self._env(), timeout=120)
        self.nodes = {nid: self.start_node(nid) for nid in NODES}
        self.md = (("authorization", f"Bearer {bootstrap_token(self.api.grpc_target)}"),)
        self.channel = grpc.insecure_channel(self.api.grpc_target)
        self.services = service_pb2_grpc.ServiceServiceStub(self.channel)
        self.instances_api = instance_pb2_grpc.InstanceServiceStub(self.channel)
        self.node_api = node_pb2_grpc.NodeServiceStub(self.channel)
        self.script = tmp / "sleeper.py"
        self.script.write_text(SLEEPER)
        self.wait(lambda: self.ready_nodes() == set(NODES), 120, "three Ready nodes")

    def _env(self) -> dict[str, str]:
        return {"RUNE_STORE_URL": self.url, "RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "0"}

    def _config(self, name: str, node: str) -> list[str]:
        path = self.tmp / f"{name}.yaml"
        path.write_text(CONFIG + node)
        return ["--log-level", "warning", "--config", str(path)]

    def start_node(self, nid: str) -> Runed:
        data = self.tmp / nid
        if not data.exists():
            # Hosts sharing a store share its keys.
            data.mkdir()
            for f in KEY_FILES:
                shutil.copy2(self.api.data_dir / f, data / f)
        spec = f"  id: {nid}\n  address: {NODES[nid]}\n  labels:\n    name: {nid}\n"
        return self.runeds.start(data, args=self._config(nid, spec), env=self._env(), role="node", timeout=120)

    def ready_nodes(self) -> set[str]:
        nodes = self.node_api.ListNodes(node_pb2.ListNodesRequest(), metadata=self.md).nodes
        return {n.id for n in nodes if n.status == "Ready"}

    def cast(self, name: str, scale: int, selector: dict[str, str] | None = None) -> None:
        svc = service_pb2.Service(
            name=name,
            namespace="default",
            scale=scale,
            runtime="process",
            process=common_pb2.ProcessSpec(command=sys.executable, args=[str(self.script)]),
            node_selector=selector or {},
        )
        self.services.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=self.md)

    def instances(self, name: str) -> list[instance_pb2.Instance]:
        req = instance_pb2.ListInstancesRequest(service_name=name)
        return list(self.instances_api.ListInstances(req, metadata=self.md).instances)

    def delete(self, name: str) -> None:
        req = service_pb2.DeleteServiceRequest(name=name, namespace="default", force=True, now=True)
        self.services.DeleteService(req, metadata=self.md)
        self.wait(lambda: not self.instances(name), 120, f"{name} deleted")

    @staticmethod
    def wait(check: object, timeout: float, what: str, every: float = 0.02) -> None:
        assert callable(check)
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise RuntimeError(f"not within {timeout:g}s: {what}")
            time.sleep(every)


def _placement(c: Cluster, name: str, scale: int, selector: dict[str, str] | None) -> float:
    """Seconds from CreateService until ``scale`` instances run (on the nodes the selector allows)."""
    t0 = time.monotonic()
    c.cast(name, scale, selector)

    def running() -> bool:
        insts = c.instances(name)
        return len(insts) == scale and all(i.status == RUNNING for i in insts)

    c.wait(running, 300, f"{name}: {scale} running")
    took = time.monotonic() - t0
    c.delete(name)
    return took


def _failover(c: Cluster, run: int) -> float:
    """Seconds from kill -9 of the node running one instance until that instance runs on another node."""
    name = f"fo{run}"
    c.cast(name, 3)
    c.wait(lambda: sorted(i.node_id for i in c.instances(name) if i.status == RUNNING) == sorted(NODES), 120, name)
    victim = "n3"
    node = c.nodes[victim]
    assert node.proc is not None
    t0 = time.monotonic()
    os.killpg(node.proc.pid, signal.SIGKILL)
    reap_data_dir(node.data_dir)

    def replaced() -> bool:
        insts = [i for i in c.instances(name) if i.node_id != victim and i.status == RUNNING]
        return len(insts) == 3

    c.wait(replaced, 20 * WINDOW, f"{name} replaced")
    took = time.monotonic() - t0
    node.stop()
    node.start(120)
    c.wait(lambda: c.ready_nodes() == set(NODES), 120, f"{victim} Ready again")
    c.delete(name)
    return took


def run(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="bench nodes")
    p.add_argument("--scale", type=int, default=30)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--failovers", type=int, default=5)
    opts = p.parse_args(argv)
    with database() as url, tempfile.TemporaryDirectory() as tmp_name:
        runeds = Runeds()
        try:
            c = Cluster(runeds, Path(tmp_name), url)
            ones: list[float] = []
            threes: list[float] = []
            # Alternated rounds: load drifting on the machine falls on both alike.
            for r in range(opts.rounds):
                ones.append(_placement(c, f"one{r}", opts.scale, {"name": "n1"}))
                threes.append(_placement(c, f"three{r}", opts.scale, None))
            failovers = sorted(_failover(c, r) for r in range(opts.failovers))
        finally:
            runeds.close()
    one = opts.scale * len(ones) / sum(ones)
    three = opts.scale * len(threes) / sum(threes)
    print(f"placement: CreateService scale {opts.scale} -> all Running, {opts.rounds} alternated rounds")
    print(f"  one node      {one:6.1f} instances/s   ({' '.join(f'{t:.2f}' for t in ones)} s)")
    print(f"  three nodes   {three:6.1f} instances/s   ({' '.join(f'{t:.2f}' for t in threes)} s)")
    print(f"  ratio three/one: {three / one:.2f}")
    p50 = failovers[len(failovers) // 2]
    print(
        f"failover after kill -9 of a node (window {NOT_READY_SECONDS:g} + {LOST_AFTER_SECONDS:g} s),"
        f" {len(failovers)} runs"
    )
    print(f"  seconds: {' '.join(f'{t:.2f}' for t in failovers)}   p50 {p50:.2f} s = {p50 / WINDOW:.2f}x the window")


if __name__ == "__main__":
    run(sys.argv[1:])
