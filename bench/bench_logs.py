"""Log lines/s from a chatty cast process to gRPC and SSE followers, and write-to-receive latency, vs a file tail."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import grpc
import httpx

from bench.common import CLK_TCK, bootstrap_token, cpu_ticks, running_runed, setting, with_suppress_kill
from rune.api import common_pb2, logs_pb2, logs_pb2_grpc, service_pb2, service_pb2_grpc
from runed.store.sqlite import SQLiteStore

SECONDS = setting("BENCH_SECONDS", 4.0)
# max_batch of the batched followers (what ``rune logs`` asks for).
BATCH = 500

# Each line carries the time it was written, so receivers can measure latency.
CHATTY = textwrap.dedent(
    """
    import sys, time
    pause = float(sys.argv[1])
    i = 0
    while True:
        print(time.time_ns(), i, "payload" * 4, flush=True)
        i += 1
        if pause:
            time.sleep(pause)
    """
)

# A bare grpc.aio server streaming one prebuilt LogResponse forever: the transport's own ceiling.
BARE_STREAM = textwrap.dedent(
    """
    import asyncio, sys, grpc, uvloop
    from rune.api import logs_pb2
    M = logs_pb2.LogResponse(service_name="chatty", instance_id="x" * 36, instance_name="chatty-0",
        timestamp="2026-01-01T00:00:00.000000000Z", content="0 0 " + "payload" * 4, stream="stdout",
        log_level="info", cursor="v1;" + "x" * 36 + "=1", seq=1)
    async def handler(reqs, ctx):
        await anext(reqs)
        while True:
            yield M
    async def main():
        server = grpc.aio.server()
        h = grpc.stream_stream_rpc_method_handler(handler, request_deserializer=logs_pb2.LogRequest.FromString,
            response_serializer=logs_pb2.LogResponse.SerializeToString)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Logs", {"S": h})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(port, flush=True)
        await server.wait_for_termination()
    uvloop.install()
    asyncio.run(main())
    """
)

# (lines received, latencies in seconds) after running for SECONDS
Result = tuple[int, list[float]]


def _latency(content: str, now_ns: int, out: list[float]) -> None:
    head = content.split(" ", 1)[0]
    if head.isdigit():
        out.append((now_ns - int(head)) / 1e9)


def _until(deadline: float, lines: Iterator[str]) -> Result:
    """Count lines and latencies until ``deadline``; the first (history) line of a follower is skipped."""
    n = 0
    lat: list[float] = []
    next(lines)
    for content in lines:
        n += 1
        _latency(content, time.time_ns(), lat)
        if time.monotonic() >= deadline:
            break
    return n, lat


def follow_file(log_dir: Path, seconds: float) -> Result:
    """The bare baseline: tail log.jsonl directly (1 ms polling), parsing each JSON line."""

    def lines() -> Iterator[str]:
        path = log_dir / "log.jsonl"
        f = open(path, "rb")
        f.seek(0, os.SEEK_END)
        ino = os.fstat(f.fileno()).st_ino
        buf = b""
        yield ""  # stands for the followers' one history line
        while True:
            chunk = f.read(65536)
            if chunk:
                buf += chunk
                *complete, buf = buf.split(b"\n")
                for raw in complete:
                    try:
                        line = json.loads(raw)["line"]
                    except ValueError:
                        continue  # the first read may start in the middle of a line being written
                    yield line
                continue
            try:
                if os.stat(path).st_ino != ino:
                    f.close()
                    f = open(path, "rb")
                    ino = os.fstat(f.fileno()).st_ino
                    continue
            except FileNotFoundError:
                pass
            time.sleep(0.001)

    return _until(time.monotonic() + seconds, lines())


def follow_grpc(target: str, token: str, seconds: float, max_batch: int = 0) -> Result:
    """A grpc.aio client (the sync client's per-message thread hand-off would be what is measured).

    ``max_batch`` > 1 asks for batches of lines, as ``rune logs`` does.
    """

    async def main() -> Result:
        async with grpc.aio.insecure_channel(target) as ch:
            stub = logs_pb2_grpc.LogServiceStub(ch)
            call = stub.StreamLogs(metadata=[("authorization", f"Bearer {token}")])
            req = logs_pb2.LogRequest(resource_target="service/chatty", follow=True, tail=1, max_batch=max_batch)
            await call.write(req)
            deadline = time.monotonic() + seconds
            n = -1
            lat: list[float] = []
            try:
                async for r in call:
                    now = time.time_ns()
                    for line in r.lines or (r,):
                        n += 1
                        if n:
                            _latency(line.content, now, lat)
                    if time.monotonic() >= deadline:
                        break
            finally:
                call.cancel()
            return n, lat

    return asyncio.run(main())


def follow_sse(base: str, token: str, seconds: float, max_batch: int = 0) -> Result:
    """An SSE client: one event per line, or (``max_batch`` > 1) one event per batch of lines."""

    def lines(r: httpx.Response) -> Iterator[str]:
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = json.loads(line[6:])
                for one in data.get("lines") or (data,):
                    yield one["content"]

    params = {"follow": "true", "tail": "1"}
    if max_batch:
        params["max_batch"] = str(max_batch)
    with httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}, timeout=30) as c:
        with c.stream("GET", "/v1/namespaces/default/logs/chatty", params=params) as r:
            return _until(time.monotonic() + seconds, lines(r))


def bare_grpc_stream(seconds: float) -> float:
    """Messages/s a grpc.aio client receives from a server that does nothing but yield."""
    proc = subprocess.Popen([sys.executable, "-c", BARE_STREAM], stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())

        async def main() -> float:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                call = ch.stream_stream(
                    "/bench.Logs/S",
                    request_serializer=logs_pb2.LogRequest.SerializeToString,
                    response_deserializer=logs_pb2.LogResponse.FromString,
                )()
                await call.write(logs_pb2.LogRequest())
                n = 0
                t0 = time.monotonic()
                async for _ in call:
                    n += 1
                    if time.monotonic() - t0 >= seconds:
                        break
                call.cancel()
                return n / (time.monotonic() - t0)

        return asyncio.run(main())
    finally:
        with_suppress_kill(proc)


def follow_events(target: str, token: str, seconds: float) -> int:
    """A follower of the lifecycle events alone (``stream: "event"``, as ``rune events -f``): how
    many it got (none, unless the instance restarts meanwhile)."""

    async def main() -> int:
        async with grpc.aio.insecure_channel(target) as ch:
            stub = logs_pb2_grpc.LogServiceStub(ch)
            call = stub.StreamLogs(metadata=[("authorization", f"Bearer {token}")])
            await call.write(logs_pb2.LogRequest(resource_target="service/chatty", follow=True, stream="event"))
            n = 0

            async def read() -> None:
                nonlocal n
                async for r in call:
                    n += len(r.lines) or 1

            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(read(), seconds)
            call.cancel()
            return n

    return asyncio.run(main())


def role_cpu(data_dir: Path, role: str) -> float:
    """CPU seconds ``role``'s process has spent (its pid from the data dir's run marker)."""
    pid = json.loads((data_dir / "run" / f"{role}.json").read_text())["pid"]
    return cpu_ticks(int(pid)) / CLK_TCK


def events_follower_cost(addrs: dict[str, str], token: str, seconds: float) -> tuple[float, float]:
    """The gRPC role's CPU (share of a core) over ``seconds`` beside the chatty writer: with no
    follower (the baseline, same writer, same run), then with an events-only follower."""
    data = Path(addrs["data_dir"])
    t0, c0 = time.monotonic(), role_cpu(data, "grpc")
    time.sleep(seconds)
    idle = (role_cpu(data, "grpc") - c0) / (time.monotonic() - t0)
    t0, c0 = time.monotonic(), role_cpu(data, "grpc")
    follow_events(addrs["grpc"], token, seconds)
    return idle, (role_cpu(data, "grpc") - c0) / (time.monotonic() - t0)


def _cast(addrs: dict[str, str], token: str, script: Path, pause: float) -> Path:
    md = [("authorization", f"Bearer {token}")]
    with grpc.insecure_channel(addrs["grpc"]) as ch:
        stub = service_pb2_grpc.ServiceServiceStub(ch)
        svc = service_pb2.Service(
            name="chatty",
            namespace="default",
            scale=1,
            runtime="process",
            process=common_pb2.ProcessSpec(command=sys.executable, args=[str(script), str(pause)]),
        )
        stub.CreateService(service_pb2.CreateServiceRequest(service=svc), metadata=md)
    store = SQLiteStore(Path(addrs["data_dir"]) / "runed.db", notify=False)
    try:
        deadline = time.monotonic() + 60
        states: list[object] = []
        while time.monotonic() < deadline:
            states = [r.data.get("state") for r in store.list("instance", "default").items]
            recs = [r for r in store.list("instance", "default").items if r.data.get("state") == "RUNNING"]
            if recs and (Path(recs[0].data["log_dir"]) / "log.jsonl").exists():
                return Path(recs[0].data["log_dir"])
            time.sleep(0.05)
    finally:
        store.close()
    raise RuntimeError(f"chatty did not start (instance states: {states})")


def _delete(addrs: dict[str, str], token: str) -> None:
    md = [("authorization", f"Bearer {token}")]
    with grpc.insecure_channel(addrs["grpc"]) as ch:
        stub = service_pb2_grpc.ServiceServiceStub(ch)
        stub.DeleteService(service_pb2.DeleteServiceRequest(name="chatty", namespace="default", now=True), metadata=md)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                stub.GetService(service_pb2.GetServiceRequest(name="chatty", namespace="default"), metadata=md)
            except grpc.RpcError:
                return
            time.sleep(0.1)


def _pct(xs: list[float], p: float) -> float:
    ys = sorted(xs)
    return ys[min(len(ys) - 1, int(p / 100 * len(ys)))] * 1000 if ys else float("nan")


def run() -> None:
    script = Path(tempfile.mkdtemp()) / "chatty.py"
    script.write_text(CHATTY)
    with running_runed() as addrs:
        token = bootstrap_token(addrs["grpc"])
        base = "http://" + addrs["rest"]
        followers: list[tuple[str, Callable[[Path], Result]]] = [
            ("bare: tail log.jsonl", lambda d: follow_file(d, SECONDS)),
            ("gRPC follower, one line/msg", lambda d: follow_grpc(addrs["grpc"], token, SECONDS)),
            ("gRPC follower, batched", lambda d: follow_grpc(addrs["grpc"], token, SECONDS, BATCH)),
            ("SSE follower, line events", lambda d: follow_sse(base, token, SECONDS)),
            ("SSE follower, batched", lambda d: follow_sse(base, token, SECONDS, BATCH)),
        ]
        # Each follower runs beside a file tail of the same writer in another process, over the same
        # window: the ratio says whether it keeps up with what the file offers at that moment, however
        # loaded the machine is (sequential phases charged the load's drift to whichever ran later).
        with ProcessPoolExecutor(1) as pool:
            pool.submit(int).result()
            for title, pause in (
                ("unthrottled writer: throughput", 0.0),
                ("paced writer (200 lines/s): latency", 0.005),
            ):
                log_dir = _cast(addrs, token, script, pause)
                print(f"   {title}")
                for label, fn in followers:
                    tail = pool.submit(follow_file, log_dir, SECONDS)
                    n, lat = fn(log_dir)
                    tn, tlat = tail.result()
                    rate, tail_rate = n / SECONDS, tn / SECONDS
                    print(
                        f"   {label:<28} {rate:9.0f} lines/s (x{rate / max(tail_rate, 1):4.2f} of the tail beside it)"
                        f"   write->receive p50 {_pct(lat, 50):7.2f} ms   p99 {_pct(lat, 99):7.2f} ms"
                        f"   (tail: {tail_rate:6.0f}/s, p50 {_pct(tlat, 50):6.2f} ms, p99 {_pct(tlat, 99):7.2f} ms)"
                    )
                if not pause:
                    idle, events = events_follower_cost(addrs, token, SECONDS)
                    print(
                        f"   {'events-only follower':<28} the gRPC role's CPU {events * 100:5.1f}% of a core, "
                        f"{idle * 100:5.1f}% with no follower ({(events - idle) * 100:+.1f} points; "
                        "the output it is not sent should not be read)"
                    )
                _delete(addrs, token)
    ceiling = bare_grpc_stream(SECONDS)
    print(f"   context: a bare grpc.aio stream (server only yields) delivers {ceiling:9.0f} messages/s here")
