"""This host as a node: its registration and heartbeat (capacity from the OS), and the ``node`` role.

The node role runs the reconciler over the instances placed on this node only (``nodeview``); it
takes no lease, since every node runs its own, and leaves scaling and deletion operations to the
leading controller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from runed import __version__
from runed.controller.nodeview import NodeView, node_id
from runed.core.config import Config
from runed.core.config.schema import NodeConfig
from runed.core.quantity import parse_cpu, parse_memory
from runed.model.nodes import NODE, SCOPE, Resources, heartbeat_fields
from runed.store.base import Store

log = logging.getLogger("runed.node")


def host_capacity() -> Resources:
    """The CPU cores this process may use and the memory the OS reports (``/proc/meminfo``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    memory = 0
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
                break
    return Resources(cores * 1000, memory)


class Heartbeat:
    """Registers this node in the store and beats every ``heartbeat_seconds`` (``beat`` counts up)."""

    def __init__(self, store: Store, cfg: NodeConfig) -> None:
        self.store = store
        self.cfg = cfg
        self.id = node_id(cfg)
        self.reserved = Resources(int(parse_cpu(cfg.reserve_cpu) * 1000), parse_memory(cfg.reserve_memory))

    def beat(self) -> None:
        fields = heartbeat_fields(self.cfg.address, self.cfg.labels, host_capacity(), self.reserved, __version__)

        def mutate(cur: dict[str, Any] | None) -> dict[str, Any]:
            data = dict(cur or {})
            data.update(fields)
            data["beat"] = int(data.get("beat") or 0) + 1
            data.setdefault("registered_at", fields["heartbeat_at"])
            return data

        self.store.update(NODE, SCOPE, self.id, mutate)

    async def run(self, stop: asyncio.Event) -> None:
        """Beat until ``stop`` (a failed beat is retried at the next one)."""
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.beat)
            except Exception as e:
                log.warning("node %s: heartbeat failed (%s); retrying", self.id, e)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.cfg.heartbeat_seconds):
                    await stop.wait()


async def serve(
    config: Config, store: Store, crypto: Any, stop: asyncio.Event, on_ready: Callable[[str], None]
) -> None:
    """The node role: register, beat, and reconcile the instances placed on this node (no lease: one per node)."""
    from runed.controller.reconciler import Controller
    from runed.runner.base import Runner
    from runed.runner.container import ContainerRunner
    from runed.runner.keeper import process_runner
    from runed.runner.process import raise_open_files_limit

    heart = Heartbeat(store, config.node)
    await asyncio.to_thread(heart.beat)
    beating = asyncio.create_task(heart.run(stop))
    docker = config.docker
    runners: dict[str, Runner] = {
        "process": process_runner(
            raise_open_files_limit(),
            spawn_timeout=config.controller.spawn_timeout_seconds,
            shim=config.controller.shim,
        ),
        "container": ContainerRunner(docker.socket, docker.api_version, docker.fallback_api_version),
    }
    view = NodeView(store, config.node, config.data_path)
    ctl = Controller(config.controller, store, crypto, config.data_path, runners, node=view, leads=False)

    async def wake_on_stop() -> None:
        # The loop sleeps until a wake-up: a stop must not wait for the next resync.
        await stop.wait()
        ctl.alarm.wake()

    waker = asyncio.create_task(wake_on_stop())
    try:
        await ctl.run(stop, on_ready)
    finally:
        for t in (beating, waker):
            t.cancel()
        await asyncio.wait({beating, waker}, timeout=1.0)


def view_of(config: Config, store: Store) -> NodeView:
    """The controller role's node view; on a control-plane host (node.enabled false) one that runs no instance."""
    return NodeView(store, config.node, config.data_path, runs=config.node.enabled)


async def lead(
    config: Config,
    store: Store,
    ended: asyncio.Event,
    on_ready: Callable[[str], None],
    reconcile: Callable[[asyncio.Event, Callable[[str], None]], Awaitable[None]],
) -> None:
    """The leading controller until ``ended``: the scheduler, scaling and deletion operations (``reconcile``),
    and this host's node unless node.enabled is false (then it reports ready as ``scheduler``)."""
    from runed.controller.scheduler import Scheduler

    tasks = [asyncio.create_task(Scheduler(store, config.node).run(ended))]
    try:
        if not config.node.enabled:
            await reconcile(ended, lambda _address: on_ready("scheduler"))
            return
        heart = Heartbeat(store, config.node)
        await asyncio.to_thread(heart.beat)
        tasks.append(asyncio.create_task(heart.run(ended)))
        await reconcile(ended, on_ready)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.wait(tasks, timeout=1.0)
