"""Helpers shared by commands: durations, namespaces, service status names, waiting."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from rune.cli.client import Session, pb2
from rune.cli.errors import EXIT_USAGE, CliError

pass_session = click.make_pass_decorator(Session)
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def seconds(text: str, what: str = "duration") -> float:
    """``90``, ``30s``, ``5m``, ``1h``, ``500ms`` -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise CliError(f"{what} {text!r}: expected a number with unit ms, s, m, h or d (e.g. 5m)", EXIT_USAGE)
    return float(m.group(1)) * _UNITS[m.group(2)]


def timestamp(text: str, what: str) -> str:
    """A duration ago (``5m``) or an RFC 3339 time, as RFC 3339 UTC."""
    try:
        return (datetime.now(UTC) - timedelta(seconds=seconds(text, what))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    except CliError:
        pass
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as e:
        raise CliError(f"{what} {text!r}: expected a duration (5m) or an RFC 3339 time", EXIT_USAGE) from e
    return text


def kv_pairs(items: tuple[str, ...] | list[str], what: str) -> dict[str, str]:
    """``k=v`` strings -> dict."""
    out: dict[str, str] = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise CliError(f"{what} {item!r}: expected key=value", EXIT_USAGE)
        out[k] = v
    return out


def svc_status(value: int) -> str:
    from rune.cli.output import enum_name

    return enum_name(pb2("service").ServiceStatus, value, "SERVICE_STATUS_")


def inst_status(value: int) -> str:
    from rune.cli.output import enum_name

    return enum_name(pb2("instance").InstanceStatus, value, "INSTANCE_STATUS_")


def list_instances(s: Session, namespace: str, service: str = "") -> list[Any]:
    """Every instance (all pages) in ``namespace`` (``*`` = all), optionally of one service."""
    ipb = pb2("instance")
    out: list[Any] = []
    token = ""
    while True:
        req = ipb.ListInstancesRequest(namespace=namespace, service_name=service, page_token=token)
        resp = s.call("InstanceService", "ListInstances", req)
        out += list(resp.instances)
        token = resp.next_page_token
        if not token:
            return out


def instance_health(s: Session, ns: str, name: str = "", *, checks: bool = False) -> dict[str, Any] | None:
    """The health of the instances in ``ns`` (one, by ``name``), by instance id; with ``checks`` their
    probes' latest results too. None when runed does not tell (no health access, an older server)."""
    import grpc

    req = pb2("health").GetHealthRequest(component_type="instance", namespace=ns, name=name, include_checks=checks)
    try:
        resp = s.call("HealthService", "GetHealth", req)
    except grpc.RpcError:
        return None
    return {c.id: c for c in resp.components}


def not_ready_reason(component: Any) -> str:
    """Why an instance's health (with checks) is not healthy: its failing probe's latest message."""
    hpb = pb2("health")
    failing = [r.message for r in component.check_results if r.status != hpb.HEALTH_STATUS_HEALTHY and r.message]
    why: str = failing[0] if failing else component.message
    return "not ready: " + why
