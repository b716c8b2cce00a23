"""PostgreSQL vs SQLite store, same run: GetService and CreateSecret calls/s and p99 with 64 gRPC clients.

One grpc role on a SQLite store, one on a SQLite store with ``store.sqlite_synchronous: full`` (each
commit synced) and one on a PostgreSQL database (its own, dropped after), all on this machine. Each
round drives ``--clients`` concurrent clients for ``--seconds`` against each store in turn (the
order flips every round, so load drift on the machine skews them alike); GetService reads one
service, CreateSecret writes a secret of a new name per call. The figures are ratios
PostgreSQL/SQLite and SQLite full/normal over all rounds.

Needs a PostgreSQL server (``RUNE_TEST_PG_URL``, default postgresql://postgres@127.0.0.1:5432/test).
``python -m bench stores --clients 64 --seconds 3 --rounds 3``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from bench.bench_cluster import _merged, _service, _start
from bench.common import Load, bootstrap_token, drive, setting
from rune.api import secret_pb2, secret_pb2_grpc, service_pb2, service_pb2_grpc
from tests.harness import Runeds
from tests.pgsupport import fresh_database

Call = Callable[[], Awaitable[object]]


async def _load(target: str, token: str, method: str, clients: int, seconds: float) -> Load:
    """``method`` (GetService or CreateSecret) from ``clients`` tasks on one channel to ``target``."""
    md = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(target) as ch:
        services = service_pb2_grpc.ServiceServiceStub(ch)
        secrets = secret_pb2_grpc.SecretServiceStub(ch)
        get = service_pb2.GetServiceRequest(name="svc-0", namespace="default")
        names = (f"s{uuid.uuid4().hex[:8]}-{i}" for i in itertools.count())

        async def get_service() -> object:
            return await services.GetService(get, metadata=md)

        async def create_secret() -> object:
            secret = secret_pb2.Secret(name=next(names), namespace="default", data={"k": "v"})
            return await secrets.CreateSecret(secret_pb2.CreateSecretRequest(secret=secret), metadata=md)

        call: Call = get_service if method == "GetService" else create_secret
        return await drive(call, seconds, concurrency=clients)


def run(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="bench stores")
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=setting("BENCH_SECONDS", 3.0))
    p.add_argument("--rounds", type=int, default=3)
    opts = p.parse_args(argv)
    import uvloop

    uvloop.install()
    methods = ("GetService", "CreateSecret")
    stores = ("SQLite", "SQLite full", "PostgreSQL")
    loads: dict[tuple[str, str], list[Load]] = {(s, m): [] for s in stores for m in methods}
    with fresh_database() as pg_url, tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        dirs = {s: tmp / s.lower().replace(" ", "-") for s in stores}
        urls = {s: f"sqlite://{dirs[s] / 'runed.db'}" for s in stores if s.startswith("SQLite")}
        urls["PostgreSQL"] = pg_url
        # store.sqlite_synchronous = full: each commit synced (power-loss safe), against the default normal.
        extra = {"SQLite full": {"RUNE_STORE_SQLITE_SYNCHRONOUS": "full"}}
        runeds = Runeds()
        try:
            hosts = {s: _start(runeds, dirs[s], "127.0.0.1", urls[s], "grpc", None, extra.get(s)) for s in stores}
            tokens = {s: bootstrap_token(h.grpc_target) for s, h in hosts.items()}
            for s, h in hosts.items():
                with grpc.insecure_channel(h.grpc_target) as ch:
                    service_pb2_grpc.ServiceServiceStub(ch).CreateService(
                        service_pb2.CreateServiceRequest(service=_service("svc-0")),
                        metadata=(("authorization", f"Bearer {tokens[s]}"),),
                    )
            for r in range(opts.rounds):
                for s in stores if r % 2 == 0 else stores[::-1]:
                    for m in methods:
                        load = _load(hosts[s].grpc_target, tokens[s], m, opts.clients, opts.seconds)
                        loads[s, m].append(asyncio.run(load))
        finally:
            runeds.close()
    print(f"{opts.clients} gRPC clients, grpc role alone, {opts.rounds} alternated rounds of {opts.seconds:g} s")
    for m in methods:
        sq, full, pg = (_merged(loads[s, m]) for s in stores)
        print(m)
        print(sq.line("  SQLite"))
        print(full.line("  SQLite full"))
        print(pg.line("  PostgreSQL"))
        print(f"  ratio PostgreSQL/SQLite: throughput {pg.rate / sq.rate:.2f}   p99 x{pg.pct(99) / sq.pct(99):.2f}")
        print(
            f"  ratio SQLite full/normal: throughput {full.rate / sq.rate:.2f}   p99 x{full.pct(99) / sq.pct(99):.2f}"
        )


if __name__ == "__main__":
    run(sys.argv[1:])
