"""Shared bench helpers: start a real runed, drive gRPC load, report percentiles."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Load:
    calls: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.calls / self.seconds

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] * 1000 if xs else float("nan")

    def line(self, label: str) -> str:
        return f"{label:<34} {self.rate:9.0f} calls/s   p50 {self.pct(50):6.2f} ms   p99 {self.pct(99):6.2f} ms"


async def drive(call: Callable[[], Awaitable[object]], seconds: float, concurrency: int = 8) -> Load:
    """Run ``call`` from ``concurrency`` tasks for ``seconds`` (after a short warm-up)."""
    for _ in range(50):
        await call()
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Load(len(latencies), time.perf_counter() - t0, latencies)


@contextmanager
def running_runed(*extra: str, log_level: str = "warning") -> Iterator[dict[str, str]]:
    """A real runed (all default roles) on free ports with a temporary data dir."""
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        log = open(Path(tmp) / "runed.server.logging", "wb")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runed",
                "--data-dir",
                str(data),
                "--grpc-addr",
                "127.0.0.1:0",
                "--http-addr",
                "127.0.0.1:0",
                "--log-level",
                log_level,
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Benchmarks measure throughput, not the per-token rate limit.
            env={**os.environ, "RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "0"},
        )
        try:
            deadline = time.monotonic() + 60
            while "runed ready:" not in (Path(tmp) / "runed.server.logging").read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((Path(tmp) / "runed.server.logging").read_text(errors="replace"))
                time.sleep(0.05)
            addrs = {p.stem: json.loads(p.read_text())["address"] for p in (data / "run").glob("*.json")}
            addrs["data_dir"] = str(data)
            yield addrs
        finally:
            with_suppress_kill(proc)
            log.close()


def with_suppress_kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def bootstrap_token(grpc_target: str) -> str:
    import grpc

    from rune.api import admin_pb2, admin_pb2_grpc

    with grpc.insecure_channel(grpc_target) as ch:
        resp = admin_pb2_grpc.AdminServiceStub(ch).AdminBootstrap(admin_pb2.AdminBootstrapRequest())
    return str(resp.token_secret)
