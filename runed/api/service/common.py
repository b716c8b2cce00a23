"""Lookups and response pieces every ServiceService module needs: one service, its status, its instances."""

from __future__ import annotations

from typing import Any

from rune.api import common_pb2, service_pb2
from runed.core import errors, validation
from runed.core.errors import FieldViolation
from runed.model import objects
from runed.pipeline.context import CallContext
from runed.store.base import Record, Store, iter_all


def status_pb(code: int = 0, message: str = "") -> common_pb2.Status:
    return common_pb2.Status(code=code, message=message)


def get_service(store: Store, ns: str, name: str) -> Record:
    """The stored ``service`` record, or NOT_FOUND."""
    rec = store.get(objects.SERVICE, ns, name)
    if rec is None:
        raise errors.not_found("service", name, ns)
    return rec


def with_status(store: Store, rec: Record) -> service_pb2.Service:
    """The wire form of a service, with the status the controller last wrote."""
    return objects.service_from_record(rec, store.get(objects.SERVICE_STATUS, rec.namespace, rec.name))


def check_scale(ctx: CallContext, scale: int, field: str) -> None:
    """Refuse a scale above ``limits.max_scale`` (a setting, so checked here: validators see only the request)."""
    cap = ctx.deps.config.limits.max_scale
    if scale > cap:
        raise errors.scale_limit(field, cap, scale)


def instances_of(store: Store, ns: str, service: str) -> list[Record]:
    return [r for r in iter_all(store, objects.INSTANCE, ns) if objects.instance_service(r) == service]


def v_name(req: Any) -> list[FieldViolation]:
    """Validator of requests that name one service (``name``, ``namespace``)."""
    out = validation.dns1123_label(req.name, "name")
    if req.namespace:
        out += validation.dns1123_label(req.namespace, "namespace")
    return out
