"""Static checks of a service spec: every field error at once, each with its path (``service.ports[1].port``).

Static means from the message alone; what needs the store (references, cycles) is in refs.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from rune.api import common_pb2, service_pb2
from runed.core import quantity, validation
from runed.core.errors import FieldViolation

RUNTIMES = ("", "container", "process")


def runtime_of(svc: service_pb2.Service) -> str:
    """The runtime a spec asks for: as given, else ``process`` for a spec with a ``process`` block
    and no image (what the cast format infers too), else the container runtime (upstream's default).

    Why: a REST or gRPC client that sends a process block without a runtime meant the process
    runtime; it was refused with "service.image: is required for the container runtime"."""
    if svc.runtime:
        return svc.runtime
    return "process" if svc.HasField("process") and not svc.image else ""


PROTOCOLS = ("", "tcp", "udp", "http", "grpc")


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
    runtime = runtime_of(svc)
    if runtime not in RUNTIMES:
        out.append(FieldViolation(f"{path}.runtime", "must be 'process' or 'container'"))
    elif runtime == "process":
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
        elif e.host_port and not svc.ports:
            # The host port is where the exposed declared port listens: without one there is nothing to bind.
            out.append(FieldViolation(f"{path}.expose.host_port", "needs a declared port to expose (service.ports)"))
        elif e.host_port and runtime_of(svc) == "process" and svc.scale > 1:
            out.append(FieldViolation(f"{path}.expose.host_port", host_port_scale_why(svc.scale)))
    return out


def host_port_scale_why(scale: int) -> str:
    """Why a process service with ``expose.host_port`` cannot run ``scale`` instances."""
    return (
        f"a process service binds its host port on this host, so only one instance can run; "
        f"scale must be at most 1 with expose.host_port set, got {scale}"
    )


def v_create(req: service_pb2.CreateServiceRequest) -> list[FieldViolation]:
    """Validator of CreateService and UpdateService (their requests carry the spec alike)."""
    if not req.HasField("service"):
        return [FieldViolation("service", "is required")]
    return validate_service(req.service)
