"""The /metrics scrape: every role process's counters (multiprocess files) plus instances by state."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from runed.server.app import App
from runed.transport import metrics as runed_metrics


class _InstanceCollector:
    """``rune_instances{state=...}`` from the store, computed per scrape."""

    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        from rune.gateway.ops import instance_states

        family = GaugeMetricFamily("rune_instances", "Instances by controller state.", labels=["state"])
        for state, n in sorted(instance_states(self.app).items()):
            family.add_metric([state], n)
        yield family


def render(app: App) -> tuple[bytes, str]:
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client import multiprocess as mp

    registry = CollectorRegistry()
    if runed_metrics.ENV in os.environ:
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(_InstanceCollector(app))  # type: ignore[arg-type]
    body: bytes = generate_latest(registry)
    return body, CONTENT_TYPE_LATEST
