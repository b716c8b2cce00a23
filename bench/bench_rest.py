"""REST gateway GET calls/s vs a bare Starlette JSON endpoint and vs the same RPC over gRPC, same run.

All three servers run as separate processes on this machine; the load comes from this process over
keep-alive connections (a minimal HTTP/1.1 client, so the client is not what is measured). The
REST call is ``GET /v1/namespaces/default`` (NamespaceService.GetNamespace through the full
pipeline: authentication, RBAC, validation, store read, protojson); the bare endpoint returns a JSON
object of similar size from the same uvicorn set-up (uvloop + httptools); the gRPC figure is the same
RPC with the same token. Bare and REST load alternate in short rounds, so drifting load from
elsewhere on the machine falls on both. Also prints the cost of the JSON conversion on the hot path.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import grpc
import orjson
import uvloop
from google.protobuf import json_format

from bench.common import Load, bootstrap_token, drive, running_runed, setting, with_suppress_kill
from rune.api import namespace_pb2, namespace_pb2_grpc

SECONDS = setting("BENCH_SECONDS", 5.0)
CONNECTIONS = 8
ROUNDS = 5
BARE_BODY = {
    "namespace": {
        "id": "2b9b6a4e-5c1e-4f0e-9d8a-0d9d8f7c6b5a",
        "name": "default",
        "description": "",
        "labels": {},
        "createdAt": "1795459000",
        "updatedAt": "1795459000",
    }
}


def _serve_bare(port_file: str) -> None:
    """The baseline: one Starlette JSON route on uvicorn with uvloop and httptools."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def endpoint(request: Request) -> Response:
        return Response(orjson.dumps(BARE_BODY), media_type="application/json")

    app = Starlette(routes=[Route("/v1/namespaces/{name}", endpoint)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    Path(port_file).write_text(str(sock.getsockname()[1]))
    # The REST role's uvicorn settings, so the difference is the gateway and the pipeline.
    config = uvicorn.Config(
        app,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        server_header=False,
        proxy_headers=False,
    )
    uvicorn.Server(config).run(sockets=[sock])


def _start_bare() -> tuple[subprocess.Popen[bytes], str]:
    port_file = Path(tempfile.mkdtemp()) / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bench_rest", "--serve-bare", str(port_file)], start_new_session=True
    )
    deadline = time.monotonic() + 20
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError("bare starlette server did not start")
        time.sleep(0.05)
    time.sleep(0.3)
    return proc, f"127.0.0.1:{port_file.read_text()}"


async def _http_load(address: str, path: str, headers: dict[str, str], seconds: float) -> Load:
    """GETs over CONNECTIONS keep-alive connections; every response must be a 200."""
    host, _, port = address.rpartition(":")
    head = f"GET {path} HTTP/1.1\r\nhost: {address}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (head + "\r\n").encode()
    latencies: list[float] = []

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(request)
        status_and_headers = await reader.readuntil(b"\r\n\r\n")
        if not status_and_headers.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(status_and_headers.decode(errors="replace"))
        length = 0
        for line in status_and_headers.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)

    async def worker(stop_at: float, record: bool) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await one(reader, writer)
                if record:
                    latencies.append(time.perf_counter() - t0)
        finally:
            writer.close()

    await asyncio.gather(*(worker(time.perf_counter() + 0.2, False) for _ in range(CONNECTIONS)))
    t0 = time.perf_counter()
    await asyncio.gather(*(worker(t0 + seconds, True) for _ in range(CONNECTIONS)))
    return Load(len(latencies), time.perf_counter() - t0, latencies)


async def _grpc_load(target: str, token: str) -> Load:
    async with grpc.aio.insecure_channel(target) as ch:
        stub = namespace_pb2_grpc.NamespaceServiceStub(ch)
        md = (("authorization", f"Bearer {token}"),)
        req = namespace_pb2.GetNamespaceRequest(name="default")
        return await drive(lambda: stub.GetNamespace(req, metadata=md), SECONDS, concurrency=CONNECTIONS)


def _json_costs() -> None:
    """The response/request conversions the gateway does per call, in microseconds."""
    from rune.gateway import codec

    msg = namespace_pb2.GetNamespaceResponse(
        namespace=namespace_pb2.Namespace(id="x" * 36, name="default", labels={"a": "b"}, created_at=1795459000)
    )
    n = 5000
    to_json = timeit.timeit(lambda: json_format.MessageToJson(msg), number=n) / n * 1e6
    dict_orjson = (
        timeit.timeit(
            lambda: orjson.dumps(json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)), number=n
        )
        / n
        * 1e6
    )
    planned = timeit.timeit(lambda: codec.dumps(msg), number=n) / n * 1e6
    parse_dict = (
        timeit.timeit(lambda: json_format.ParseDict({"name": "default"}, namespace_pb2.GetNamespaceRequest()), number=n)
        / n
        * 1e6
    )
    build = (
        timeit.timeit(
            lambda: codec.build_request(namespace_pb2.GetNamespaceRequest, path={"name": "default"}), number=n
        )
        / n
        * 1e6
    )
    print(
        f"   response JSON: MessageToJson {to_json:.1f} us, MessageToDict+orjson {dict_orjson:.1f} us, "
        f"gateway (planned+orjson) {planned:.1f} us -> {dict_orjson / planned:.1f}x MessageToDict+orjson"
    )
    print(
        f"   request binding: ParseDict {parse_dict:.1f} us, gateway path binding {build:.1f} us "
        f"-> {parse_dict / build:.1f}x"
    )


def _add(total: Load, part: Load) -> None:
    total.calls += part.calls
    total.seconds += part.seconds
    total.latencies.extend(part.latencies)


def run() -> None:
    uvloop.install()
    _json_costs()
    bare, bare_addr = _start_bare()
    runefile = Path(tempfile.mkdtemp()) / "runefile.yaml"
    # The per-credential rate limit would otherwise be what we measure.
    runefile.write_text("auth:\n  rate_limit:\n    requests_per_second: 0\n")
    try:
        with running_runed("--config", str(runefile)) as addrs:
            token = bootstrap_token(addrs["grpc"])
            auth = {"authorization": f"Bearer {token}"}
            # Alternating short rounds: load from elsewhere on the machine drifts over seconds, and
            # back-to-back phases would charge that drift to whichever server ran second.
            bare_load, rest_load = Load(0, 0.0, []), Load(0, 0.0, [])
            for _ in range(ROUNDS):
                _add(bare_load, asyncio.run(_http_load(bare_addr, "/v1/namespaces/default", {}, SECONDS / ROUNDS)))
                _add(
                    rest_load, asyncio.run(_http_load(addrs["rest"], "/v1/namespaces/default", auth, SECONDS / ROUNDS))
                )
            grpc_load = asyncio.run(_grpc_load(addrs["grpc"], token))
    finally:
        with_suppress_kill(bare)
    print("   " + bare_load.line("bare Starlette JSON endpoint"))
    print("   " + rest_load.line("REST GET /v1/namespaces/default"))
    print("   " + grpc_load.line("gRPC GetNamespace"))
    print(f"   ratio REST / bare Starlette: {rest_load.rate / bare_load.rate:.2f}")
    print(f"   ratio REST / gRPC (same RPC): {rest_load.rate / grpc_load.rate:.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-bare":
        _serve_bare(sys.argv[2])
    else:
        run()
