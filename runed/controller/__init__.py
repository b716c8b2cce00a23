"""The controller role: reconciler, runners and probes; the only role that starts or stops instances."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from runed.core.config import Config
from runed.secrets.crypto import SecretCrypto
from runed.store.base import Store


async def serve(
    config: Config, store: Store, crypto: SecretCrypto, stop: asyncio.Event, on_ready: Callable[[str], None]
) -> None:
    """Run the reconciler until ``stop``; instances keep running (a restart re-adopts them)."""
    from runed.controller.reconciler import Controller
    from runed.runner.base import Runner
    from runed.runner.container import ContainerRunner
    from runed.runner.process import ProcessRunner, raise_open_files_limit

    docker = config.docker
    runners: dict[str, Runner] = {
        "process": ProcessRunner(nofile=raise_open_files_limit()),
        "container": ContainerRunner(docker.socket, docker.api_version, docker.fallback_api_version),
    }
    await Controller(config.controller, store, crypto, config.data_path, runners).run(stop, on_ready)
