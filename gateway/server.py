"""The ``rest`` role: uvicorn (uvloop + httptools) serving the gateway until the role is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable, Generator

import uvicorn

from rune.gateway.app import build
from rune.gateway.backend import Backend
from rune.gateway.http import begin_shutdown
from rune.gateway.protocol import bounded
from rune.gateway.tls import uvicorn_options
from runed.core.config import Config
from runed.core.errors import BindError
from runed.pipeline.context import Deps
from runed.pipeline.stages import Pipeline
from runed.store.base import Store
from runed.transport.tls import listen

log = logging.getLogger("runed.rest")


class _Server(uvicorn.Server):
    # The role owns SIGTERM/SIGINT (they set `stop`); uvicorn must not install its own handlers.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


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
    server = _Server(uv_config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
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
        if not task.done():
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        sock.close()
