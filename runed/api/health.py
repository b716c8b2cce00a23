"""HealthService: API server, services and instances from real probe results, node capacity from the OS."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import runed
from rune.api import common_pb2, health_pb2
from runed.api import node
from runed.api.offload import offloaded
from runed.core import errors
from runed.core.errors import FieldViolation
from runed.core.names import DEFAULT_NAMESPACE, list_scope
from runed.model import lease, objects
from runed.pipeline.context import CallContext
from runed.store.base import Record, iter_all

HEALTHY = health_pb2.HEALTH_STATUS_HEALTHY
UNHEALTHY = health_pb2.HEALTH_STATUS_UNHEALTHY
DEGRADED = health_pb2.HEALTH_STATUS_DEGRADED
UNKNOWN = health_pb2.HEALTH_STATUS_UNKNOWN
COMPONENT_TYPES = ("", "api-server", "service", "instance", "node", "controller")


def _v_get(req: health_pb2.GetHealthRequest) -> list[FieldViolation]:
    if req.component_type not in COMPONENT_TYPES:
        return [
            FieldViolation(
                "component_type",
                f"must be one of api-server, service, instance, node, controller (got {req.component_type!r})",
            )
        ]
    return []


VALIDATORS: dict[str, Callable[[Any], list[FieldViolation]] | None] = {"GetHealth": _v_get}


def _now() -> str:
    return objects.now_rfc3339()


# -- node capacity ----------------------------------------------------------------------------------
def _cgroup_cpus() -> float | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                out[key] = int(parts[0]) * 1024
    except (OSError, ValueError):
        pass
    return out


def node_capacity(data_dir: Path) -> dict[str, float]:
    """What this machine offers now: cpus (cgroup limit when set), memory, load, disk of the data dir."""
    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    limit = _cgroup_cpus()
    if limit is not None:
        cpus = min(cpus, limit)
    mem = _meminfo()
    load1, load5, load15 = os.getloadavg()
    disk = shutil.disk_usage(data_dir if data_dir.exists() else data_dir.parent)
    return {
        "cpu_cores": cpus,
        "mem_bytes": float(mem.get("MemTotal", 0)),
        "mem_available_bytes": float(mem.get("MemAvailable", 0)),
        "load1": load1,
        "load5": load5,
        "load15": load15,
        "disk_total_bytes": float(disk.total),
        "disk_free_bytes": float(disk.free),
    }


def _capacity_text(c: dict[str, float]) -> str:
    return (
        f"capacity cpu_cores={c['cpu_cores']:g} mem_bytes={int(c['mem_bytes'])} "
        f"mem_available_bytes={int(c['mem_available_bytes'])} load1={c['load1']:.2f} "
        f"disk_free_bytes={int(c['disk_free_bytes'])} disk_total_bytes={int(c['disk_total_bytes'])}"
    )


# -- instances and services -------------------------------------------------------------------------
def _instance_health(data: dict[str, Any]) -> tuple[health_pb2.HealthStatus, str]:
    state = str(data.get("state", ""))
    name = data.get("instance", {}).get("name", "")
    if state == "RUNNING":
        if not data.get("live", True):
            return UNHEALTHY, f"{name}: liveness probe failing"
        if not data.get("ready"):
            return DEGRADED, f"{name}: running, not ready"
        return HEALTHY, f"{name}: running and ready"
    if state in ("STARTING", "STOPPING", "BACKOFF"):
        return DEGRADED if state != "BACKOFF" else UNHEALTHY, f"{name}: {data.get('reason') or state.lower()}"
    if state in ("STOPPED", "EXITED", "FATAL"):
        return UNHEALTHY, f"{name}: {data.get('reason') or state.lower()}"
    return UNKNOWN, f"{name}: state unknown"


def _checks(data: dict[str, Any]) -> list[health_pb2.HealthCheckResult]:
    out = []
    kinds = {"liveness": health_pb2.HEALTH_CHECK_TYPE_LIVENESS, "readiness": health_pb2.HEALTH_CHECK_TYPE_READINESS}
    for which, result in (data.get("probes") or {}).items():
        if which not in kinds or not isinstance(result, dict):
            continue
        ts = float(result.get("ts") or 0)
        out.append(
            health_pb2.HealthCheckResult(
                type=kinds[which],
                status=HEALTHY if result.get("ok") else UNHEALTHY,
                message=str(result.get("message", "")),
                timestamp=objects.rfc3339(ts) if ts else "",
                consecutive_successes=int(result.get("successes", 0)),
                consecutive_failures=int(result.get("failures", 0)),
                # The controller refreshes stored results (runed/controller/probing.py): a time
                # older than max(period, 5 s) says nobody is probing any more.
                observed_at=objects.rfc3339(ts) if ts else "",
            )
        )
    return out


def _instance_component(rec: Record, include_checks: bool) -> health_pb2.ComponentHealth:
    status, message = _instance_health(rec.data)
    inst = rec.data.get("instance", {})
    return health_pb2.ComponentHealth(
        component_type="instance",
        id=rec.name,
        name=str(inst.get("name", rec.name)),
        namespace=rec.namespace,
        status=status,
        message=message,
        timestamp=_now(),
        check_results=_checks(rec.data) if include_checks else [],
    )


def _service_component(
    rec: Record, instances: list[Record], status_rec: Record | None, include_checks: bool
) -> health_pb2.ComponentHealth:
    scale = int(rec.data.get("spec", {}).get("scale", 0))
    verdicts = [_instance_health(i.data)[0] for i in instances]
    healthy = sum(1 for v in verdicts if v == HEALTHY)
    if not instances:
        status, message = (HEALTHY, "scaled to zero") if scale == 0 else (UNKNOWN, "No instances found")
    elif healthy == len(instances) and healthy >= scale:
        status, message = HEALTHY, f"{healthy}/{scale} instances healthy"
    elif healthy == 0:
        status, message = UNHEALTHY, f"0/{max(scale, len(instances))} instances healthy"
    else:
        status, message = DEGRADED, f"{healthy}/{max(scale, len(instances))} instances healthy"
    if status_rec is not None and status_rec.data.get("message"):
        message += f"; {status_rec.data['message']}"
    checks: list[health_pb2.HealthCheckResult] = []
    if include_checks:
        for i in instances:
            checks.extend(_checks(i.data))
    return health_pb2.ComponentHealth(
        component_type="service",
        id=str(rec.data.get("spec", {}).get("id", "")) or rec.name,
        name=rec.name,
        namespace=rec.namespace,
        status=status,
        message=message,
        timestamp=_now(),
        check_results=checks,
    )


def _controller_component(rec: Record | None) -> health_pb2.ComponentHealth:
    """Which controller leads (added by runed): the holder of the controller lease, as stored."""
    if rec is None:
        return health_pb2.ComponentHealth(
            component_type="controller",
            id="controller",
            name="controller",
            status=UNHEALTHY,
            message="no controller holds the lease: none runs, or the last one stopped",
            timestamp=_now(),
        )
    held = lease.Holder.from_record(rec)
    # The holder's clock against this host's: good enough to show, never used to elect.
    age = max(0.0, time.time() - held.renewed_at)
    stale = age > held.ttl
    message = f"leader {held.holder}, lease {held.ttl:g}s, renewed {age:.1f}s ago"
    if stale:
        message += " (by this host's clock): a standby takes over once a whole lease passes without renewal"
    return health_pb2.ComponentHealth(
        component_type="controller",
        id=held.holder,
        name="controller",
        status=DEGRADED if stale else HEALTHY,
        message=message,
        timestamp=objects.rfc3339(held.renewed_at),
    )


@offloaded
def GetHealth(req: health_pb2.GetHealthRequest, ctx: CallContext) -> health_pb2.GetHealthResponse:
    """Health of one component type (default: the API server)."""
    store = ctx.deps.store
    kind = req.component_type or "api-server"
    comps: list[health_pb2.ComponentHealth] = []
    if kind == "api-server":
        c = health_pb2.ComponentHealth(
            component_type="api-server",
            id="api-server",
            name="api-server",
            status=HEALTHY,
            message="API server is operating normally",
            timestamp=_now(),
        )
        if req.include_checks:
            cap = node_capacity(ctx.deps.config.data_path)
            c.check_results.append(
                health_pb2.HealthCheckResult(
                    type=health_pb2.HEALTH_CHECK_TYPE_STARTUP,
                    status=HEALTHY,
                    message=_capacity_text(cap),
                    timestamp=_now(),
                    consecutive_successes=1,
                    observed_at=_now(),
                )
            )
        comps.append(c)
    elif kind == "node" and req.name not in ("", "local"):
        comps.extend(node.health(store, req.name))
    elif kind == "node":
        name = req.name or "local"
        if name != "local":
            raise errors.not_found("node", name)
        cap = node_capacity(ctx.deps.config.data_path)
        busy = cap["load1"] > 2 * cap["cpu_cores"] or (cap["disk_free_bytes"] < 0.02 * cap["disk_total_bytes"])
        c = health_pb2.ComponentHealth(
            component_type="node",
            id="local",
            name="local",
            status=DEGRADED if busy else HEALTHY,
            message=("Single-node; " + ("overloaded or low on disk; " if busy else "") + _capacity_text(cap)),
            timestamp=_now(),
        )
        if req.include_checks:
            c.check_results.append(
                health_pb2.HealthCheckResult(
                    type=health_pb2.HEALTH_CHECK_TYPE_READINESS,
                    status=c.status,
                    message=_capacity_text(cap),
                    timestamp=_now(),
                    consecutive_successes=1,
                    observed_at=_now(),
                )
            )
        comps.append(c)
        if not req.name:
            # Every registered node too (a cluster's; a lone runed's one node is this host).
            comps.extend(node.health(store, ""))
    elif kind == "controller":
        comps.append(_controller_component(store.get(lease.KIND, lease.NAMESPACE, lease.CONTROLLER)))
    elif kind == "instance":
        ns = list_scope(req.namespace)
        if req.name:
            found = [
                r
                for r in iter_all(store, objects.INSTANCE, ns)
                if r.name == req.name or r.data.get("instance", {}).get("name") == req.name
            ]
            if not found:
                raise errors.not_found("instance", req.name, ns or None)
        else:
            found = list(iter_all(store, objects.INSTANCE, ns))
        comps.extend(_instance_component(r, req.include_checks) for r in found)
    else:  # service
        ns = list_scope(req.namespace)
        if req.name:
            one = store.get(objects.SERVICE, ns or DEFAULT_NAMESPACE, req.name)
            if one is None:
                raise errors.not_found("service", req.name, ns or DEFAULT_NAMESPACE)
            services = [one]
        else:
            services = list(iter_all(store, objects.SERVICE, ns))
        by_service: dict[tuple[str, str], list[Record]] = {}
        for r in iter_all(store, objects.INSTANCE, ns):
            by_service.setdefault((r.namespace, objects.instance_service(r)), []).append(r)
        for s in services:
            comps.append(
                _service_component(
                    s,
                    by_service.get((s.namespace, s.name), []),
                    store.get(objects.SERVICE_STATUS, s.namespace, s.name),
                    req.include_checks,
                )
            )
    return health_pb2.GetHealthResponse(
        components=comps,
        status=common_pb2.Status(code=0, message=f"{len(comps)} component(s)"),
        server_version=runed.__version__,
    )
