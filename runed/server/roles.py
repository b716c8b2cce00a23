"""Running one role process (grpc, rest, controller): event loop, signals, readiness file."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from runed.core.config import Config

log = logging.getLogger("runed.role")

# Exit status of a role that cannot start because of its configuration or environment
# (EX_CONFIG): the supervisor does not restart it and exits itself.
EXIT_FATAL = 78

# role -> "module:function" serving it: async def serve(app, stop: asyncio.Event, on_ready(addr)).
ROLES: dict[str, str] = {
    "grpc": "runed.transport.grpc:serve",
    "controller": "runed.controller:serve",
    "rest": "rune.gateway.server:serve",
}
DEFAULT_ROLES: tuple[str, ...] = tuple(ROLES)


def ready_file(config: Config, role: str) -> Path:
    return config.data_path / "run" / f"{role}.json"


def _install_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    def on_signal() -> None:
        if stop.is_set():
            # Second signal: exit at once.
            os._exit(130)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


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
    from runed.server.app import build_app
    from runed.store.sqlite import StoreError

    stop = asyncio.Event()
    _install_signals(asyncio.get_running_loop(), stop)
    try:
        app = build_app(config, role)
    except StoreError as e:
        print(f"runed: {e}", file=sys.stderr)
        return EXIT_FATAL
    from runed.transport import metrics

    metrics.install(app)
    modname, _, fn = ROLES[role].partition(":")
    serve: Callable[[Any, asyncio.Event, Callable[[str], None]], Awaitable[None]] = getattr(
        importlib.import_module(modname), fn
    )
    marker = ready_file(config, role)

    def on_ready(address: str) -> None:
        marker.parent.mkdir(parents=True, exist_ok=True)
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"role": role, "pid": os.getpid(), "address": address}))
        tmp.replace(marker)
        log.info("%s role ready on %s", role, address)

    try:
        await serve(app, stop, on_ready)
    except Exception as e:
        fatal = type(e).__name__ in ("BindError", "ConfigError", "StoreError")
        if fatal:
            print(f"runed: {e}", file=sys.stderr)
            return EXIT_FATAL
        log.exception("%s role failed", role)
        return 1
    finally:
        with contextlib.suppress(OSError):
            if marker.exists() and json.loads(marker.read_text()).get("pid") == os.getpid():
                marker.unlink()
        metrics.shutdown()
        app.close()
    return 0
