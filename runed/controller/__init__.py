"""The controller role: reconciler, runners and probes; the only role that starts or stops instances.

Several hosts may run it on one shared store: they elect one leader through the ``controller``
lease (``leader.py``) and only the leader reconciles. The others report ready as standbys (their
readiness marker's address is ``standby``) and take over when the leader stops renewing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from runed.controller.leader import Lease, holder_id
from runed.core.config import Config
from runed.model.lease import CONTROLLER
from runed.secrets.crypto import SecretCrypto
from runed.store.base import Store

log = logging.getLogger("runed.controller")

# What a standby reports as its address (in its readiness marker and the supervisor's ready line).
STANDBY = "standby"


async def serve(
    config: Config, store: Store, crypto: SecretCrypto, stop: asyncio.Event, on_ready: Callable[[str], None]
) -> None:
    """Stand by until this process leads, reconcile while it does; again after a lost lease, until ``stop``."""
    from runed.runner.process import raise_open_files_limit

    # Once per process: a second call would take the raised limit for the one instances inherit.
    nofile = raise_open_files_limit()
    lease = Lease(
        store,
        CONTROLLER,
        holder_id(config.data_path),
        config.controller.lease_seconds,
        # A SQLite store has no other host: a start takes the lease of its own dead predecessor at once.
        claim_at_start=config.store.url.startswith("sqlite:"),
    )
    if not await _claim_at_start(store, lease):
        on_ready(STANDBY)
    while not stop.is_set():
        async with lease.held(stop) as ended:
            if ended.is_set():
                break
            await _lead(config, store, crypto, nofile, ended, on_ready)
        if not stop.is_set():
            log.warning("controller lost the lease: standing by (instances keep running)")
            on_ready(STANDBY)


async def _claim_at_start(store: Store, lease: Lease) -> bool:
    """One attempt before reporting ready: a lone runed leads at once, as it always did."""
    try:
        if await store.run(lease.claim):
            return True
        current = await store.run(lease.current)
    except Exception as e:  # the store unreachable: stand by, the lease keeper retries
        log.warning("controller cannot read the lease (%s): standing by", e)
        return False
    log.info("controller standing by: %s holds the lease", current.holder if current else "another host")
    return False


async def _lead(
    config: Config,
    store: Store,
    crypto: SecretCrypto,
    nofile: int | None,
    ended: asyncio.Event,
    on_ready: Callable[[str], None],
) -> None:
    """Run the reconciler until ``ended``; instances keep running (the next leader on this host re-adopts them)."""
    from runed.controller import node
    from runed.controller.reconciler import Controller
    from runed.runner.base import Runner
    from runed.runner.container import ContainerRunner
    from runed.runner.keeper import process_runner

    docker = config.docker
    runners: dict[str, Runner] = {
        "process": process_runner(
            nofile, spawn_timeout=config.controller.spawn_timeout_seconds, shim=config.controller.shim
        ),
        "container": ContainerRunner(docker.socket, docker.api_version, docker.fallback_api_version),
    }
    # The leader schedules, advances operations, and runs this host's node unless node.enabled is false.
    view = node.view_of(config, store)
    ctl = Controller(config.controller, store, crypto, config.data_path, runners, node=view)

    async def wake_on_end() -> None:
        # The loop sleeps until a wake-up: stepping down must not wait for the next resync.
        await ended.wait()
        ctl.alarm.wake()

    waker = asyncio.create_task(wake_on_end())
    try:
        await node.lead(config, store, ended, on_ready, ctl.run)
    finally:
        waker.cancel()
        # Stepping down lets go of the runners (the zygote's socket and report pipe): a lease lost
        # and taken again must not leave them behind. Instances and their shims keep running.
        for runner in runners.values():
            runner.close()
