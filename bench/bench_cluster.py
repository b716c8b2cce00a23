"""Several hosts on one PostgreSQL database: a second API host's throughput, cross-host watch latency, takeover.

Three measurements, each a ratio against a baseline taken in the same run:

- GetService calls/s with ``--clients`` concurrent gRPC clients against one grpc role (127.0.0.2)
  vs the same clients split over two grpc roles (127.0.0.2 and 127.0.0.3) sharing the database,
  in three alternated rounds of ``--seconds`` each.
  On one machine both hosts share its cores: this says what a second host costs or adds on the
  store side, not what a second machine would add.
- write → watch latency (p50/p99): a CreateService on one host until the ADDED event arrives on a
  WatchServices stream of the other host, vs the same with the stream on the writing host.
- controller takeover: two controller roles, kill -9 the leader, time until the standby reports it
  leads (its readiness marker), as a multiple of ``controller.lease_seconds`` (the floor: a standby
  waits a full lease before it takes over).

Needs a PostgreSQL server (``RUNE_TEST_PG_URL``, default postgresql://postgres@127.0.0.1:5432/test); a
database is created for the run and dropped after. ``python -m bench cluster --clients 32 --seconds 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import psycopg

from bench.common import Load, bootstrap_token, drive, setting
from rune.api import common_pb2, service_pb2, service_pb2_grpc
from tests.harness import Runed, Runeds

ADMIN_URL = os.environ.get("RUNE_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
KEY_FILES = ("auth.key", "kek.b64")
LEASE_SECONDS = 3.0
ROUNDS = 3


@contextlib.contextmanager
def database() -> Iterator[str]:
    """A database of the run's own on the PostgreSQL server, dropped afterwards."""
    name = f"runed_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield ADMIN_URL.rpartition("/")[0] + "/" + name
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _args(address: str, url: str) -> list[str]:
    return ["--log-level", "warning", "--grpc-addr", f"{address}:0", "--store-url", url]


def _start(
    runeds: Runeds,
    data: Path,
    address: str,
    url: str,
    role: str,
    keys_from: Path | None,
    extra_env: dict[str, str] | None = None,
) -> Runed:
    """One role of one host; its keys copied from ``keys_from`` (the first host's data dir) first;
    ``extra_env``: more settings (``RUNE_...``)."""
    if keys_from is not None:
        data.mkdir(parents=True, exist_ok=True)
        for name in KEY_FILES:
            shutil.copy2(keys_from / name, data / name)
    env = {"RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "0", "RUNE_CONTROLLER_LEASE_SECONDS": str(LEASE_SECONDS)}
    env.update(extra_env or {})
    return runeds.start(data, args=_args(address, url), env=env, role=role, timeout=120)


def _service(name: str) -> service_pb2.Service:
    return service_pb2.Service(
        name=name, namespace="default", scale=0, runtime="process", process=common_pb2.ProcessSpec(command="/bin/true")
    )


# -- throughput ---------------------------------------------------------------------------------
async def _get_load(targets: list[str], token: str, clients: int, seconds: float) -> Load:
    """GetService from ``clients`` tasks, spread evenly over ``targets`` (one channel per target)."""
    md = (("authorization", f"Bearer {token}"),)
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    try:
        stubs = [service_pb2_grpc.ServiceServiceStub(ch) for ch in channels]
        req = service_pb2.GetServiceRequest(name="svc-0", namespace="default")

        def caller(stub: service_pb2_grpc.ServiceServiceStub) -> Callable[[], Awaitable[object]]:
            async def call() -> object:
                return await stub.GetService(req, metadata=md)

            return call

        share = clients // len(stubs)
        loads = await asyncio.gather(*(drive(caller(stub), seconds, concurrency=share) for stub in stubs))
    finally:
        for ch in channels:
            await ch.close()
    return Load(sum(x.calls for x in loads), max(x.seconds for x in loads), [lat for x in loads for lat in x.latencies])


def _merged(loads: list[Load]) -> Load:
    """Rounds taken one after another, as one measurement."""
    return Load(sum(x.calls for x in loads), sum(x.seconds for x in loads), [t for x in loads for t in x.latencies])


# -- write -> watch latency ---------------------------------------------------------------------
async def _watch_latency(writer: str, watcher: str, token: str, n: int) -> Load:
    """Sequential CreateService on ``writer``; each one's ADDED event awaited on a stream from ``watcher``."""
    md = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(writer) as wch, grpc.aio.insecure_channel(watcher) as rch:
        write = service_pb2_grpc.ServiceServiceStub(wch)
        rev = (await write.ListServices(service_pb2.ListServicesRequest(namespace="default"), metadata=md)).revision
        stream = service_pb2_grpc.ServiceServiceStub(rch).WatchServices(
            service_pb2.WatchServicesRequest(namespace="default", since_revision=max(rev, 1)), metadata=md
        )
        prefix = uuid.uuid4().hex[:6]
        latencies: list[float] = []
        t_all = time.perf_counter()
        try:
            for i in range(n):
                name = f"w{prefix}-{i}"
                t0 = time.perf_counter()
                await write.CreateService(service_pb2.CreateServiceRequest(service=_service(name)), metadata=md)
                async for ev in stream:
                    if ev.service.name == name:
                        latencies.append(time.perf_counter() - t0)
                        break
        finally:
            stream.cancel()
        return Load(len(latencies), time.perf_counter() - t_all, latencies)


# -- takeover -----------------------------------------------------------------------------------
def _leads(r: Runed) -> bool:
    return r.ready() and r.address("controller") == "controller"


def _takeovers(runeds: Runeds, tmp: Path, url: str, keys_from: Path, runs: int) -> list[float]:
    """Kill -9 the leading controller ``runs`` times; each time the seconds until the standby leads."""
    hosts = [_start(runeds, tmp / f"ctl{i}", f"127.0.0.{4 + i}", url, "controller", keys_from) for i in (0, 1)]
    out: list[float] = []
    for run in range(runs):
        while not any(_leads(h) for h in hosts):
            time.sleep(0.02)
        leader = next(h for h in hosts if _leads(h))
        standby = next(h for h in hosts if h is not leader)
        assert leader.proc is not None
        t0 = time.monotonic()
        os.killpg(leader.proc.pid, signal.SIGKILL)
        while not _leads(standby):
            if time.monotonic() - t0 > 10 * LEASE_SECONDS:
                raise RuntimeError(f"no takeover within {10 * LEASE_SECONDS}s:\n{standby.output()}")
            time.sleep(0.01)
        out.append(time.monotonic() - t0)
        leader.stop()
        if run < runs - 1:
            # The killed host comes back as the standby of the next run.
            hosts[hosts.index(leader)] = _start(runeds, leader.data_dir, "127.0.0.9", url, "controller", None)
    return out


def run(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="bench cluster")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=setting("BENCH_SECONDS", 5.0))
    p.add_argument("--writes", type=int, default=100)
    p.add_argument("--takeovers", type=int, default=3)
    opts = p.parse_args(argv)
    import uvloop

    uvloop.install()
    with database() as url, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        runeds = Runeds()
        try:
            a = _start(runeds, tmp / "a", "127.0.0.2", url, "grpc", None)
            b = _start(runeds, tmp / "b", "127.0.0.3", url, "grpc", a.data_dir)
            token = bootstrap_token(a.grpc_target)
            with grpc.insecure_channel(a.grpc_target) as ch:
                req = service_pb2.CreateServiceRequest(service=_service("svc-0"))
                service_pb2_grpc.ServiceServiceStub(ch).CreateService(
                    req, metadata=(("authorization", f"Bearer {token}"),)
                )
            # Alternated rounds: a machine whose load drifts (other work on it) skews both alike.
            ones, twos = [], []
            for _ in range(ROUNDS):
                ones.append(asyncio.run(_get_load([a.grpc_target], token, opts.clients, opts.seconds)))
                twos.append(asyncio.run(_get_load([a.grpc_target, b.grpc_target], token, opts.clients, opts.seconds)))
            one, two = _merged(ones), _merged(twos)
            same = asyncio.run(_watch_latency(a.grpc_target, a.grpc_target, token, opts.writes))
            cross = asyncio.run(_watch_latency(a.grpc_target, b.grpc_target, token, opts.writes))
            takeovers = sorted(_takeovers(runeds, tmp, url, a.data_dir, opts.takeovers))
        finally:
            runeds.close()
    print(f"GetService, {opts.clients} clients, PostgreSQL store")
    print(one.line("  one API host"))
    print(two.line("  two API hosts (same machine)"))
    print(f"  ratio two/one throughput: {two.rate / one.rate:.2f}   p99 x{two.pct(99) / one.pct(99):.2f}")
    print(f"write -> watch event, {opts.writes} sequential CreateService")
    print(f"  same host        p50 {same.pct(50):7.2f} ms   p99 {same.pct(99):7.2f} ms")
    print(f"  across hosts     p50 {cross.pct(50):7.2f} ms   p99 {cross.pct(99):7.2f} ms")
    print(f"  ratio across/same: p50 x{cross.pct(50) / same.pct(50):.2f}   p99 x{cross.pct(99) / same.pct(99):.2f}")
    p50 = takeovers[len(takeovers) // 2]
    print(f"controller takeover after kill -9 (lease {LEASE_SECONDS:g} s), {len(takeovers)} runs")
    print(
        f"  seconds: {' '.join(f'{t:.2f}' for t in takeovers)}   p50 {p50:.2f} s = {p50 / LEASE_SECONDS:.2f}x the lease"
    )


if __name__ == "__main__":
    run(sys.argv[1:])
