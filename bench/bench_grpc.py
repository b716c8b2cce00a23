"""Unary gRPC calls/s and p50/p99 of a cheap RPC (WhoAmI) through runed's full pipeline vs a bare grpc.aio echo."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import uvloop

from bench.common import Load, bootstrap_token, drive, running_runed, setting, with_suppress_kill
from rune.api import auth_pb2, auth_pb2_grpc

SECONDS = setting("BENCH_SECONDS", 5.0)


def _start_echo() -> tuple[subprocess.Popen[bytes], str]:
    port_file = Path(tempfile.mkdtemp()) / "port"
    proc = subprocess.Popen([sys.executable, "-m", "bench.echo_server", str(port_file)], start_new_session=True)
    deadline = time.monotonic() + 20
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError("echo server did not start")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{port_file.read_text()}"


async def _bare(target: str) -> Load:
    async with grpc.aio.insecure_channel(target) as ch:
        echo = ch.unary_unary("/bench.Echo/Echo")
        payload = b"x" * 16
        return await drive(lambda: echo(payload), SECONDS)


async def _runed(target: str, token: str) -> Load:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = auth_pb2_grpc.AuthServiceStub(ch)
        md = (("authorization", f"Bearer {token}"),)
        req = auth_pb2.WhoAmIRequest()
        return await drive(lambda: stub.WhoAmI(req, metadata=md), SECONDS)


def run() -> None:
    uvloop.install()
    echo, echo_target = _start_echo()
    try:
        bare = asyncio.run(_bare(echo_target))
    finally:
        with_suppress_kill(echo)
    with running_runed() as addrs:
        token = bootstrap_token(addrs["grpc"])
        full = asyncio.run(_runed(addrs["grpc"], token))
    print(bare.line("bare grpc.aio echo (uvloop)"))
    print(full.line("runed WhoAmI (authn+rbac+handler)"))
    print(f"ratio runed/bare throughput: {full.rate / bare.rate:.2f}   p50 latency x{full.pct(50) / bare.pct(50):.2f}")
