"""ServiceService: desired state of services (spec, history, scaling and deletion requests) and watches."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from google.protobuf import json_format

from rune.api import common_pb2, instance_pb2, service_pb2
from runed.api import instance as instance_api
from runed.api.namespace import BUILTIN, ensure_namespace
from runed.core import errors, quantity, validation
from runed.core.errors import FieldViolation
from runed.model import history, objects, selectors
from runed.pipeline.context import CallContext
from runed.store import paging, watch
from runed.store.base import DELETED, MODIFIED, Record, Store, iter_all

FIELD_SELECTOR_FIELDS = ("name", "namespace", "status", "runtime")
RUNTIMES = ("", "container", "process")
PROTOCOLS = ("", "tcp", "udp", "http", "grpc")
FINALIZERS = ("instance-cleanup", "service-deregister")
DELETION_DONE = ("completed", "failed")
SCALING_DONE = ("completed", "failed", "cancelled")
# Finished scaling operations kept per service (older ones are pruned on the next request).
SCALING_OPS_KEPT = 10
# Instance runner states counted as running / on the way (WatchScaling progress).
RUNNING_STATES = ("RUNNING",)
PENDING_STATES = ("PENDING", "CREATED", "STARTING", "BACKOFF")
GONE_STATES = ("STOPPED", "EXITED", "FATAL", "DELETED")

EVENT_TYPES = {
    "ADDED": common_pb2.EVENT_TYPE_ADDED,
    "MODIFIED": common_pb2.EVENT_TYPE_MODIFIED,
    "DELETED": common_pb2.EVENT_TYPE_DELETED,
}

_TEMPLATE_RE = re.compile(r"\{\{\s*(secret|configmap)\s*:\s*([^/}\s]+)\s*/\s*([^}\s]*)\s*\}\}")


# -- small helpers --------------------------------------------------------------------------------
def _ns(value: str) -> str:
    return value or "default"


def _list_ns(value: str) -> str | None:
    """``*`` lists every namespace; exact match otherwise (no prefix collisions)."""
    return None if value == "*" else _ns(value)


def _status(code: int = 0, message: str = "") -> common_pb2.Status:
    return common_pb2.Status(code=code, message=message)


def _get_service(store: Store, ns: str, name: str) -> Record:
    rec = store.get(objects.SERVICE, ns, name)
    if rec is None:
        raise errors.not_found("service", name, ns)
    return rec


def _with_status(store: Store, rec: Record) -> service_pb2.Service:
    return objects.service_from_record(rec, store.get(objects.SERVICE_STATUS, rec.namespace, rec.name))


def _instances_of(store: Store, ns: str, service: str) -> list[Record]:
    return [r for r in iter_all(store, objects.INSTANCE, ns) if objects.instance_service(r) == service]


# -- validation (static: every field error at once, with its path) ---------------------------------
def _probe_violations(p: common_pb2.Probe, path: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    if p.type == common_pb2.PROBE_TYPE_UNSPECIFIED:
        out.append(FieldViolation(f"{path}.type", "is required (HTTP, TCP or COMMAND)"))
    if p.type in (common_pb2.PROBE_TYPE_HTTP, common_pb2.PROBE_TYPE_TCP) and not 1 <= p.port <= 65535:
        out.append(FieldViolation(f"{path}.port", "must be between 1 and 65535 for HTTP and TCP probes"))
    if p.type == common_pb2.PROBE_TYPE_HTTP and p.path and not p.path.startswith("/"):
        out.append(FieldViolation(f"{path}.path", "must start with '/'"))
    # The prober builds a URL from it: spaces, control and non-ASCII characters must come percent-encoded.
    if p.path and (len(p.path) > 2048 or not all("!" <= c <= "~" for c in p.path)):
        out.append(FieldViolation(f"{path}.path", "must be at most 2048 printable ASCII characters without spaces"))
    out += validation.exec_strings(p.command, f"{path}.command")
    if p.type == common_pb2.PROBE_TYPE_COMMAND and not p.command:
        out.append(FieldViolation(f"{path}.command", "is required for COMMAND probes"))
    for name in (
        "initial_delay_seconds",
        "period_seconds",
        "timeout_seconds",
        "success_threshold",
        "failure_threshold",
    ):
        if getattr(p, name) < 0:
            out.append(FieldViolation(f"{path}.{name}", "must not be negative"))
    return out


def _mount_violations(mounts: Any, path: str, ref_field: str) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    seen: set[str] = set()
    for i, m in enumerate(mounts):
        p = f"{path}[{i}]"
        out += validation.dns1123_subdomain(m.name, f"{p}.name")
        ref = getattr(m, ref_field)
        if ref:
            out += validation.dns1123_subdomain(ref, f"{p}.{ref_field}")
        if not m.mount_path.startswith("/"):
            out.append(FieldViolation(f"{p}.mount_path", "must be an absolute path"))
        elif m.mount_path in seen:
            out.append(FieldViolation(f"{p}.mount_path", f"duplicate mount path {m.mount_path!r}"))
        seen.add(m.mount_path)
        out += validation.exec_string(m.mount_path, f"{p}.mount_path", limit=validation.EXEC_PATH_MAX)
        for j, item in enumerate(m.items):
            if not item.key:
                out.append(FieldViolation(f"{p}.items[{j}].key", "is required"))
            if not item.path or item.path.startswith("/") or ".." in item.path.split("/"):
                out.append(FieldViolation(f"{p}.items[{j}].path", "must be a relative path without '..'"))
            out += validation.exec_string(item.path, f"{p}.items[{j}].path", limit=validation.EXEC_PATH_MAX)
    return out


def validate_service(svc: service_pb2.Service, path: str = "service") -> list[FieldViolation]:
    """Every static problem with a service spec, with field paths (``service.ports[1].port``)."""
    out = validation.dns1123_label(svc.name, f"{path}.name")
    if svc.namespace:
        out += validation.dns1123_label(svc.namespace, f"{path}.namespace")
    out += validation.labels(svc.labels, f"{path}.labels")
    if svc.scale < 0:
        out.append(FieldViolation(f"{path}.scale", "must not be negative"))
    if svc.runtime not in RUNTIMES:
        out.append(FieldViolation(f"{path}.runtime", "must be 'process' or 'container'"))
    elif svc.runtime == "process":
        if not (svc.process.command or svc.command):
            out.append(FieldViolation(f"{path}.process.command", "is required for the process runtime"))
    elif not svc.image:
        out.append(FieldViolation(f"{path}.image", "is required for the container runtime"))
    if svc.process.working_dir and not svc.process.working_dir.startswith("/"):
        out.append(FieldViolation(f"{path}.process.working_dir", "must be an absolute path"))
    out += validation.exec_string(svc.command, f"{path}.command", limit=validation.EXEC_PATH_MAX)
    out += validation.exec_string(svc.process.command, f"{path}.process.command", limit=validation.EXEC_PATH_MAX)
    out += validation.exec_string(
        svc.process.working_dir, f"{path}.process.working_dir", limit=validation.EXEC_PATH_MAX
    )
    out += validation.exec_string(svc.image, f"{path}.image", limit=validation.EXEC_PATH_MAX)
    out += validation.exec_strings(svc.args, f"{path}.args")
    out += validation.exec_strings(svc.process.args, f"{path}.process.args")
    out += [v for k, val in svc.env.items() for v in validation.exec_string(val, f"{path}.env[{k}]")]
    if svc.restart_policy not in common_pb2.RestartPolicy.values():
        out.append(FieldViolation(f"{path}.restart_policy", "unknown restart policy"))
    for k in svc.env:
        out += validation.env_var_name(k, f"{path}.env[{k}]")
    for i, ef in enumerate(svc.env_from):
        p = f"{path}.env_from[{i}]"
        if bool(ef.secret_name) == bool(ef.configmap_name):
            out.append(FieldViolation(p, "exactly one of secret_name and configmap_name is required"))
        for ref in ("secret_name", "configmap_name"):
            out += validation.dns1123_subdomain(getattr(ef, ref), f"{p}.{ref}", allow_empty=True)
        if ef.prefix and not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", ef.prefix):
            out.append(FieldViolation(f"{p}.prefix", "must be a valid environment variable prefix"))
        if ef.namespace:
            out += validation.dns1123_label(ef.namespace, f"{p}.namespace")
    port_names: dict[str, int] = {}
    for i, port in enumerate(svc.ports):
        p = f"{path}.ports[{i}]"
        out += validation.dns1123_label(port.name, f"{p}.name")
        if port.name in port_names:
            out.append(FieldViolation(f"{p}.name", f"duplicate port name {port.name!r}"))
        port_names[port.name] = port.port
        if not 1 <= port.port <= 65535:
            out.append(FieldViolation(f"{p}.port", "must be between 1 and 65535"))
        if not 0 <= port.target_port <= 65535:
            out.append(FieldViolation(f"{p}.target_port", "must be between 0 and 65535"))
        if port.protocol.lower() not in PROTOCOLS:
            out.append(FieldViolation(f"{p}.protocol", "must be TCP, UDP, HTTP or GRPC"))
    if svc.HasField("resources"):
        parsers: tuple[tuple[str, Callable[[str], float]], ...] = (
            ("cpu", quantity.parse_cpu),
            ("memory", quantity.parse_memory),
        )
        for res, parse in parsers:
            rl = getattr(svc.resources, res)
            parsed: dict[str, float] = {}
            for which in ("request", "limit"):
                q = getattr(rl, which)
                if q:
                    try:
                        parsed[which] = parse(q)
                    except quantity.QuantityError as bad:
                        out.append(FieldViolation(f"{path}.resources.{res}.{which}", str(bad)))
            if len(parsed) == 2 and parsed["request"] > parsed["limit"]:
                out.append(FieldViolation(f"{path}.resources.{res}.request", "must not exceed the limit"))
    if svc.HasField("health"):
        for which in ("liveness", "readiness"):
            if svc.health.HasField(which):
                out += _probe_violations(getattr(svc.health, which), f"{path}.health.{which}")
    out += _mount_violations(svc.secret_mounts, f"{path}.secret_mounts", "secret_name")
    out += _mount_violations(svc.configmap_mounts, f"{path}.configmap_mounts", "configmap_name")
    for i, dep in enumerate(svc.dependencies):
        p = f"{path}.dependencies[{i}]"
        set_refs = [r for r in (dep.service, dep.secret, dep.configmap) if r]
        if len(set_refs) != 1:
            out.append(FieldViolation(p, "exactly one of service, secret and configmap is required"))
        elif dep.service:
            out += validation.dns1123_label(dep.service, f"{p}.service")
        else:
            ref = "secret" if dep.secret else "configmap"
            out += validation.dns1123_subdomain(getattr(dep, ref), f"{p}.{ref}")
        if dep.namespace:
            out += validation.dns1123_label(dep.namespace, f"{p}.namespace")
    if svc.HasField("expose"):
        e = svc.expose
        if e.port and e.port not in port_names and not any(str(v) == e.port for v in port_names.values()):
            out.append(FieldViolation(f"{path}.expose.port", f"must name or number a declared port, got {e.port!r}"))
        if e.host_port and not 1 <= e.host_port <= 65535:
            out.append(FieldViolation(f"{path}.expose.host_port", "must be between 1 and 65535"))
    return out


def _v_create(req: service_pb2.CreateServiceRequest) -> list[FieldViolation]:
    if not req.HasField("service"):
        return [FieldViolation("service", "is required")]
    return validate_service(req.service)


def _v_name(req: Any) -> list[FieldViolation]:
    out = validation.dns1123_label(req.name, "name")
    if req.namespace:
        out += validation.dns1123_label(req.namespace, "namespace")
    return out


def _v_list(req: service_pb2.ListServicesRequest) -> list[FieldViolation]:
    return selectors.check_scope(req, FIELD_SELECTOR_FIELDS) + paging.check(
        req.page_size, req.paging.limit, req.paging.offset
    )


def _v_watch(req: service_pb2.WatchServicesRequest) -> list[FieldViolation]:
    return selectors.check_watch(req, FIELD_SELECTOR_FIELDS)


def _v_delete(req: service_pb2.DeleteServiceRequest) -> list[FieldViolation]:
    out = _v_name(req)
    if req.grace_period < 0:
        out.append(FieldViolation("grace_period", "must not be negative"))
    if req.timeout_seconds < 0:
        out.append(FieldViolation("timeout_seconds", "must not be negative"))
    for i, f in enumerate(req.finalizers):
        if f not in FINALIZERS:
            out.append(FieldViolation(f"finalizers[{i}]", f"unknown finalizer {f!r}; known: {', '.join(FINALIZERS)}"))
    return out


def _v_deletion_status(req: service_pb2.GetDeletionStatusRequest) -> list[FieldViolation]:
    out = [FieldViolation("name", "deletion_id is required")] if not req.name else []
    return (
        out
        + validation.reference(req.name, "name")
        + validation.dns1123_label(req.namespace, "namespace", allow_empty=True)
    )


def _v_scale(req: service_pb2.ScaleServiceRequest) -> list[FieldViolation]:
    out = _v_name(req)
    if req.scale < 0:
        out.append(FieldViolation("scale", "scale must be a non-negative integer"))
    if req.mode not in service_pb2.ScalingMode.values():
        out.append(FieldViolation("mode", "unknown scaling mode"))
    if req.step_size < 0:
        out.append(FieldViolation("step_size", "must not be negative"))
    if req.interval_seconds < 0:
        out.append(FieldViolation("interval_seconds", "must not be negative"))
    return out


def _v_watch_scaling(req: service_pb2.WatchScalingRequest) -> list[FieldViolation]:
    out = validation.dns1123_label(req.service_name, "service_name")
    if req.target_scale < 0:
        out.append(FieldViolation("target_scale", "must not be negative"))
    return out


def _v_rollback(req: service_pb2.RollbackServiceRequest) -> list[FieldViolation]:
    out = _v_name(req)
    if req.to_revision < 0:
        out.append(FieldViolation("to_revision", "must not be negative"))
    return out


# -- references: namespace, dependencies, secrets, runtime ----------------------------------------
def _check_references(store: Store, svc: service_pb2.Service) -> None:
    """Referenced services, secrets and configmaps must exist, and dependencies must not form a cycle."""
    ns = svc.namespace
    out: list[FieldViolation] = []

    def need(kind: str, name: str, where: str, field_path: str) -> None:
        if store.get(kind, where, name) is None:
            out.append(FieldViolation(field_path, f'{kind} "{name}" not found in namespace "{where}"'))

    for i, ef in enumerate(svc.env_from):
        where = ef.namespace or ns
        if ef.secret_name:
            need(objects.SECRET, ef.secret_name, where, f"service.env_from[{i}].secret_name")
        if ef.configmap_name:
            need(objects.CONFIGMAP, ef.configmap_name, where, f"service.env_from[{i}].configmap_name")
    for key, value in sorted(svc.env.items()):
        for kind, name, k in _TEMPLATE_RE.findall(value):
            if not k:
                out.append(FieldViolation(f"service.env[{key}]", f"{{{{{kind}:{name}/KEY}}}}: the key is required"))
            need(kind, name, ns, f"service.env[{key}]")
    for i, sm in enumerate(svc.secret_mounts):
        need(objects.SECRET, sm.secret_name or sm.name, ns, f"service.secret_mounts[{i}]")
    for i, cm in enumerate(svc.configmap_mounts):
        need(objects.CONFIGMAP, cm.configmap_name or cm.name, ns, f"service.configmap_mounts[{i}]")
    for i, dep in enumerate(svc.dependencies):
        where = dep.namespace or ns
        p = f"service.dependencies[{i}]"
        if dep.secret:
            need(objects.SECRET, dep.secret, where, f"{p}.secret")
        elif dep.configmap:
            need(objects.CONFIGMAP, dep.configmap, where, f"{p}.configmap")
        elif dep.service:
            if (where, dep.service) == (ns, svc.name):
                out.append(FieldViolation(f"{p}.service", "a service cannot depend on itself"))
                continue
            need(objects.SERVICE, dep.service, where, f"{p}.service")
            cycle = _find_cycle(store, (ns, svc.name), (where, dep.service))
            if cycle:
                path = " -> ".join(f"{n}/{s}" for n, s in [(ns, svc.name), *cycle])
                out.append(FieldViolation(f"{p}.service", f"dependency cycle: {path}"))
    if out:
        raise errors.InvalidArgument(
            "dependency validation failed: " + "; ".join(f"{v.field}: {v.description}" for v in out), violations=out
        )


def _find_cycle(store: Store, origin: tuple[str, str], start: tuple[str, str]) -> list[tuple[str, str]]:
    """The path from ``start`` back to ``origin`` through stored dependencies, or [] (depth-first)."""
    stack: list[tuple[tuple[str, str], list[tuple[str, str]]]] = [(start, [start])]
    visited: set[tuple[str, str]] = set()
    while stack:
        node, path = stack.pop()
        if node in visited:
            continue
        visited.add(node)
        rec = store.get(objects.SERVICE, *node)
        if rec is None:
            continue
        for dep in rec.data.get("spec", {}).get("dependencies", []):
            if not dep.get("service"):
                continue
            nxt = (dep.get("namespace") or node[0], dep["service"])
            if nxt == origin:
                return [*path, nxt]
            stack.append((nxt, [*path, nxt]))
    return []


async def docker_ping(socket_path: str, timeout: float = 1.0) -> bool:
    """True when a Docker engine answers ``/_ping`` on its unix socket within ``timeout``."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(socket_path)
            try:
                writer.write(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
        return b" 200 " in line
    except (OSError, TimeoutError):
        return False


async def _check_runtime(ctx: CallContext, svc: service_pb2.Service) -> None:
    if svc.runtime in ("", "container"):
        sock = ctx.deps.config.docker.socket
        if not await docker_ping(sock, min(ctx.deps.config.docker.negotiation_timeout_seconds, 2.0)):
            raise errors.FailedPrecondition(
                f'docker is not available: no Docker engine answers on {sock}; use runtime "process" or start Docker'
            )


# -- writes ---------------------------------------------------------------------------------------
def _normalise(svc: service_pb2.Service) -> service_pb2.Service:
    out = service_pb2.Service()
    out.CopyFrom(svc)
    out.namespace = _ns(out.namespace)
    out.ClearField("status")
    return out


def _write_spec(
    ctx: CallContext,
    new: service_pb2.Service,
    *,
    cause: str,
    force: bool,
    create: bool,
    rollback_of: int = 0,
    dry_run: bool = False,
) -> tuple[Record, bool, bool]:
    """Create or update the ``service`` record and its history in one transaction.

    Returns (record, created, changed). An update whose spec equals the stored one changes nothing
    (no generation, no revision) unless ``force``. With ``dry_run`` the record that would be written
    is returned unstored (its ``revision`` is the current one, 0 for a new service).
    """
    store = ctx.deps.store
    ns, name = new.namespace, new.name
    with store.transaction():
        cur = store.get(objects.SERVICE, ns, name)
        now = objects.now_rfc3339()
        if cur is None:
            if not create:
                raise errors.not_found("service", name, ns)
            new.id = new.id or str(uuid.uuid4())
            new.metadata.generation = 1
            new.metadata.created_at = now
            new.metadata.updated_at = now
            new.metadata.last_non_zero_scale = max(new.scale, 1)
            number = history.latest_number(store, ns, name) + 1
            data = objects.service_record_data(new, generation=1, change_cause=cause)
            data["revision"] = number
            if dry_run:
                return Record(objects.SERVICE, ns, name, data, 0, 0), True, True
            rec = store.create(objects.SERVICE, ns, name, data)
            history.record(
                store,
                new,
                number=number,
                generation=1,
                change_cause=cause,
                created_by=ctx.principal.subject,
                keep=ctx.deps.config.history.revisions,
                rollback_of=rollback_of,
            )
            return rec, True, True
        if cur.data.get("deletion"):
            raise errors.FailedPrecondition(f'service "{name}" in namespace "{ns}" is being deleted')
        old = objects.service_from_record(cur)
        new.id = old.id
        new.metadata.CopyFrom(old.metadata)
        if not force and objects.spec_fingerprint(new) == objects.spec_fingerprint(old):
            return cur, False, False
        generation = int(cur.data.get("generation", 1)) + 1
        new.metadata.generation = generation
        new.metadata.updated_at = now
        if new.scale > 0:
            new.metadata.last_non_zero_scale = new.scale
        number = int(cur.data.get("revision", 0)) or history.latest_number(store, ns, name)
        number += 1
        # Keys other roles keep in the record survive a spec change.
        data = dict(cur.data)
        data.update(objects.service_record_data(new, generation=generation, change_cause=cause))
        data["revision"] = number
        if dry_run:
            return Record(objects.SERVICE, ns, name, data, cur.revision, cur.created_revision), False, True
        rec = store.put(objects.SERVICE, ns, name, data, expect_revision=cur.revision)
        history.record(
            store,
            new,
            number=number,
            generation=generation,
            change_cause=cause,
            created_by=ctx.principal.subject,
            keep=ctx.deps.config.history.revisions,
            rollback_of=rollback_of,
        )
        return rec, False, True


async def _prepare(
    ctx: CallContext, svc: service_pb2.Service, *, ensure_ns: bool, dry_run: bool = False
) -> service_pb2.Service:
    new = _normalise(svc)
    # A dry run with ensure_namespace would create a missing namespace: nothing to check, nothing to write.
    if new.namespace not in BUILTIN and not (dry_run and ensure_ns):
        ensure_namespace(ctx.deps.store, new.namespace, create=ensure_ns)
    _check_references(ctx.deps.store, new)
    await _check_runtime(ctx, new)
    return new


def _dry_run_message(created: bool, changed: bool) -> str:
    # Clients (``rune cast --dry-run``) read the outcome from this message; keep the words stable.
    what = "would be created" if created else ("would be updated" if changed else "unchanged")
    return f"dry run: {what}"


# -- handlers -------------------------------------------------------------------------------------
async def CreateService(req: service_pb2.CreateServiceRequest, ctx: CallContext) -> service_pb2.ServiceResponse:
    """Create a service, or update it when it exists (upsert, as upstream)."""
    new = await _prepare(ctx, req.service, ensure_ns=req.ensure_namespace, dry_run=req.dry_run)
    rec, created, changed = _write_spec(
        ctx, new, cause=req.change_cause or req.deployment_tag, force=False, create=True, dry_run=req.dry_run
    )
    if req.dry_run:
        msg = _dry_run_message(created, changed)
    else:
        msg = (
            "Service created successfully" if created else ("Service updated successfully" if changed else "unchanged")
        )
    return service_pb2.ServiceResponse(service=_with_status(ctx.deps.store, rec), status=_status(0, msg))


async def GetService(req: service_pb2.GetServiceRequest, ctx: CallContext) -> service_pb2.ServiceResponse:
    rec = _get_service(ctx.deps.store, _ns(req.namespace), req.name)
    return service_pb2.ServiceResponse(service=_with_status(ctx.deps.store, rec))


async def UpdateService(req: service_pb2.UpdateServiceRequest, ctx: CallContext) -> service_pb2.ServiceResponse:
    """Replace the spec: a changed spec bumps the generation and records a revision; same spec is a no-op."""
    _get_service(ctx.deps.store, _ns(req.service.namespace), req.service.name)
    new = await _prepare(ctx, req.service, ensure_ns=False, dry_run=req.dry_run)
    rec, _, changed = _write_spec(
        ctx, new, cause=req.change_cause or req.deployment_tag, force=req.force, create=False, dry_run=req.dry_run
    )
    if req.dry_run:
        msg = _dry_run_message(False, changed)
    else:
        msg = "Service updated successfully" if changed else "unchanged"
    return service_pb2.ServiceResponse(service=_with_status(ctx.deps.store, rec), status=_status(0, msg))


def _query_key(req: Any) -> str:
    """What a page token is bound to: the request without its paging fields."""
    q = type(req)()
    q.CopyFrom(req)
    for f in ("paging", "page_size", "page_token"):
        q.ClearField(f)
    return f"{type(req).__name__}:{q.SerializeToString(deterministic=True).hex()}"


def _selector(req: Any) -> selectors.Selector:
    return selectors.compile_selector(
        label_map=req.label_selector,
        label_expr=req.label_selector_expr,
        field_map=req.field_selector,
        field_expr=req.field_selector_expr,
    )


def _service_fields(rec: Record, status: Record | None) -> dict[str, str]:
    return {
        "name": rec.name,
        "namespace": rec.namespace,
        "status": objects.status_word(status).lower(),
        "runtime": str(rec.data.get("spec", {}).get("runtime", "") or "container").lower(),
    }


def _statuses(store: Store, batch: list[Record]) -> dict[tuple[str, str], Record]:
    """The ``service_status`` records of a key-ordered batch of services, read as one key range
    (one query instead of one per service); keys the range does not reach are fetched one by one."""
    out: dict[tuple[str, str], Record] = {}
    if not batch:
        return out
    first, last = batch[0], batch[-1]
    head = store.get(objects.SERVICE_STATUS, first.namespace, first.name)
    if head is not None:
        out[(first.namespace, first.name)] = head
    if len(batch) == 1:
        return out
    wanted = {(r.namespace, r.name) for r in batch}
    res = store.list(objects.SERVICE_STATUS, None, after=(first.namespace, first.name), limit=len(batch) + 32)
    reached = (first.namespace, first.name)
    for rec in res.items:
        key = (rec.namespace, rec.name)
        if key > (last.namespace, last.name):
            reached = key
            break
        if key in wanted:
            out[key] = rec
        reached = key
    if res.next_cursor and reached < (last.namespace, last.name):
        # Stray status records filled the range: fetch what it did not cover.
        for r in batch:
            if (r.namespace, r.name) > reached:
                st = store.get(objects.SERVICE_STATUS, r.namespace, r.name)
                if st is not None:
                    out[(r.namespace, r.name)] = st
    return out


def _match_services(store: Store, sel: selectors.Selector, batch: list[Record]) -> list[service_pb2.Service | None]:
    if sel.labels:
        batch_labels = [r.data.get("spec", {}).get("labels", {}) for r in batch]
        keep = [all(q.matches(lb) for q in sel.labels) for lb in batch_labels]
    else:
        keep = [True] * len(batch)
    statuses = _statuses(store, [r for r, k in zip(batch, keep, strict=True) if k])
    out: list[service_pb2.Service | None] = []
    for rec, k in zip(batch, keep, strict=True):
        if not k:
            out.append(None)
            continue
        status = statuses.get((rec.namespace, rec.name))
        if sel.fields and not all(r.matches(_service_fields(rec, status)) for r in sel.fields):
            out.append(None)
            continue
        out.append(objects.service_from_record(rec, status))
    return out


async def ListServices(req: service_pb2.ListServicesRequest, ctx: CallContext) -> service_pb2.ListServicesResponse:
    """Services matching the selectors, one page at a time (keyset pagination, opaque tokens)."""
    store = ctx.deps.store
    sel = _selector(req)
    query = _query_key(req)
    pr = paging.page_request(
        req.page_size,
        req.page_token,
        req.paging.limit,
        req.paging.offset,
        req.paging.continuation_token,
        query,
    )
    page = paging.paginate(
        store,
        objects.SERVICE,
        _list_ns(req.namespace),
        pr,
        query,
        lambda batch: _match_services(store, sel, batch),
    )
    resp = service_pb2.ListServicesResponse(
        services=page.items,
        next_page_token=page.next_token,
        revision=page.revision,
        status=_status(0, f"Found {len(page.items)} services"),
    )
    resp.paging.limit = pr.size or len(page.items)
    resp.paging.offset = pr.skip
    resp.paging.continuation_token = page.next_token
    return resp


async def WatchServices(
    req: service_pb2.WatchServicesRequest, ctx: CallContext
) -> AsyncIterator[service_pb2.WatchServicesResponse]:
    """Snapshot (or resume from ``since_revision``), then every change in order; see runed/watch.py."""
    store = ctx.deps.store
    sel = _selector(req)
    async for ev in watch.watch(
        store,
        [objects.SERVICE, objects.SERVICE_STATUS],
        namespace=_list_ns(req.namespace),
        since_revision=req.since_revision,
        snapshot_kinds=[objects.SERVICE],
        queue_size=ctx.deps.config.history.watch_queue_events,
    ):
        op = ev.op
        if ev.kind == objects.SERVICE_STATUS:
            # A status change is a modification of the service as clients see it.
            if op == DELETED:
                continue
            svc_rec = store.get(objects.SERVICE, ev.namespace, ev.name)
            if svc_rec is None:
                continue
            status: Record | None = Record(objects.SERVICE_STATUS, ev.namespace, ev.name, ev.data, ev.revision, 0)
            op = MODIFIED
        else:
            svc_rec = Record(objects.SERVICE, ev.namespace, ev.name, ev.data, ev.revision, 0)
            status = None if op == DELETED else store.get(objects.SERVICE_STATUS, ev.namespace, ev.name)
        labels = svc_rec.data.get("spec", {}).get("labels", {})
        if not sel.matches(labels, _service_fields(svc_rec, status) if sel.fields else {}):
            continue
        yield service_pb2.WatchServicesResponse(
            service=objects.service_from_record(svc_rec, status),
            event_type=EVENT_TYPES[op],
            revision=ev.revision,
        )


def _dependents(store: Store, ns: str, name: str) -> list[str]:
    out: list[str] = []
    for rec in iter_all(store, objects.SERVICE):
        for dep in rec.data.get("spec", {}).get("dependencies", []):
            if dep.get("service") == name and (dep.get("namespace") or rec.namespace) == ns:
                out.append(f"{rec.namespace}/{rec.name}")
                break
    return out


def _deletion_pb(d: dict[str, Any]) -> service_pb2.DeletionOperation:
    op = service_pb2.DeletionOperation()
    json_format.ParseDict(d, op, ignore_unknown_fields=True)
    return op


async def DeleteService(req: service_pb2.DeleteServiceRequest, ctx: CallContext) -> service_pb2.DeleteServiceResponse:
    """Request deletion: the controller stops instances (grace period) and runs the finalizers."""
    store = ctx.deps.store
    ns = _ns(req.namespace)
    rec = store.get(objects.SERVICE, ns, req.name)
    if rec is None:
        if req.ignore_not_found:
            return service_pb2.DeleteServiceResponse(status=_status(0, "not found (ignored)"))
        raise errors.not_found("service", req.name, ns)
    dependents = _dependents(store, ns, req.name)
    override = req.force or req.no_dependencies
    if dependents and not override:
        raise errors.FailedPrecondition(
            f"cannot delete {ns}/{req.name}; dependents exist: {', '.join(dependents)} (use force to override)"
        )
    names = list(dict.fromkeys(req.finalizers)) or list(FINALIZERS)
    # The record removal always runs, and always last.
    names = [n for n in FINALIZERS if n in names or n == "service-deregister"]
    now = int(time.time())
    finalizers = [
        {"id": f, "name": f, "type": f, "status": "pending", "error": "", "created_at": now, "updated_at": now}
        for f in names
    ]
    for i, f in enumerate(finalizers[1:], 1):
        f["dependencies"] = [{"depends_on": finalizers[i - 1]["id"], "required": True}]
    instances = _instances_of(store, ns, req.name)
    warnings = [f"dependents will break: {', '.join(dependents)}"] if dependents else []
    if req.dry_run:
        return service_pb2.DeleteServiceResponse(
            deletion_id="dry-run",
            status=_status(0, "dry_run"),
            warnings=[*warnings, f"would stop {len(instances)} instance(s)"],
            finalizers=[_finalizer_pb(f) for f in finalizers],
        )
    grace = 0 if req.now else (req.grace_period or int(ctx.deps.config.controller.stop_grace_seconds))
    existing = rec.data.get("deletion") or {}
    if existing.get("id"):
        op_rec = store.get(objects.DELETION_OPERATION, ns, existing["id"])
        if op_rec is not None and op_rec.data.get("status") not in DELETION_DONE:
            # A second request joins the deletion already under way.
            return service_pb2.DeleteServiceResponse(
                deletion_id=existing["id"],
                status=_status(0, "in_progress"),
                warnings=["deletion already in progress"],
                finalizers=[_finalizer_pb(f) for f in op_rec.data.get("finalizers", [])],
            )
    op_id = f"delete-{ns}-{req.name}-{now}-{uuid.uuid4().hex[:6]}"
    op = {
        "id": op_id,
        "namespace": ns,
        "service_name": req.name,
        "total_instances": len(instances),
        "deleted_instances": 0,
        "failed_instances": 0,
        "start_time": now,
        "end_time": 0,
        "status": "initializing",
        "failure_reason": "",
        "pending_operations": names,
        "finalizers": finalizers,
        "finalizer_order": names,
        "finalizer_status": "pending",
        "grace_period": grace,
        "timeout_seconds": req.timeout_seconds,
        "force": bool(override),
        "requested_by": ctx.principal.subject,
    }

    def mark(cur: dict[str, Any] | None) -> dict[str, Any] | None:
        if cur is None:
            raise errors.not_found("service", req.name, ns)
        cur["deletion"] = {"id": op_id, "requested_at": time.time(), "grace_period": grace}
        return cur

    with store.transaction():
        store.create(objects.DELETION_OPERATION, ns, op_id, op)
        store.update(objects.SERVICE, ns, req.name, mark)
    status = _status(0, "in_progress")
    if not req.detach and req.timeout_seconds > 0:
        final = await _await_deletion(store, ns, op_id, req.timeout_seconds)
        if final is not None:
            status = _status(0 if final.get("status") == "completed" else 13, str(final.get("status")))
            if final.get("failure_reason"):
                return service_pb2.DeleteServiceResponse(
                    deletion_id=op_id,
                    status=status,
                    warnings=warnings,
                    errors=[str(final["failure_reason"])],
                    finalizers=[_finalizer_pb(f) for f in final.get("finalizers", [])],
                )
    return service_pb2.DeleteServiceResponse(
        deletion_id=op_id, status=status, warnings=warnings, finalizers=[_finalizer_pb(f) for f in finalizers]
    )


def _finalizer_pb(f: dict[str, Any]) -> service_pb2.Finalizer:
    out = service_pb2.Finalizer()
    json_format.ParseDict(f, out, ignore_unknown_fields=True)
    return out


async def _await_deletion(store: Store, ns: str, op_id: str, timeout: float) -> dict[str, Any] | None:
    """The finished operation, or None when it is still running after ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            async for ev in watch.watch(store, [objects.DELETION_OPERATION], namespace=ns):
                if ev.name == op_id and ev.data.get("status") in DELETION_DONE:
                    return ev.data
    except TimeoutError:
        return None
    return None


async def GetDeletionStatus(
    req: service_pb2.GetDeletionStatusRequest, ctx: CallContext
) -> service_pb2.GetDeletionStatusResponse:
    ns = _ns(req.namespace)
    rec = ctx.deps.store.get(objects.DELETION_OPERATION, ns, req.name)
    if rec is None:
        raise errors.not_found("deletion operation", req.name, ns)
    return service_pb2.GetDeletionStatusResponse(operation=_deletion_pb(rec.data))


async def ListDeletionOperations(
    req: service_pb2.ListDeletionOperationsRequest, ctx: CallContext
) -> service_pb2.ListDeletionOperationsResponse:
    ops = [
        _deletion_pb(r.data)
        for r in iter_all(ctx.deps.store, objects.DELETION_OPERATION, _list_ns(req.namespace))
        if not req.status or r.data.get("status") == req.status
    ]
    return service_pb2.ListDeletionOperationsResponse(operations=ops)


def _scaling_ops(store: Store, ns: str, service: str) -> list[Record]:
    ops = [r for r in iter_all(store, objects.SCALING_OPERATION, ns) if r.data.get("service") == service]
    return sorted(ops, key=lambda r: r.created_revision)


async def ScaleService(req: service_pb2.ScaleServiceRequest, ctx: CallContext) -> service_pb2.ServiceResponse:
    """Record a scaling operation for the controller; a new request cancels one still running."""
    store = ctx.deps.store
    ns = _ns(req.namespace)
    with store.transaction():
        rec = _get_service(store, ns, req.name)
        if rec.data.get("deletion"):
            raise errors.FailedPrecondition(f'service "{req.name}" in namespace "{ns}" is being deleted')
        current = int(rec.data.get("spec", {}).get("scale", 0))
        active = [r for r in _scaling_ops(store, ns, req.name) if r.data.get("status") not in SCALING_DONE]
        if current == req.scale and not active:
            return service_pb2.ServiceResponse(
                service=_with_status(store, rec), status=_status(0, f"Service already at scale {req.scale}")
            )
        now = time.time()
        for op in active:
            store.put(
                objects.SCALING_OPERATION,
                ns,
                op.name,
                dict(op.data, status="cancelled", ended_at=now, message="superseded by a newer request"),
            )
        finished = [r for r in _scaling_ops(store, ns, req.name) if r.data.get("status") in SCALING_DONE]
        for op in finished[: max(0, len(finished) - SCALING_OPS_KEPT)]:
            store.delete(objects.SCALING_OPERATION, ns, op.name)
        gradual = req.mode == service_pb2.SCALING_MODE_GRADUAL
        op_id = f"scale-{req.name}-{time.time_ns()}"
        store.create(
            objects.SCALING_OPERATION,
            ns,
            op_id,
            {
                "id": op_id,
                "service": req.name,
                "target": req.scale,
                "mode": "gradual" if gradual else "immediate",
                "step": (req.step_size or 1) if gradual else 0,
                "interval_seconds": (req.interval_seconds or 30) if gradual else 0,
                "status": "pending",
                "current": current,
                "started_at": now,
                "ended_at": None,
                "message": "",
                "requested_by": ctx.principal.subject,
            },
        )

        def keep_last_non_zero(cur: dict[str, Any] | None) -> dict[str, Any] | None:
            if cur is None:
                return None
            meta = cur["spec"].setdefault("metadata", {})
            # Scale 0 keeps the last non-zero scale, so a later "scale back up" knows where to go.
            value = req.scale if req.scale > 0 else (current or int(meta.get("last_non_zero_scale", 1)))
            if meta.get("last_non_zero_scale") == value:
                return None
            meta["last_non_zero_scale"] = value
            return cur

        rec = store.update(objects.SERVICE, ns, req.name, keep_last_non_zero) or rec
    return service_pb2.ServiceResponse(
        service=_with_status(store, rec), status=_status(0, f"Scaling operation initiated to {req.scale}")
    )


def _scaling_progress(store: Store, ns: str, name: str, target: int) -> service_pb2.ScalingStatusResponse | None:
    """Progress as the store shows it now; None when the service is gone (and the target was not 0)."""
    rec = store.get(objects.SERVICE, ns, name)
    if rec is None and target > 0:
        return None
    scale = int(rec.data.get("spec", {}).get("scale", 0)) if rec else 0
    insts = _instances_of(store, ns, name)
    states = [str(r.data.get("state", "")).upper() for r in insts]
    # Instances the controller is retiring (scale down, replacement) no longer count as running.
    running = sum(s in RUNNING_STATES and not r.data.get("retire") for s, r in zip(states, insts, strict=True))
    pending = sum(s in PENDING_STATES for s in states)
    alive = sum(s not in GONE_STATES for s in states)
    complete = alive == 0 if target == 0 else (scale == target and running == target and alive == target)
    ops = _scaling_ops(store, ns, name)
    msg = f"Service '{name}' scaling progress"
    code = 0
    if ops and ops[-1].data.get("status") in ("failed", "cancelled") and not complete:
        code = 9  # FAILED_PRECONDITION: the operation ended without reaching the target
        msg = f"scaling operation {ops[-1].data.get('status')}: {ops[-1].data.get('message', '')}".rstrip(": ")
    return service_pb2.ScalingStatusResponse(
        current_scale=scale,
        target_scale=target,
        running_instances=running,
        pending_instances=pending,
        complete=complete,
        status=_status(code, msg),
    )


async def WatchScaling(
    req: service_pb2.WatchScalingRequest, ctx: CallContext
) -> AsyncIterator[service_pb2.ScalingStatusResponse]:
    """Real progress from the service, its instances and its scaling operation; ends when done."""
    store = ctx.deps.store
    ns = _ns(req.namespace)
    _get_service(store, ns, req.service_name) if req.target_scale > 0 else None
    kinds = [objects.SERVICE, objects.INSTANCE, objects.SCALING_OPERATION]
    changed = asyncio.Event()

    async def wake() -> None:
        async for _ in watch.watch(store, kinds, namespace=ns, since_revision=max(store.current_revision(), 1)):
            changed.set()

    waker = asyncio.create_task(wake())
    last: service_pb2.ScalingStatusResponse | None = None
    try:
        while True:
            changed.clear()
            progress = _scaling_progress(store, ns, req.service_name, req.target_scale)
            if progress is None:
                raise errors.not_found("service", req.service_name, ns)
            if progress != last:
                yield progress
                last = progress
            if progress.complete or progress.status.code:
                return
            # Wake on the next relevant change, or re-check after a second (a safety net).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await changed.wait()
    finally:
        waker.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await waker


async def ListInstances(req: instance_pb2.ListInstancesRequest, ctx: CallContext) -> instance_pb2.ListInstancesResponse:
    return await instance_api.ListInstances(req, ctx)


async def ListServiceRevisions(
    req: service_pb2.ListServiceRevisionsRequest, ctx: CallContext
) -> service_pb2.ListServiceRevisionsResponse:
    ns = _ns(req.namespace)
    revs = history.list_revisions(ctx.deps.store, ns, req.name)
    if not revs:
        _get_service(ctx.deps.store, ns, req.name)
    return service_pb2.ListServiceRevisionsResponse(revisions=[history.to_pb(r) for r in reversed(revs)])


async def RollbackService(req: service_pb2.RollbackServiceRequest, ctx: CallContext) -> service_pb2.ServiceResponse:
    """Restore a stored spec (the previous one by default) as a new revision; the scale is kept."""
    store = ctx.deps.store
    ns = _ns(req.namespace)
    cur = _get_service(store, ns, req.name)
    current_number = int(cur.data.get("revision", 0))
    target_number = req.to_revision
    if not target_number:
        older = [r for r in history.list_revisions(store, ns, req.name) if int(r.data["revision"]) < current_number]
        if not older:
            raise errors.FailedPrecondition(f'service "{req.name}" has no earlier revision to roll back to')
        target_number = int(older[-1].data["revision"])
    target = history.get_revision(store, ns, req.name, target_number)
    if target is None:
        raise errors.invalid(("to_revision", f"revision {target_number} of service {req.name!r} is not retained"))
    spec = history.spec_of(target)
    live = objects.service_from_record(cur)
    # A rollback restores what runs, not how many: scaling stays with ScaleService.
    spec.scale = live.scale
    spec.namespace, spec.name = ns, req.name
    new = await _prepare(ctx, spec, ensure_ns=False)
    cause = req.change_cause or f"rollback to revision {target_number}"
    rec, _, changed = _write_spec(ctx, new, cause=cause, force=False, create=False, rollback_of=target_number)
    msg = f"Rolled back to revision {target_number}" if changed else f"already at the spec of revision {target_number}"
    return service_pb2.ServiceResponse(service=_with_status(store, rec), status=_status(0, msg))


VALIDATORS = {
    "CreateService": _v_create,
    "GetService": _v_name,
    "ListServices": _v_list,
    "WatchServices": _v_watch,
    "UpdateService": _v_create,
    "DeleteService": _v_delete,
    "GetDeletionStatus": _v_deletion_status,
    "ListDeletionOperations": lambda req: validation.namespace_scope(req.namespace, "namespace"),
    "ScaleService": _v_scale,
    "WatchScaling": _v_watch_scaling,
    "ListInstances": instance_api.VALIDATORS["ListInstances"],
    "ListServiceRevisions": _v_name,
    "RollbackService": _v_rollback,
}
