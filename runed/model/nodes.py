"""Nodes and placements as stored: the hosts that run instances, and which node runs which instance slot.

A ``node`` record has three writers, each changing only its own fields through ``store.update``:
the node itself (address, labels, capacity, heartbeat ``beat``), the API (``cordoned``,
``draining``) and the scheduler (``ready`` and when that last changed). A ``placement`` record per
service (same namespace and name) maps instance indexes to node ids; only the scheduler writes it,
and each node's reconciler runs exactly the indexes placed on it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runed.core.config.schema import NodeConfig
from runed.core.quantity import QuantityError, parse_cpu, parse_memory

NODE = "node"
PLACEMENT = "placement"
# Nodes are cluster-scoped: stored under the empty namespace.
SCOPE = ""
# Written by the node channel once it listens: the port API hosts reach it at (beside ``address``).
CHANNEL_PORT = "channel_port"
# Whether the node serves its channel over TLS (node.tls).
CHANNEL_TLS = "channel_tls"


def local_node_id(cfg: NodeConfig) -> str:
    """This host's node id: the configured one, else the hostname."""
    return cfg.id or socket.gethostname()


@dataclass(frozen=True)
class Resources:
    """CPU in millicores and memory in bytes (capacity, reserve, allocatable or requested)."""

    cpu_millis: int = 0
    memory_bytes: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu_millis + other.cpu_millis, self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu_millis - other.cpu_millis, self.memory_bytes - other.memory_bytes)

    def to_record(self) -> dict[str, int]:
        return {"cpu_millis": self.cpu_millis, "memory_bytes": self.memory_bytes}

    @classmethod
    def from_record(cls, d: Mapping[str, Any] | None) -> Resources:
        d = d or {}
        return cls(int(d.get("cpu_millis") or 0), int(d.get("memory_bytes") or 0))


def requests_of(cpu: str, mem: str) -> Resources:
    """A service's resource requests (``resources.cpu.request``, ``resources.memory.request``); unset is 0."""
    try:
        return Resources(int(parse_cpu(cpu) * 1000) if cpu else 0, parse_memory(mem) if mem else 0)
    except QuantityError:
        # Validation refuses these at create time; an old record must not stop scheduling.
        return Resources()


@dataclass(frozen=True)
class Node:
    """One node as its record says."""

    id: str
    address: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    capacity: Resources = Resources()
    reserved: Resources = Resources()
    # Incremented by every heartbeat: the scheduler measures staleness on its own clock, never
    # by comparing another host's wall-clock time with its own.
    beat: int = 0
    heartbeat_at: float = 0.0
    registered_at: float = 0.0
    version: str = ""
    cordoned: bool = False
    draining: bool = False
    # Set by the scheduler: False once no heartbeat came within node.not_ready_seconds.
    ready: bool = True
    ready_changed_at: float = 0.0
    # The node channel's port (0: the node serves no channel, or has not yet said), and whether it
    # is served over TLS.
    channel_port: int = 0
    channel_tls: bool = False

    @property
    def allocatable(self) -> Resources:
        return self.capacity - self.reserved

    @classmethod
    def from_record(cls, name: str, d: Mapping[str, Any]) -> Node:
        return cls(
            id=name,
            address=str(d.get("address") or ""),
            labels={str(k): str(v) for k, v in (d.get("labels") or {}).items()},
            capacity=Resources.from_record(d.get("capacity")),
            reserved=Resources.from_record(d.get("reserved")),
            beat=int(d.get("beat") or 0),
            heartbeat_at=float(d.get("heartbeat_at") or 0),
            registered_at=float(d.get("registered_at") or 0),
            version=str(d.get("version") or ""),
            cordoned=bool(d.get("cordoned")),
            draining=bool(d.get("draining")),
            ready=bool(d.get("ready", True)),
            ready_changed_at=float(d.get("ready_changed_at") or 0),
            channel_port=int(d.get(CHANNEL_PORT) or 0),
            channel_tls=bool(d.get(CHANNEL_TLS)),
        )


def heartbeat_fields(
    address: str, labels: Mapping[str, str], capacity: Resources, reserved: Resources, version: str
) -> dict[str, Any]:
    """What a node writes about itself at every heartbeat (``beat`` is added by the update)."""
    return {
        "address": address,
        "labels": dict(labels),
        "capacity": capacity.to_record(),
        "reserved": reserved.to_record(),
        "version": version,
        "heartbeat_at": time.time(),
    }


@dataclass(frozen=True)
class Placement:
    """Where a service's instance slots run: index -> node id; ``message`` says why some are unplaced."""

    slots: dict[int, str] = field(default_factory=dict)
    message: str = ""

    def to_record(self) -> dict[str, Any]:
        return {"slots": {str(i): n for i, n in sorted(self.slots.items())}, "message": self.message}

    @classmethod
    def from_record(cls, d: Mapping[str, Any] | None) -> Placement:
        d = d or {}
        return cls({int(i): str(n) for i, n in (d.get("slots") or {}).items()}, str(d.get("message") or ""))
