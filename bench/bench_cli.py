"""Wall time of `rune get services` against `buf curl` and a bare Python gRPC client, same runed, same run.

Each figure is the median wall time of a fresh process doing one ListServices call (10 services in
the namespace), start-up included, because that is what a person at a shell waits for. The bare
baseline is the least a Python client can do: import grpc and the generated module, one call, exit.
buf (npm @bufbuild/buf) is installed into a temporary directory for the run; when it cannot be
installed the output says so and only the Python baseline is compared.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import bootstrap_token, running_runed, setting

RUNS = setting("BENCH_CLI_RUNS", 10)
BARE = """
import sys, grpc
from rune.api import service_pb2, service_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as ch:
    r = service_pb2_grpc.ServiceServiceStub(ch).ListServices(
        service_pb2.ListServicesRequest(namespace="default"), metadata=[("authorization", "Bearer " + sys.argv[2])])
print(len(r.services))
"""


def _median_wall(cmd: list[str], env: dict[str, str]) -> float:
    times = []
    for _ in range(RUNS):
        t0 = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=60)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _install_buf(prefix: Path) -> Path | None:
    npm = shutil.which("npm")
    if npm is None:
        return None
    try:
        subprocess.run(
            [npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(prefix), "@bufbuild/buf"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    buf = prefix / "node_modules" / ".bin" / "buf"
    return buf if buf.exists() else None


def _seed(target: str, token: str) -> None:
    import grpc

    from rune.api import common_pb2, service_pb2, service_pb2_grpc

    with grpc.insecure_channel(target) as ch:
        stub = service_pb2_grpc.ServiceServiceStub(ch)
        for i in range(10):
            svc = service_pb2.Service(
                name=f"svc-{i}", runtime="process", scale=0, process=common_pb2.ProcessSpec(command="sleep", args=["1"])
            )
            stub.CreateService(
                service_pb2.CreateServiceRequest(service=svc), metadata=[("authorization", f"Bearer {token}")]
            )


def run() -> None:
    rune = Path(sys.executable).parent / "rune"
    rune_cmd = [str(rune)] if rune.exists() else [sys.executable, "-m", "rune.cli"]
    with tempfile.TemporaryDirectory() as tmp, running_runed() as addrs:
        target = addrs["grpc"]
        token = bootstrap_token(target)
        _seed(target, token)
        env = dict(os.environ, RUNE_SERVER=target, RUNE_TOKEN=token, RUNE_CLI_CONFIG=str(Path(tmp) / "none.yaml"))
        bare = _median_wall([sys.executable, "-c", BARE, target, token], env)
        cli = _median_wall([*rune_cmd, "get", "services"], env)
        print(f"   bare python grpc client:  {bare * 1000:7.1f} ms  (baseline 1.00)")
        print(f"   rune get services:        {cli * 1000:7.1f} ms  ({cli / bare:.2f}x baseline)")
        buf = _install_buf(Path(tmp) / "buf")
        if buf is None:
            print("   buf curl: @bufbuild/buf could not be installed with npm; compared with the Python baseline only")
            return
        url = f"http://{target}/rune.api.ServiceService/ListServices"
        auth = f"authorization: Bearer {token}"
        buf_cmd = [str(buf), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "-H", auth]
        buf_cmd += ["--reflect-header", auth, "-d", '{"namespace": "default"}', url]
        probe = subprocess.run(buf_cmd, env=env, capture_output=True, text=True, timeout=60)
        if probe.returncode != 0:
            print(f"   buf curl failed ({probe.stderr.strip()[:200]}); compared with the Python baseline only")
            return
        buf_time = _median_wall(buf_cmd, env)
        print(f"   buf curl (reflection):    {buf_time * 1000:7.1f} ms  ({buf_time / bare:.2f}x baseline)")
        print(f"   rune / buf curl:          {cli / buf_time:.2f}")
