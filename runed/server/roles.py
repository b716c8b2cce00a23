"""Running one role process (grpc, rest, controller): event loop, signals, components, readiness file."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable

from runed.core.config import Config
from runed.core.errors import FatalStartError
from runed.core.readiness import ready_file
from runed.server.components import Components, build
from runed.server.supervisor import EXIT_FATAL
from runed.transport import metrics

log = logging.getLogger("runed.role")

OnReady = Callable[[str], None]

# Each role imports only its own adapter (inside its function below): loading all three would cost
# every role process ≈0.4 s of start-up and ≈15 MB. None of these imports hides a cycle.


async def serve_grpc(c: Components, stop: asyncio.Event, on_ready: OnReady) -> None:
    """The gRPC adapter over the shared pipeline."""
    from runed.transport import grpc

    await grpc.serve(c.config.server, c.pipeline, c.deps, stop, on_ready)


async def serve_rest(c: Components, stop: asyncio.Event, on_ready: OnReady) -> None:
    """The REST gateway (uvicorn) over the same pipeline, in-process."""
    from rune.gateway import server

    await server.serve(c.config, c.store, c.pipeline, c.deps, stop, on_ready)


async def serve_controller(c: Components, stop: asyncio.Event, on_ready: OnReady) -> None:
    """The reconciler, runners and probes: works on the store only, never on the pipeline.

    On a shared store a host that runs instances also serves the node channel (a lone runed does not).
    """
    from runed import controller

    serving = controller.serve(c.config, c.store, c.crypto, stop, on_ready)
    if c.config.node.enabled and not c.config.store.url.startswith("sqlite:"):
        await _beside_channel(c, stop, serving)
    else:
        await serving


async def serve_node(c: Components, stop: asyncio.Event, on_ready: OnReady) -> None:
    """A node of a cluster: registers and beats, runs the instances placed on it, serves the node channel."""
    from runed.controller import node

    await _beside_channel(c, stop, node.serve(c.config, c.store, c.crypto, stop, on_ready))


async def _beside_channel(c: Components, stop: asyncio.Event, serving: Awaitable[None]) -> None:
    """``serving`` and the node channel until both end; either one failing stops the other and is raised."""
    from runed.transport import nodechannel

    tasks = [asyncio.ensure_future(nodechannel.serve(c.config, c.deps, stop)), asyncio.ensure_future(serving)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        await asyncio.wait(tasks)
    for t in tasks:
        err = None if t.cancelled() else t.exception()
        if err is not None:
            raise err


# role -> the coroutine serving it until ``stop`` (``runed serve --role <name>``).
ROLES: dict[str, Callable[[Components, asyncio.Event, OnReady], Awaitable[None]]] = {
    "grpc": serve_grpc,
    "controller": serve_controller,
    "rest": serve_rest,
    "node": serve_node,
}


def _install_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    def on_signal() -> None:
        if stop.is_set():
            # Second signal: exit at once.
            os._exit(130)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


def settle_heap() -> None:
    """Moves what start-up left on the heap out of the collector's reach (``gc.freeze``).

    A role starts with tens of thousands of long-lived objects (modules, protobuf descriptors, the
    store, the server); every full collection walked them all, 15-35 ms with the role doing nothing
    else, and a follower of a chatty service triggers one every second or so: each one held every
    line in flight back by that long. Frozen, they are never walked again; full collections see only
    what the role made since (a few ms). Start-up garbage is collected first, so none of it is kept.
    """
    gc.collect()
    gc.freeze()


def run_role(config: Config, role: str) -> int:
    """Serve one role until SIGTERM/SIGINT. Returns the process exit status."""
    if role not in ROLES:
        print(f"runed: unknown role {role!r} (choose from {', '.join(ROLES)})", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency
        pass
    return asyncio.run(_main(config, role))


async def _main(config: Config, role: str) -> int:
    stop = asyncio.Event()
    _install_signals(asyncio.get_running_loop(), stop)
    try:
        components = build(config)
    except FatalStartError as e:
        print(f"runed: {e}", file=sys.stderr)
        return EXIT_FATAL
    metrics.install(config.data_path, role)
    marker = ready_file(config, role)

    def on_ready(address: str) -> None:
        tmp = marker.with_suffix(".tmp")
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"role": role, "pid": os.getpid(), "address": address}))
            tmp.replace(marker)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A full disk (the ballast already spent) must not take down a role that can serve:
            # it serves without its marker (what reads the marker does not see it ready).
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("%s role serves on %s but cannot write %s: %s", role, address, marker, e.strerror)
        else:
            log.info("%s role ready on %s", role, address)
        # Serving: what exists now lives as long as the role.
        settle_heap()

    try:
        await ROLES[role](components, stop, on_ready)
    except FatalStartError as e:
        # Bind, config and store failures: restarting cannot help (the supervisor stops too).
        print(f"runed: {e}", file=sys.stderr)
        return EXIT_FATAL
    except Exception:
        log.exception("%s role failed", role)
        return 1
    finally:
        with contextlib.suppress(OSError):
            if marker.exists() and json.loads(marker.read_text()).get("pid") == os.getpid():
                marker.unlink()
        metrics.shutdown()
        components.close()
    return 0
