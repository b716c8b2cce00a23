"""Shared bench helpers: start a real runed (through tests.harness), drive gRPC load, report percentiles.

The bench runs from a checkout (``python -m bench`` from the repository root), so ``tests.harness``
imports here as it does in the tests: one way to start and reap a runed for both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.harness import run_runed

Number = TypeVar("Number", int, float)


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (0 when gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def setting(name: str, default: Number) -> Number:
    """The positive number the environment variable ``name`` sets (``default`` unset), of
    ``default``'s type; a value that is none ends the benchmark with a line naming the variable."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = _positive(raw, default)
    if value is None:
        raise SystemExit(f"{name}: {_expected(default, raw)}")
    return value


def count(text: str) -> int:
    """An argparse type: a whole number above 0, as :func:`setting` takes one."""
    value = _positive(text, 1)
    if value is None:
        raise argparse.ArgumentTypeError(_expected(1, text))
    return value


def _positive(raw: str, like: Number) -> Number | None:
    """``raw`` as a number of ``like``'s type, if it is one above 0."""
    try:
        value = type(like)(raw)
    except ValueError:
        return None
    return value if value > 0 else None


def _expected(like: Number, raw: str) -> str:
    return f"expected {'a whole number' if isinstance(like, int) else 'a number'} above 0, got {raw!r}"


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

    def __add__(self, other: Load) -> Load:
        """Both loads' calls as one sample (rounds of the same call run apart in time)."""
        return Load(self.calls + other.calls, self.seconds + other.seconds, self.latencies + other.latencies)

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
def running_runed(
    *extra: str, log_level: str = "warning", role: str | None = None, data_dir: Path | None = None
) -> Iterator[dict[str, str]]:
    """A real runed on free ports (all roles, or ``role`` alone) with a temporary (or the given) data dir.

    Started and reaped by ``tests.harness.run_runed``, the one way tests start a runed too; yields
    each ready role's address by role name, plus ``data_dir``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        data = data_dir or Path(tmp) / "data"
        # Benchmarks measure throughput, not the per-token rate limit.
        env = {"RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "0"}
        args = ["--log-level", log_level, *extra]
        with run_runed(data, args=args, env=env, role=role, timeout=60) as r:
            yield {**r.addresses(), "data_dir": str(data)}


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
