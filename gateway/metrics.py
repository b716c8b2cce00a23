"""The /metrics scrape: every role process's counters (multiprocess files) plus instances by state."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from runed.store.base import Store, iter_all
from runed.transport import metrics as runed_metrics


def instance_states(store: Store) -> dict[str, int]:
    """Instances by controller state, read from the store at scrape time."""
    counts: dict[str, int] = {}
    for rec in iter_all(store, "instance"):
        state = str(rec.data.get("state") or "UNKNOWN")
        counts[state] = counts.get(state, 0) + 1
    return counts


class _InstanceCollector:
    """``rune_instances{state=...}`` from the store, computed per scrape."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        # prometheus_client is imported only after runed.transport.metrics.install chose its value
        # backend (the multiprocess directory), which happens at import time.
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("rune_instances", "Instances by controller state.", labels=["state"])
        for state, n in sorted(instance_states(self.store).items()):
            family.add_metric([state], n)
        yield family


def render(store: Store) -> tuple[bytes, str]:
    """The exposition of every role process's metrics and the instance gauges, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client import multiprocess as mp

    registry = CollectorRegistry()
    if runed_metrics.ENV in os.environ:
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(_InstanceCollector(store))  # type: ignore[arg-type]
    body: bytes = generate_latest(registry)
    return body, CONTENT_TYPE_LATEST
