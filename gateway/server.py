"""The ``rest`` role: uvicorn (uvloop + httptools) serving the gateway until the role is stopped.

Connections are accepted by :class:`Acceptor`, not by the loop's ``create_server``: libuv (under
uvloop, since libuv 1.45) accepts one connection per event-loop iteration, and an iteration of a
busy REST role first serves every request that is ready. Measured with wrk against ``GET
/v1/namespaces/default/services`` at 200 connections: an iteration took ~0.4 s with ~120 requests
ready, the listening socket's accept queue held 44 connections and drained by ~2 a second, so
throughput stayed while connections still in the queue waited up to 15 s (p99 9 s). The acceptor
takes every pending connection each time the socket is readable (asyncio's own servers do the
same, up to their backlog) and hands each to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import uvicorn

from rune.gateway.app import build
from rune.gateway.backend import Backend
from rune.gateway.http import begin_shutdown
from rune.gateway.protocol import bounded
from rune.gateway.tls import unloaded_context, uvicorn_options
from runed.core.config import Config
from runed.core.errors import BindError
from runed.pipeline.context import Deps
from runed.pipeline.stages import Pipeline
from runed.store.base import Store
from runed.transport.certs import CertFiles
from runed.transport.tls import listen

log = logging.getLogger("runed.rest")


# The most connections taken off the accept queue per wake-up (asyncio's servers use their backlog).
ACCEPT_BATCH = 2048
# How long accepting pauses when the process is out of file descriptors (as asyncio's servers do).
ACCEPT_PAUSE_SECONDS = 1.0
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class Acceptor:
    """Accepts every pending connection on ``sock`` whenever it is readable (see the module docstring).

    Quacks like the ``asyncio.Server`` uvicorn keeps in ``servers`` (``close``, ``wait_closed``),
    so uvicorn's shutdown stops accepting before it drains the open connections.
    """

    def __init__(
        self, sock: socket.socket, factory: Callable[[], asyncio.Protocol], tls: ssl.SSLContext | None
    ) -> None:
        self.sock = sock
        self.factory = factory
        self.tls = tls
        self.loop = asyncio.get_running_loop()
        self.closed = False
        self._opening: set[asyncio.Task[Any]] = set()
        self.loop.add_reader(sock, self._accept)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while queued
            except OSError as e:
                if e.errno not in _OUT_OF_RESOURCES:
                    raise
                log.warning("cannot accept connections for %gs: %s", ACCEPT_PAUSE_SECONDS, e.strerror)
                self.loop.remove_reader(self.sock)
                self.loop.call_later(ACCEPT_PAUSE_SECONDS, self._resume)
                return
            conn.setblocking(False)
            opening = self.loop.create_task(self.loop.connect_accepted_socket(self.factory, conn, ssl=self.tls))
            self._opening.add(opening)
            opening.add_done_callback(self._opened)

    def _opened(self, task: asyncio.Task[Any]) -> None:
        self._opening.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # A TLS handshake that failed: the client's problem, and the connection is closed already.
            log.debug("connection not opened: %s", task.exception())

    def _resume(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.sock, self._accept)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock)

    async def wait_closed(self) -> None:
        return


class Server(uvicorn.Server):
    """uvicorn's server as the role runs it: no signal handlers of its own, connections taken by :class:`Acceptor`."""

    # The role owns SIGTERM/SIGINT (they set `stop`); uvicorn must not install its own handlers.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up for listening ``sockets`` (lifespan is off), with :class:`Acceptor` accepting."""
        assert sockets is not None, "the rest role always passes its bound socket"
        config = self.config

        def protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        await self.lifespan.startup()
        self.servers = [Acceptor(sock, protocol, config.ssl) for sock in sockets]  # type: ignore[misc]
        self.started = True


def bind(address: str) -> socket.socket:
    """Listen on ``address`` (port 0 = any free port; an empty host is every IPv4 interface)."""
    return listen(address, dual_stack=False)


async def serve(
    config: Config, store: Store, pipeline: Pipeline, deps: Deps, stop: asyncio.Event, on_ready: Callable[[str], None]
) -> None:
    """Serve REST until ``stop`` is set; in-flight requests get the configured grace, streams end.

    Args:
        config: server settings (address, TLS, limits, grace) and the data dir (readiness markers).
        store: what /readyz and /metrics read.
        pipeline: every API call goes through it, as over gRPC.
        deps: what handlers get in their call context.
        stop: set when the role should stop.
        on_ready: called with the bound address once uvicorn serves.
    """
    sock = bind(config.server.http_address)
    host, port = sock.getsockname()[:2]
    options = uvicorn_options(config.server.tls)
    # Every connection's request heads are bounded in time and size (gateway/protocol.py).
    options["http"] = bounded(options["http"], config.server.header_timeout_seconds, config.server.max_header_bytes)
    uv_config = uvicorn.Config(
        build(Backend(config, store, pipeline, deps)),
        loop="none",  # the role already runs on uvloop
        lifespan="off",
        access_log=False,
        log_config=None,
        server_header=False,
        # The peer is the TCP client (README); trusting X-Forwarded-For from loopback would let a
        # local process pose as another address, and the middleware ran on every request.
        proxy_headers=False,
        timeout_graceful_shutdown=int(config.server.shutdown_grace_seconds) or 1,
        **options,
    )
    try:
        uv_config.load()
    except (OSError, ssl.SSLError) as e:
        sock.close()
        what = f"cannot read {e.filename}: {e.strerror}" if getattr(e, "filename", None) else str(e)
        raise BindError(f"server.tls: {what}") from None
    server = Server(uv_config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    # A rotated certificate is served to new connections (runed/transport/certs.py).
    keeping = (
        asyncio.create_task(CertFiles(config.server.tls).keep(uv_config.ssl, partial(unloaded_context, uv_config)))
        if uv_config.ssl
        else None
    )
    try:
        while not server.started:
            if task.done():
                task.result()
                return
            await asyncio.sleep(0.01)
        shown = "0.0.0.0" if host in ("0.0.0.0", "::") else host
        on_ready(f"{shown}:{port}")
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        begin_shutdown()
        server.should_exit = True
        await task
    finally:
        if keeping is not None:
            keeping.cancel()
        if not task.done():
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        sock.close()
