"""The controller role: reconciler, runners and probes; the only role that starts or stops instances."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from runed.server.app import App


async def serve(app: App, stop: asyncio.Event, on_ready: Callable[[str], None]) -> None:
    """Run the reconciler until ``stop``; instances keep running (a restart re-adopts them)."""
    from runed.controller.reconciler import Controller

    await Controller(app).run(stop, on_ready)
