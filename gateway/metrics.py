"""The /metrics scrape: every role process's counters (multiprocess files), instances by state, and each node.

The store-backed families are computed per scrape, from the records (the scrape runs as store work,
off the event loop).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from runed.api.node import placed
from runed.model.nodes import NODE, SCOPE, Node, Resources
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


class _NodeCollector:
    """``rune_node_*{node=...}`` from the node records and the placements (as ``rune get nodes`` shows them)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        nodes = sorted(
            (Node.from_record(r.name, r.data) for r in iter_all(self.store, NODE, SCOPE)), key=lambda n: n.id
        )
        count, used = placed(self.store)
        now = time.time()
        families = {
            "ready": ("rune_node_ready", "1 while the node's heartbeat is recent (Ready), 0 once NotReady."),
            "schedulable": (
                "rune_node_schedulable",
                "1 while new instances may be placed on the node (Ready, not cordoned or draining).",
            ),
            "instances": ("rune_node_instances", "Instance slots placed on the node."),
            "cpu_alloc": (
                "rune_node_cpu_allocatable_cores",
                "CPU the node offers to instances (capacity minus its reserve).",
            ),
            "cpu_req": ("rune_node_cpu_requested_cores", "CPU requested by the instances placed on the node."),
            "mem_alloc": (
                "rune_node_memory_allocatable_bytes",
                "Memory the node offers to instances (capacity minus its reserve).",
            ),
            "mem_req": ("rune_node_memory_requested_bytes", "Memory requested by the instances placed on the node."),
            "age": (
                "rune_node_heartbeat_age_seconds",
                "Seconds since the node's last heartbeat (its clock against this host's).",
            ),
        }
        out = {k: GaugeMetricFamily(name, doc, labels=["node"]) for k, (name, doc) in families.items()}
        for n in nodes:
            req = used.get(n.id, Resources())
            values = {
                "ready": float(n.ready),
                "schedulable": float(n.ready and not n.cordoned and not n.draining),
                "instances": count[n.id],
                "cpu_alloc": n.allocatable.cpu_millis / 1000,
                "cpu_req": req.cpu_millis / 1000,
                "mem_alloc": n.allocatable.memory_bytes,
                "mem_req": req.memory_bytes,
                "age": max(0.0, now - n.heartbeat_at) if n.heartbeat_at else float("nan"),
            }
            for k, v in values.items():
                out[k].add_metric([n.id], v)
        yield from out.values()


def render(store: Store) -> tuple[bytes, str]:
    """The exposition of every role process's metrics, the instance and node gauges, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
    from prometheus_client import multiprocess as mp

    registry = CollectorRegistry()
    if runed_metrics.ENV in os.environ:
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(_InstanceCollector(store))  # type: ignore[arg-type]
    registry.register(_NodeCollector(store))  # type: ignore[arg-type]
    body: bytes = generate_latest(registry)
    return body, CONTENT_TYPE_LATEST
