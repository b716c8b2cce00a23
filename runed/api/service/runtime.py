"""The container runtime must answer before a container service is accepted (a Docker ``/_ping``)."""

from __future__ import annotations

import asyncio

from rune.api import service_pb2
from runed.core import errors
from runed.pipeline.context import CallContext


async def docker_ping(socket_path: str, timeout: float = 1.0) -> bool:
    """True when a Docker engine answers ``/_ping`` on its unix socket within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(socket_path)
            try:
                writer.write(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
        return b" 200 " in line
    except (OSError, TimeoutError):
        return False


async def check_runtime(ctx: CallContext, svc: service_pb2.Service) -> None:
    """FAILED_PRECONDITION when the service runs in a container and no Docker engine answers."""
    if svc.runtime in ("", "container"):
        sock = ctx.deps.config.docker.socket
        if not await docker_ping(sock, min(ctx.deps.config.docker.negotiation_timeout_seconds, 2.0)):
            raise errors.FailedPrecondition(
                f'docker is not available: no Docker engine answers on {sock}; use runtime "process" or start Docker',
                reason="DOCKER_UNAVAILABLE",
            )
