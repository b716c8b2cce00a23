"""Authenticated vs unauthenticated unary calls/s: the cost of authentication and RBAC, same run.

Baseline (honest, like for like): the same WhoAmI handler run through the same pipeline in one
process, once with its real RBAC entry (bearer token -> keyed hash -> indexed token lookup ->
user -> policies -> rule evaluation) and once routed as a public method (authentication and
authorization skipped, everything else identical). Over the wire, an authenticated WhoAmI on a
real runed is compared with the pipeline-free bare grpc.aio echo for scale. Rate limiting is
turned off for both (it would otherwise be what is measured).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import tempfile
from pathlib import Path

import grpc
import uvloop

from bench.common import Load, bootstrap_token, drive, running_runed, setting
from rune.api import auth_pb2, auth_pb2_grpc
from runed.auth import rbac
from runed.core import config
from runed.pipeline.context import CallContext
from runed.pipeline.methods import all_methods
from runed.server.components import build

SECONDS = setting("BENCH_SECONDS", 5.0)
WHOAMI = "/rune.api.AuthService/WhoAmI"
ROUNDS = 5


async def _in_process(data_dir: Path) -> tuple[Load, Load]:
    cfg = config.load({"data_dir": str(data_dir)}, env={"RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "0"})
    components = build(cfg)
    pipeline = components.pipeline
    try:
        token = components.deps.identity.bootstrap().secret
        method = next(m for m in all_methods() if m.full_name == WHOAMI)
        route = pipeline.routes[WHOAMI]
        public = dataclasses.replace(route, access=rbac.PUBLIC)
        req = auth_pb2.WhoAmIRequest()
        md = {"authorization": f"Bearer {token}"}

        async def authed() -> object:
            return await pipeline.unary(CallContext(components.deps, method, "bench", md, "127.0.0.1"), req)

        async def anonymous() -> object:
            return await pipeline.unary(CallContext(components.deps, method, "bench", {}, "127.0.0.1"), req)

        # Alternate short rounds and keep each side's best: other load on the box hits both alike.
        rounds: dict[str, list[Load]] = {"authed": [], "anonymous": []}
        for _ in range(ROUNDS):
            pipeline.routes[WHOAMI] = route
            rounds["authed"].append(await drive(authed, SECONDS / ROUNDS, concurrency=1))
            pipeline.routes[WHOAMI] = public
            rounds["anonymous"].append(await drive(anonymous, SECONDS / ROUNDS, concurrency=1))
        pipeline.routes[WHOAMI] = route
        with_auth = max(rounds["authed"], key=lambda x: x.rate)
        without = max(rounds["anonymous"], key=lambda x: x.rate)
        return with_auth, without
    finally:
        components.close()


async def _wire(target: str, token: str) -> Load:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = auth_pb2_grpc.AuthServiceStub(ch)
        md = (("authorization", f"Bearer {token}"),)
        req = auth_pb2.WhoAmIRequest()
        return await drive(lambda: stub.WhoAmI(req, metadata=md), SECONDS)


def run() -> None:
    uvloop.install()
    with tempfile.TemporaryDirectory() as tmp:
        authed, anonymous = asyncio.run(_in_process(Path(tmp)))
    os.environ["RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND"] = "0"
    try:
        with running_runed() as addrs:
            token = bootstrap_token(addrs["grpc"])
            wire = asyncio.run(_wire(addrs["grpc"], token))
    finally:
        os.environ.pop("RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND", None)
    per_call_us = (1 / authed.rate - 1 / anonymous.rate) * 1e6
    print(anonymous.line("pipeline WhoAmI, unauthenticated"))
    print(authed.line("pipeline WhoAmI, token + RBAC"))
    print(wire.line("gRPC WhoAmI, token + RBAC (8 conc.)"))
    print(
        f"ratio authenticated/unauthenticated throughput: {authed.rate / anonymous.rate:.2f}   "
        f"(authn+authz add {per_call_us:.0f} us per call)"
    )
