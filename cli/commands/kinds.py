"""The resource types ``rune get`` knows: their names and aliases, and the columns each one prints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rune.cli.client import Session, pb2
from rune.cli.commands.common import inst_status, instance_health, list_instances, svc_status
from rune.cli.errors import EXIT_USAGE, CliError
from rune.cli.output import Column, age

TYPES = {
    "services": "services", "service": "services", "svc": "services",
    "instances": "instances", "instance": "instances", "inst": "instances",
    "namespaces": "namespaces", "namespace": "namespaces", "ns": "namespaces",
    "secrets": "secrets", "secret": "secrets",
    "configmaps": "configmaps", "configmap": "configmaps", "config": "configmaps", "configs": "configmaps",
    "cfg": "configmaps", "cm": "configmaps",
    "nodes": "nodes", "node": "nodes", "no": "nodes",
}  # fmt: skip


def labels(m: Any) -> str:
    """An object's labels as ``k=v,...`` (``-`` when none)."""
    return ",".join(f"{k}={v}" for k, v in sorted(m.labels.items())) or "-"


def _keys(m: Any) -> str:
    return ",".join(sorted(m.data)) or "-"


def host_ports(inst: Any) -> dict[str, int]:
    """An instance's host ports by port name: its ``host_ports``, else (a runed before them) the
    ``RUNE_PORT_<NAME>`` of its environment."""
    if inst.host_ports:
        return dict(sorted(inst.host_ports.items()))
    out: dict[str, int] = {}
    for key, value in inst.environment.items():
        if key.startswith("RUNE_PORT_") and value.isdigit():
            # Port names are DNS labels: RUNE_PORT_ADMIN_UI is the port "admin-ui".
            out[key.removeprefix("RUNE_PORT_").lower().replace("_", "-")] = int(value)
    return dict(sorted(out.items()))


def ports_text(inst: Any) -> str:
    """``127.0.0.1:41234->http,...``: where each declared port of an instance is reachable (``-`` when none)."""
    host = inst.ip or "127.0.0.1"
    return ",".join(f"{host}:{port}->{name}" for name, port in host_ports(inst).items()) or "-"


def _what(svc: Any) -> str:
    if svc.runtime == "process":
        return " ".join(" ".join([svc.process.command, *svc.process.args]).split())[:50]
    return svc.image or "-"


def _node_status(n: Any) -> str:
    """``Ready``, ``NotReady``, with ``SchedulingDisabled`` when cordoned and ``Draining`` while drained."""
    extra = ",Draining" if n.draining else (",SchedulingDisabled" if n.cordoned else "")
    return f"{n.status or 'Unknown'}{extra}"


def _share(used: int, total: int, unit: int, suffix: str) -> str:
    return f"{used / unit:g}/{total / unit:g}{suffix}"


def _unknown(_obj: Any) -> str:
    return "-"


def ready_instances(s: Session, ns: str, name: str = "") -> set[str] | None:
    """Ids of the instances in ``ns`` that run and pass their readiness probe (runed's health says so).

    None when runed does not tell (no health access, an older server): READY then prints ``-``.
    """
    health = instance_health(s, ns, name)
    if health is None:
        return None
    healthy = pb2("health").HEALTH_STATUS_HEALTHY
    return {i for i, c in health.items() if c.status == healthy}


def with_ready(s: Session, kind_name: str, ns: str, columns: list[Column], items: list[Any]) -> list[Column]:
    """``columns`` with READY filled in: ``ready/scale`` for a service, ``1/1`` or ``0/1`` for an instance."""
    if kind_name not in ("services", "instances") or not any(h == "READY" for h, _ in columns):
        return columns
    one = items[0].id if kind_name == "instances" and len(items) == 1 else ""
    ready = ready_instances(s, ns, one)
    if ready is None:
        return columns
    if kind_name == "instances":
        fn: Callable[[Any], str] = lambda i: "1/1" if i.id in ready else "0/1"  # noqa: E731
    else:
        counts: dict[tuple[str, str], int] = {}
        for i in list_instances(s, ns):
            if i.id in ready:
                counts[(i.namespace, i.service_name)] = counts.get((i.namespace, i.service_name), 0) + 1
        fn = lambda v: f"{counts.get((v.namespace, v.name), 0)}/{v.scale}"  # noqa: E731
    return [(h, fn if h == "READY" else f) for h, f in columns]


@dataclass(frozen=True)
class Kind:
    """How to list, show and print one resource type."""

    columns: list[Column]
    wide: list[Column]
    all_ns_column: bool
    created: Callable[[Any], Any]
    status: Callable[[Any], str]


KINDS: dict[str, Kind] = {
    "services": Kind(
        columns=[
            ("NAME", lambda s: s.name),
            ("STATUS", lambda s: svc_status(s.status)),
            ("SCALE", lambda s: str(s.scale)),
            ("READY", _unknown),
            ("PORTS", lambda s: ",".join(f"{p.name}:{p.port}" for p in s.ports) or "-"),
            ("RUNTIME", lambda s: s.runtime or "container"),
            ("IMAGE/COMMAND", _what),
            ("GEN", lambda s: str(s.metadata.generation)),
            ("AGE", lambda s: age(s.metadata.created_at)),
        ],
        wide=[
            ("LABELS", labels),
            ("DEPENDS", lambda s: ",".join(d.service or d.secret or d.configmap for d in s.dependencies) or "-"),
            ("MESSAGE", lambda s: s.status_message[:60] or "-"),
        ],
        all_ns_column=True,
        created=lambda s: s.metadata.created_at,
        status=lambda s: svc_status(s.status),
    ),
    "instances": Kind(
        columns=[
            ("NAME", lambda i: i.name),
            ("SERVICE", lambda i: i.service_name),
            ("READY", _unknown),
            ("STATUS", lambda i: inst_status(i.status)),
            ("PID", lambda i: str(i.pid) if i.pid else "-"),
            ("RESTARTS", lambda i: str(i.metadata.restart_count)),
            ("PORTS", ports_text),
            ("AGE", lambda i: age(i.created_at)),
        ],
        wide=[
            ("ID", lambda i: i.id),
            ("NODE", lambda i: i.node_id or "-"),
            ("RUNNER", lambda i: i.runner or "-"),
            ("MESSAGE", lambda i: i.status_message[:60] or "-"),
        ],
        all_ns_column=True,
        created=lambda i: i.created_at,
        status=lambda i: inst_status(i.status),
    ),
    "namespaces": Kind(
        columns=[("NAME", lambda n: n.name), ("LABELS", labels), ("AGE", lambda n: age(int(n.created_at)))],
        wide=[("DESCRIPTION", lambda n: n.description or "-")],
        all_ns_column=False,
        created=lambda n: n.created_at,
        status=lambda n: "",
    ),
    "secrets": Kind(
        columns=[
            ("NAME", lambda s: s.name),
            ("TYPE", lambda s: s.type or "static"),
            ("KEYS", _keys),
            ("VERSION", lambda s: str(s.version)),
            ("AGE", lambda s: age(s.created_at)),
        ],
        wide=[("UPDATED", lambda s: age(s.updated_at))],
        all_ns_column=True,
        created=lambda s: s.created_at,
        status=lambda s: "",
    ),
    "nodes": Kind(
        columns=[
            ("NAME", lambda n: n.id),
            ("STATUS", _node_status),
            ("ADDRESS", lambda n: n.address or "-"),
            ("INSTANCES", lambda n: str(n.instances)),
            ("CPU", lambda n: _share(n.allocated.cpu_millis, n.allocatable.cpu_millis, 1000, "")),
            ("MEMORY", lambda n: _share(n.allocated.memory_bytes >> 20, n.allocatable.memory_bytes >> 20, 1, "Mi")),
            ("AGE", lambda n: age(n.registered_at)),
        ],
        wide=[("LABELS", labels), ("VERSION", lambda n: n.version or "-"), ("HEARTBEAT", lambda n: n.last_heartbeat)],
        all_ns_column=False,
        created=lambda n: n.registered_at,
        status=_node_status,
    ),
    "configmaps": Kind(
        columns=[
            ("NAME", lambda c: c.name),
            ("KEYS", _keys),
            ("VERSION", lambda c: str(c.version)),
            ("AGE", lambda c: age(c.created_at)),
        ],
        wide=[("UPDATED", lambda c: age(c.updated_at))],
        all_ns_column=True,
        created=lambda c: c.created_at,
        status=lambda c: "",
    ),
}


def resolve(type_name: str) -> str:
    """The canonical plural of a type name or alias (``svc`` -> ``services``)."""
    name = TYPES.get(type_name.lower())
    if name is None:
        raise CliError(f"unknown type {type_name!r} (expected one of: {', '.join(KINDS)})", EXIT_USAGE)
    return name
