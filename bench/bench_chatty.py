"""Chatty instances: the keeper's CPU while N instances write lines, against the instances' own CPU.

N (1,000; ``--n`` to change it) instances of a bash loop that writes a line and waits 0.1 s with a
shell builtin (no process per line), under a keeper per service (the default). Once they all run and
``SETTLE_SECONDS`` have passed, over ``BENCH_CHATTY_SECONDS`` (10): the CPU of the keeper (which
reads each line, stamps it and appends it to the instance's log), of runed's processes, and of the
instances themselves (writing the lines and waiting); and the lines the logs gained. The ratio is
the keeper's CPU over the instances' own: what capturing a line costs next to writing it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.bench_scale import Api, cast_running, delete_gone, instance_pids, runed_pids, thread_cpu
from bench.common import bootstrap_token, count, setting
from runed.logs import files
from tests.harness import run_runed

PROGRAM = ["/bin/bash", "-c", "exec 3<> <(:); while :; do echo a line of chatter; read -t 0.1 -u 3; done"]
SECONDS = setting("BENCH_CHATTY_SECONDS", 10.0)
SETTLE_SECONDS = 5.0


def _lines(data_dir: Path) -> int:
    """Lines in the instances' logs (each log's last sequence number; a log starts at 1)."""
    return sum(max(0, files.last_seq(d)) for d in (data_dir / "instances").iterdir() if d.is_dir())


def measure(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        env = {"RUNE_AUTH_RATE_LIMIT_REQUESTS_PER_SECOND": "0", "RUNE_LIMITS_MAX_SCALE": str(max(n, 1000))}
        with run_runed(data, args=["--log-level", "warning"], env=env, timeout=60) as r:
            api = Api(r.channel(), [("authorization", f"Bearer {bootstrap_token(r.grpc_target)}")])
            cast_running(api, "chatty", PROGRAM, n)
            time.sleep(SETTLE_SECONDS)
            shims, insts = instance_pids(data)
            pids = runed_pids(r)
            pids.update(("keeper", p) for p, _ in shims)
            before = {k: thread_cpu(p) for k, p in pids.items()}
            own, lines, t0 = sum(thread_cpu(p) for p, _ in insts), _lines(data), time.monotonic()
            time.sleep(SECONDS)
            took = time.monotonic() - t0
            out = {k: (thread_cpu(p) - before[k]) / took for k, p in pids.items()}
            out["instances"] = (sum(thread_cpu(p) for p, _ in insts) - own) / took
            out["lines/s"] = (_lines(data) - lines) / took
            delete_gone(api, "chatty", data)
    return out


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench chatty")
    parser.add_argument("--n", type=count, default=1000, help="instances (default 1,000)")
    n = parser.parse_args(argv or []).n
    got = measure(n)
    rest = ", ".join(f"{k} {v * 100:.1f} %" for k, v in got.items() if k not in ("keeper", "instances", "lines/s"))
    print(f"   {n} instances writing {got['lines/s']:.0f} lines/s in all, over {SECONDS:g} s (% of a core):")
    print(f"     the instances themselves    {got['instances'] * 100:6.1f} %   (baseline)")
    print(
        f"     their keeper                {got['keeper'] * 100:6.1f} %   ratio {got['keeper'] / got['instances']:.2f}"
    )
    print(f"     runed's processes           {rest}")
