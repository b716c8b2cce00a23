"""The REST role takes every queued connection at one wake-up of its listening socket.

libuv (under uvloop) accepts one connection per loop iteration, and a busy role's iteration serves
every ready request first, so under load connections waited seconds in the accept queue (see
``rune.gateway.server``). These tests run the role's uvicorn server on a real socket, on uvloop,
with the role's httptools protocol, and count loop iterations, not time.
"""

from __future__ import annotations

import asyncio
import http.client
import socket
from collections.abc import Awaitable, Callable

import uvicorn
import uvloop

from rune.gateway import server
from rune.gateway.protocol import bounded

QUEUED = 64
# Loop iterations allowed for QUEUED connections: accepting one per iteration cannot make it.
ITERATIONS = 8

Scope = dict[str, object]
Receive = Callable[[], Awaitable[dict[str, object]]]
Send = Callable[[dict[str, object]], Awaitable[None]]


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


def _run(body: Callable[[server.Server, tuple[str, int]], Awaitable[None]]) -> None:
    async def main() -> None:
        sock = server.bind("127.0.0.1:0")
        config = uvicorn.Config(
            hello, loop="none", lifespan="off", log_config=None, access_log=False, http=bounded("httptools", 10, 65536)
        )
        config.load()
        srv = server.Server(config)
        task = asyncio.create_task(srv.serve(sockets=[sock]))
        try:
            while not srv.started:
                await asyncio.sleep(0)
            await body(srv, sock.getsockname()[:2])
        finally:
            srv.should_exit = True
            await task

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def test_queued_connections_are_all_taken_at_one_wake_up() -> None:
    async def body(srv: server.Server, address: tuple[str, int]) -> None:
        # Blocking connects complete in the kernel: all of them queue while the loop cannot run.
        clients = [socket.create_connection(address) for _ in range(QUEUED)]
        try:
            for _ in range(ITERATIONS):
                await asyncio.sleep(0)
            assert len(srv.server_state.connections) == QUEUED
        finally:
            for c in clients:
                c.close()

    _run(body)


def test_accepted_connections_are_served_and_shutdown_stops_accepting() -> None:
    async def body(srv: server.Server, address: tuple[str, int]) -> None:
        def get() -> tuple[int, bytes]:
            conn = http.client.HTTPConnection(*address, timeout=30)
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
                return resp.status, resp.read()
            finally:
                conn.close()

        answers = await asyncio.gather(*(asyncio.to_thread(get) for _ in range(8)))
        assert answers == [(200, b"hello")] * 8
        for acceptor in srv.servers:
            acceptor.close()
        late = socket.create_connection(address)  # queued by the kernel, never taken now
        try:
            for _ in range(ITERATIONS):
                await asyncio.sleep(0)
            assert not srv.server_state.connections or all(
                c.transport.get_extra_info("peername") != late.getsockname()  # type: ignore[attr-defined]
                for c in srv.server_state.connections
            )
        finally:
            late.close()

    _run(body)
